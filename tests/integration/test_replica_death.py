"""Replica death on a real Ray Serve app: kill -9 the processes of AvatarRenderer, TTSService and
SessionHost while sessions run, and check what viewers and clients see.

- renderer or TTS death mid-sentence: video keeps 25 fps with no gap over 200 ms and keeps its
  idle motion; speech goes on or the sentence is reported failed; a new sentence is heard within
  5 s of the kill (Serve's health probe every 1 s finds the death and starts a replacement).
- SessionHost death (2 replicas): its sessions answer 410 and new offers a live replica or 503,
  each within 1 s, the other replica's sessions stay up; with no host left, still within 1 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import zlib

import httpx
import numpy as np
import pytest

from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.rtc.session_ids import owner_tag
from serve_app import AppArgs
from tests.serve_replicas import live_replicas

pytestmark = pytest.mark.integration
PORT = 8135
LONG_TEXT = ("This is a long sentence that keeps the avatar talking for quite a while, so that a replica "
             "can die in the middle of it, and we can see what the viewer sees and hears after that. "
             "It goes on and on, with many words, and more words after those, until the end.")
ANSWER_S = 1.0  # the bar for any answer after a SessionHost death


class FrameClient(AvatarClient):
    """Records a signature of each whole frame (instead of mouth darkness): idle motion changes it."""

    def _mouth_darkness(self, img: np.ndarray) -> float:
        return float(zlib.crc32(np.ascontiguousarray(img[::8, ::8]).tobytes()))


def replica_pids(deployment: str) -> dict[str, int]:
    """{replica unique id: pid} of the live replicas of `deployment` in app "avatar"."""
    return {rid: int(actor["Pid"]) for rid, actor in live_replicas(deployment).items()}


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


async def wait_replaced(deployment: str, dead_pid: int, timeout: float = 30.0) -> float:
    """Seconds until `deployment` has a live replica again that is not `dead_pid`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pids = replica_pids(deployment)
        if pids and dead_pid not in pids.values():
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{deployment} not replaced within {timeout} s")


@pytest.fixture(scope="module")
def app_url(start_app, avatar_data_dir):
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"])
    return start_app(cfg, PORT, host_replicas=2)


async def _speaking(client: AvatarClient, timeout: float = 20.0) -> float:
    """Say LONG_TEXT and wait until its speech arrives; returns the send time."""
    t_send = time.monotonic()
    res = await client.post("/human", text=LONG_TEXT, type="echo", interrupt=True)
    assert res.status_code == 200, res.text
    while analysis.first_speech_after(client.rec, t_send) is None:
        assert time.monotonic() - t_send < timeout, "no speech before the kill"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # well into the sentence
    return t_send


async def _video_sent(client: AvatarClient) -> tuple[float, int, int]:
    """(now, video frames the server sent, frames it skipped) for the client's session."""
    data = await client.session_stats()
    return time.monotonic(), data["video_frames_sent"], data["video_frames_skipped"]


async def _assert_video_kept_going(client: AvatarClient, t_from: float, sent_from: tuple[float, int, int]) -> None:
    t_to, sent, skipped = await _video_sent(client)
    sent_fps = (sent - sent_from[1]) / (t_to - sent_from[0])
    fps, gap = analysis.video_rate(client.rec, t_from, t_to)
    moving = {sig for t, sig in zip(client.rec.video_t, client.rec.mouth, strict=True) if t_from <= t <= t_to}
    print(f"video {t_from:.1f}..{t_to:.1f}: sent {sent_fps:.1f} fps ({skipped - sent_from[2]} skipped); "
          f"received {fps:.1f} fps, largest gap {gap * 1000:.0f} ms, {len(moving)} distinct")
    # The server sends 25 fps and skips (almost) nothing. The client decodes on the same 2 cores
    # while Serve starts the replacement replica (a Python process importing torch): its
    # received rate dips more than what was sent.
    assert sent_fps >= 24 and skipped - sent_from[2] <= 3, f"sent {sent_fps:.1f} fps, {skipped} skipped"
    assert fps >= 20, f"video rate after the kill: {fps:.1f} fps"
    assert gap <= 0.2, f"video gap after the kill: {gap * 1000:.0f} ms"
    assert len(moving) >= 10, f"the picture stood still: {len(moving)} distinct frames"


async def _next_sentence_heard(client: AvatarClient, t_kill: float, text: str) -> float:
    """Interrupt, send a new sentence; seconds from the kill to its first speech."""
    res = await client.post("/interrupt_talk")
    assert res.status_code == 200, res.text
    await asyncio.sleep(0.3)  # the interrupted sentence's last packets drain
    t_send = time.monotonic()
    res = await client.post("/human", text=text, type="echo")
    assert res.status_code == 200, res.text
    while (first := analysis.first_speech_after(client.rec, t_send)) is None:
        if time.monotonic() - t_kill > 15:
            break
        await asyncio.sleep(0.05)
    assert first is not None, "the next sentence was never heard"
    return first - t_kill


