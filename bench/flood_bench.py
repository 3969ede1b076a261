"""One session floods speech, another speaks now and then: the quiet one's first speech and the TTS
replica's memory, with and without the flood; plus TTS's first audio, streamed vs piece by piece.

    scripts/loopback_only.sh .venv/bin/python -m bench.flood_bench [--port 8134] [--rounds 5]

Sessions are opened and driven through SessionHost's handle (the same calls the Api makes), with
aiortc viewers receiving the media, so the figures do not depend on the HTTP layer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray import serve

from bench.procstat import find_pids, rss_mib
from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.avatar.builder import build_avatar
from serve_app import AppArgs, bind_graph

SENTENCE = "Hello there, this is the quiet session speaking."
FLOOD_TEXT = "This is the flooding session, saying one more thing nobody asked for."
LONG_TEXT = ("The flooding session reads a very long text aloud, sentence after sentence. " * 27)[:2000]


class Viewer(AvatarClient):
    """An aiortc viewer whose offer goes straight to SessionHost."""

    def __init__(self, host, client: str) -> None:
        super().__init__("http://127.0.0.1")
        self.host, self.client = host, client

    async def send_offer(self, sdp: str) -> dict:
        return await self.host.offer.remote(sdp, "offer", self.client)

    def call(self, method: str, *args):
        return getattr(self.host.options(session_id=self.sessionid), method).remote(self.sessionid, *args)

    async def shut(self) -> None:
        await self.call("close_session")
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await self.http.aclose()


async def first_speech_s(viewer: Viewer) -> float:
    await asyncio.sleep(0.5)
    t = time.monotonic()
    await viewer.call("human", SENTENCE, True)
    while (first := analysis.first_speech_after(viewer.rec, t)) is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    await viewer.call("interrupt")
    return first - t


async def median_first_speech_s(viewer: Viewer, rounds: int) -> float:
    return statistics.median([await first_speech_s(viewer) for _ in range(rounds)])


async def flood(viewer: Viewer, text: str, calls: int, interrupt_first: bool = False) -> tuple[int, int]:
    """(accepted, refused) of `calls` human() calls."""
    ok = refused = 0
    for i in range(calls):
        try:
            await viewer.call("human", text, interrupt_first and i == 0)
            ok += 1
        except Exception as exc:  # TooManyRequests from the replica
            if "speech queue full" not in str(exc):
                raise
            refused += 1
    return ok, refused


async def tts_first_audio(rounds: int) -> tuple[float, float]:
    """Median seconds to TTS's first audio: one stream call vs begin() (piece by piece)."""
    tts = serve.get_deployment_handle("TTSService", app_name="avatar")
    streamed, per_piece = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        gen = tts.options(stream=True).stream.remote(SENTENCE)
        async for _pcm in gen:
            streamed.append(time.perf_counter() - t)
            break
        gen.cancel()
        t = time.perf_counter()
        await tts.begin.remote(SENTENCE, "bench")
        per_piece.append(time.perf_counter() - t)
        await asyncio.sleep(0.2)
    return statistics.median(streamed), statistics.median(per_piece)


def tts_rss() -> float:
    return max(rss_mib(pid) for pid in find_pids("TTSService"))


async def main(rounds: int) -> None:
    host = serve.get_deployment_handle("SessionHost", app_name="avatar")
    streamed, per_piece = await tts_first_audio(rounds)
    print(f"TTS first audio (median of {rounds}): stream {streamed * 1000:.0f} ms, "
          f"piece by piece {per_piece * 1000:.0f} ms")
    quiet, noisy = Viewer(host, "10.0.0.1"), Viewer(host, "10.0.0.2")
    await quiet.connect()
    await noisy.connect()
    try:
        await first_speech_s(quiet)
        base = await median_first_speech_s(quiet, rounds)
        rss0 = tts_rss()
        short = await flood(noisy, FLOOD_TEXT, 200)
        under_short = await median_first_speech_s(quiet, rounds)
        rss1 = tts_rss()
        long = await flood(noisy, LONG_TEXT, 20, interrupt_first=True)
        under_long = await median_first_speech_s(quiet, rounds)
        rss2 = tts_rss()
        print(f"quiet session first speech (median of {rounds}): alone {base:.3f} s, "
              f"under 200 short calls {under_short:.3f} s ({under_short / base:.2f}x; {short[0]} accepted, "
              f"{short[1]} refused), under 20 x 2000 chars {under_long:.3f} s ({under_long / base:.2f}x; "
              f"{long[0]} accepted, {long[1]} refused)")
        print(f"TTS replica RSS: {rss0:.0f} MiB before, {rss1:.0f} after the short flood, "
              f"{rss2:.0f} after the long one")
    finally:
        await quiet.shut()
        await noisy.shut()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8134)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_avatar("benchface", astronaut=True, out_dir=Path(tmp), idle_seconds=1.0, progress=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            serve.run(bind_graph(AppArgs(data_dir=tmp, avatar_id="benchface", ice_host_addresses=["127.0.0.1"])),
                      name="avatar", route_prefix="/")
            asyncio.run(main(args.rounds))
        finally:
            serve.shutdown()
            ray.shutdown()
