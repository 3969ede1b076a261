"""Voice-to-voice and barge-in latency of the conversation loop, on a real Serve app.

    scripts/loopback_only.sh .venv/bin/python -m bench.conversation_bench [--runs 5 | --sessions 4]

An aiortc client speaks Piper-made WAVs (tests/data) over its microphone track; a local
OpenAI-protocol server (tests/openai_server.py) answers with its first token after 100 ms.
Server marks (wall clock, the session's `conversation.last_turn` stats and `/sse` events) and
the client's (time.monotonic(), same host) are put on one clock. Voice-to-voice, each mark
from the end of the user's speech at the client (the reply is prepared during the pause, so the
marks overlap rather than add up):

    transcribe  the final transcript is asked for (`early_final_s` into the pause at the server)
    asr         the final transcript is known
    llm         the LLM's first sentence is complete (first token + tokens to the first clause)
    turn_end    the pause reached `end_silence_ms`: the turn ends (the prepared reply is released)
    plays       the answer's first slot plays at the server (TTS, render, queue)
    heard       the first answer audio at the client (transport, jitter buffer): voice to voice

Barge-in: onset of the user's speech at the client -> the avatar's audio silent at the client,
and -> the LLM stream cut at the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import ray
from ray import serve

from clients import analysis
from clients.avatar_client import AvatarClient, Microphone
from deployments.avatar.builder import build_avatar
from serve_app import AppArgs, bind_graph
from tests.openai_server import OpenAIServer, Script

PORT, LLM_PORT = 8141, 8143
RAY_WORKER_NICENESS = 15  # raylet's default `worker_niceness`
TOKENS_PER_S = 30.0  # the LLM's pace after its first token (--tokens-per-s)
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
ANSWER = "Sure, the lights are on. Anything else I can do for you today?"
LONG = ("Tomorrow will be sunny and warm in the morning, with a light breeze from the west. In the afternoon "
        "clouds build up over the hills, and rain may come late in the evening.")


def _ms(x: float) -> str:
    return f"{x * 1000:6.0f} ms"


async def _voice_to_voice(client: AvatarClient, events, offset: float) -> dict[str, float]:
    """One turn; stage durations in seconds."""
    n = len(events.events)
    spoken = client.microphone.say_wav(DATA / "speech_lights.wav")
    t_start, start = await events.wait_for(
        lambda e: e.get("status") == "start" and e["seq"] > (events.events[n - 1][1]["seq"] if n else 0), timeout=30)
    await asyncio.sleep(0.4)
    heard = analysis.first_speech_after(client.rec, spoken.speech_end)
    marks = (await client.http.get(f"/sessions/{client.sessionid}")).json()["data"]["conversation"]["last_turn"]
    speech_end = spoken.speech_end + offset  # on the wall clock
    played = start["t"] - 0.08  # the start event goes out playout_delay_s after its slot is sent
    await events.wait_for(lambda e: e.get("status") == "end" and e["seq"] > start["seq"]
                          and e["text"].startswith("Anything"), timeout=30)
    print(f"turn: reply {'prepared in the pause' if marks.get('prepared') else 'started at the end of turn'}")
    return {"transcribe": marks["transcribe_t"] - speech_end, "asr": marks["asr_final_t"] - speech_end,
            "llm": marks["first_sentence_t"] - speech_end, "turn_end": marks["turn_end_t"] - speech_end,
            "plays": played - speech_end, "heard": heard - spoken.speech_end}


async def _barge_in(client: AvatarClient, events, server: OpenAIServer, offset: float) -> dict[str, float]:
    server.script = Script(reply=LONG, ttft_s=0.1, tokens_per_s=5)
    n = len(server.requests)
    spoken = client.microphone.say_wav(DATA / "speech_lights.wav")
    first = spoken
    while len(server.requests) == n:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    while analysis.first_speech_after(client.rec, first.speech_end or time.monotonic()) is None:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    exchange = server.requests[-1]  # the answer playing (a reply prepared in a pause may have come first)
    barge = client.microphone.say_wav(DATA / "speech_weather.wav", leading_silence_s=0.0)
    await exchange.ended_within(5.0)
    marks = (await client.http.get(f"/sessions/{client.sessionid}")).json()["data"]["conversation"]["last_turn"]
    await asyncio.sleep(1.0)
    last = analysis.last_speech_after(client.rec, time.monotonic() - 2.0)
    server.script = Script(reply=ANSWER, ttft_s=0.1, tokens_per_s=TOKENS_PER_S)
    await events.wait_for(lambda e: e.get("status") == "end" and e["text"].startswith("Anything")
                          and e["t"] > time.time() - 0.5 - 30, timeout=30)
    return {"detected": marks.get("barge_in_t", float("nan")) - offset - barge.speech_start,
            "silent": (last or barge.speech_start) - barge.speech_start,
            "llm_cut": (exchange.ended or float("nan")) - barge.speech_start, "cut": float(exchange.cut)}


async def main(runs: int) -> None:
    offset = time.time() - time.monotonic()
    with OpenAIServer(port=LLM_PORT) as server:
        server.script = Script(reply=ANSWER, ttft_s=0.1, tokens_per_s=TOKENS_PER_S)
        client = AvatarClient(f"http://127.0.0.1:{PORT}", microphone=Microphone())
        await client.connect()
        events = client.events()
        await events.open()
        try:
            await asyncio.sleep(2.0)  # warm-ups (Whisper's first decode) are done
            v2v = [await _voice_to_voice(client, events, offset) for _ in range(runs)]
            barge = [await _barge_in(client, events, server, offset) for _ in range(max(1, runs // 2))]
        finally:
            await events.close()
            await client.close()
    print(f"voice-to-voice over {runs} turns, from the end of speech at the client (median, min-max), "
          f"LLM first token 100 ms, {TOKENS_PER_S} tokens/s:")
    for stage in ("transcribe", "asr", "llm", "turn_end", "plays", "heard"):
        xs = [r[stage] for r in v2v]
        print(f"  {stage:10s} {_ms(statistics.median(xs))}   ({_ms(min(xs))} - {_ms(max(xs))})")
    for key, label in (("detected", "onset -> barge-in at the server (speech held 200 ms)"),
                       ("silent", "onset -> avatar audio silent at the client"),
                       ("llm_cut", "onset -> LLM stream closed at the server")):
        xs = [r[key] for r in barge]
        print(f"barge-in {label}: {', '.join(_ms(x).strip() for x in xs)}")
    print(f"LLM stream cut on every barge-in: {all(r['cut'] for r in barge)}")


async def sessions_conversing(n: int, seconds: float = 20.0) -> None:
    """`n` sessions talk to the avatar at once (each asks every ~7 s, staggered): video rate and
    largest gap per session, and the turns answered.
    """
    # The load clients share these 2 cores with the server: they count video frames without decoding
    # them, and run at the niceness Ray gives its workers (15), not above the server they measure.
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))
    with OpenAIServer(port=LLM_PORT) as server:
        server.script = Script(reply=ANSWER, ttft_s=0.1, tokens_per_s=TOKENS_PER_S)
        clients = [AvatarClient(f"http://127.0.0.1:{PORT}", microphone=Microphone(), decode_video=False)
                   for _ in range(n)]
        try:
            for client in clients:
                await client.connect()
            await asyncio.sleep(2.0)

            async def frames_sent() -> list[tuple[int, int, int]]:
                """Per session: video frames sent, video frames and audio packets skipped."""
                stats = [(await c.http.get(f"/sessions/{c.sessionid}")).json()["data"] for c in clients]
                return [(d["video_frames_sent"], d["video_frames_skipped"], d["audio_packets_skipped"]) for d in stats]

            sent0, t0 = await frames_sent(), time.monotonic()
            while time.monotonic() - t0 < seconds:
                for client in clients:
                    client.microphone.say_wav(DATA / "speech_lights.wav", leading_silence_s=0.0)
                    await asyncio.sleep(7.0 / n)  # a question (~2.5 s) and its answer (~3 s) per session
            sent1, t1 = await frames_sent(), time.monotonic()
            await asyncio.sleep(3.0)
            print(f"{n} sessions conversing for {t1 - t0:.0f} s; LLM requests answered: {len(server.requests)}")
            for i, client in enumerate(clients):
                fps, gap = analysis.video_rate(client.rec, t0, t1)
                spoken = analysis.speech_seconds(client.rec, t0, t1 + 3.0)
                (v0, sv0, sa0), (v1, sv1, sa1) = sent0[i], sent1[i]
                print(f"  session {i}: sent {(v1 - v0) / (t1 - t0):.1f} fps ({sv1 - sv0} frames and {sa1 - sa0} audio "
                      f"packets skipped); at the client {fps:.1f} fps, "
                      f"largest gap {gap * 1000:.0f} ms; {spoken:.1f} s of answers heard")
        finally:
            await asyncio.gather(*(c.close() for c in clients))


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=0, help="instead: N sessions conversing at once")
    parser.add_argument("--tokens-per-s", type=float, default=30.0, help="the LLM's pace after its first token")
    args = parser.parse_args()
    global TOKENS_PER_S
    TOKENS_PER_S = args.tokens_per_s
    data = Path("/tmp/conversation_bench_avatars")
    if not (data / "testface").is_dir():
        build_avatar("testface", astronaut=True, out_dir=data, idle_seconds=1.0, progress=False)
    cfg = AppArgs(data_dir=str(data), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                  llm={"base_url": f"http://127.0.0.1:{LLM_PORT}/v1", "model": "test-model"})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(bind_graph(cfg), name="avatar", route_prefix="/")
        asyncio.run(sessions_conversing(args.sessions) if args.sessions else main(args.runs))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    run()