@pytest.mark.parametrize("deployment", ["AvatarRenderer", "TTSService"])
async def test_render_or_tts_death_mid_sentence(app_url, deployment):
    client = FrameClient(app_url, mouth_box=(0, 1, 0, 1))
    try:
        await client.connect()
        await _speaking(client)
        (pid,) = replica_pids(deployment).values()
        sent_at_kill = await _video_sent(client)
        t_kill = kill(pid)
        await asyncio.sleep(3.0)
        await _assert_video_kept_going(client, t_kill, sent_at_kill)
        # The sentence in flight goes on (a chunk whose render failed plays over idle frames; TTS
        # audio already synthesised plays), or is reported failed in the session's stats.
        spoken = analysis.speech_seconds(client.rec, t_kill + 0.5, time.monotonic())
        errors = (await client.session_stats())["errors"]
        print(f"{deployment} killed: {spoken:.1f} s of speech in the 2.5 s after, errors {errors}")
        assert spoken >= 1.0 or errors, "the sentence stopped silently"
        heard_s = await _next_sentence_heard(client, t_kill, "Hello again, I am still here.")
        replaced_s = await wait_replaced(deployment, pid) + (time.monotonic() - t_kill)
        print(f"{deployment} killed: next sentence heard {heard_s:.2f} s after the kill, "
              f"replacement up by {replaced_s:.1f} s")
        await _assert_video_kept_going(client, t_kill, sent_at_kill)
        assert heard_s <= 5.0, f"next sentence heard {heard_s:.2f} s after the {deployment} died"
    finally:
        await client.close()


async def _timed(call) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    res = await call
    return res, time.monotonic() - t0


async def test_session_host_death_answers_410_or_503_within_a_second(app_url):
    clients = [AvatarClient(app_url) for _ in range(2)]
    try:
        for client in clients:
            await client.connect()
            await asyncio.sleep(1.2)  # routing stats (1 s) see it: the next goes to the other replica
        hosts = replica_pids("SessionHost")
        owner = {c.sessionid: next(p for uid, p in hosts.items() if owner_tag(uid) == c.sessionid[1:7])
                 for c in clients}
        a, b = clients
        assert owner[a.sessionid] != owner[b.sessionid], "one session on each replica"
        offer = {"sdp": a.pc.localDescription.sdp, "type": "offer"}
        async with httpx.AsyncClient(base_url=app_url, timeout=30) as http:
            t_kill = kill(owner[a.sessionid])
            for round_ in range(8):  # right after the kill, then while the replacement starts
                res, took = await _timed(http.get(f"/sessions/{a.sessionid}"))
                print(f"t+{time.monotonic() - t_kill:.2f}: dead session {res.status_code} in {took:.3f} s")
                assert res.status_code == 410 and took <= ANSWER_S, (res.text, took)
                assert res.json()["msg"] == f"session {a.sessionid} is gone: its host replica died"
                res, took = await _timed(http.get(f"/sessions/{b.sessionid}"))
                assert res.status_code == 200 and took <= ANSWER_S, (res.text, took)
                if round_ % 3 == 0:
                    res, took = await _timed(http.post("/offer", json=offer))
                    print(f"  offer {res.status_code} in {took:.3f} s")
                    assert res.status_code in (200, 503) and took <= ANSWER_S + 1.0, (res.text, took)
                    if res.status_code == 200:
                        await http.post("/close", json={"sessionid": res.json()["sessionid"]})
                await asyncio.sleep(0.25)

            # No host left at all (b's and a's replacement): every answer still within a second,
            # none waits for Serve to start another.
            survivors = replica_pids("SessionHost").values()
            assert owner[b.sessionid] in survivors
            for pid in survivors:
                kill(pid)
            await asyncio.sleep(0.2)
            res, took = await _timed(http.get(f"/sessions/{b.sessionid}"))
            print(f"no host: session {res.status_code} in {took:.3f} s")
            assert res.status_code == 410 and took <= ANSWER_S, (res.text, took)
            res, took = await _timed(http.post("/offer", json=offer))
            print(f"no host: offer {res.status_code} in {took:.3f} s")
            # 503 at once, or a replacement that was already starting took it (its answer includes
            # the offer's own negotiation).
            if res.status_code == 503:
                assert took <= ANSWER_S and res.json()["msg"] == "no session host available: retry", took
            else:
                assert res.status_code == 200 and took <= ANSWER_S + 1.0, (res.text, took)
                await http.post("/close", json={"sessionid": res.json()["sessionid"]})

            res, took = await _timed(http.get("/health"))  # readiness: 503 unless a host answers
            print(f"no host: health {res.status_code} in {took:.3f} s")
            assert res.status_code in (200, 503) and took <= ANSWER_S + 0.5, (res.text, took)

            # Once replaced, the dead sessions stay 410 and a tag no replica ever had is 404.
            await wait_replaced("SessionHost", owner[b.sessionid])
            assert (await http.get("/health")).status_code == 200
            for sid in (a.sessionid, b.sessionid):
                assert (await http.get(f"/sessions/{sid}")).status_code == 410
            live = set(replica_pids("SessionHost"))
            never = next(f"1{t:06d}12345678" for t in range(10**6)
                         if f"{t:06d}" not in {owner_tag(u) for u in live} | {s[1:7] for s in owner})
            res = await http.get(f"/sessions/{never}")
            assert res.status_code == 404 and res.json()["msg"] == f"unknown session {never}", res.text
    finally:
        for client in clients:
            client.sessionid = None  # their hosts are dead: nothing to hang up
        await asyncio.gather(*(c.close() for c in clients))
