"""A real viewer (aiortc) against `serve run configs/serve.yaml`: video, speech, lip sync, interrupt."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from clients import analysis
from clients.avatar_client import AvatarClient

pytestmark = pytest.mark.e2e

SENTENCE = ("Welcome to our store, I can help you find the right phone, compare prices, "
            "and answer any question you have today.")  # 20 words
LONG_TEXT = " ".join([SENTENCE] * 4)


async def test_idle_speech_and_interrupt(server, mouth_box):
    client = AvatarClient(server, mouth_box=mouth_box)
    try:
        await client.connect()
        await asyncio.sleep(3.0)
        t_idle = time.monotonic()
        fps, gap = analysis.video_rate(client.rec, t_idle - 2.5, t_idle)
        assert 22 <= fps <= 28, f"idle video at {fps:.1f} fps"
        assert gap < 0.25, f"idle video gap {gap * 1000:.0f} ms"
        assert analysis.last_speech_after(client.rec, 0) is None, "no speech before any text"

        t_send = time.monotonic()
        res = await client.post("/human", text=SENTENCE, type="echo", interrupt=False)
        assert res.status_code == 200 and res.json()["code"] == 0
        await asyncio.sleep(1.0)
        speaking = await client.post("/is_speaking")
        assert speaking.json()["data"] is True
        first = analysis.first_speech_after(client.rec, t_send)
        assert first is not None, "no speech audio arrived"
        assert first - t_send < 2.0, f"first speech after {first - t_send:.2f} s"
        await asyncio.sleep(7.0)
        t_done = time.monotonic()
        speech_end = analysis.last_speech_after(client.rec, t_send)
        assert analysis.speech_seconds(client.rec, t_send, t_done) > 3.0
        talking = analysis.mouth_activity(client.rec, first, speech_end)
        idle = analysis.mouth_activity(client.rec, t_idle - 2.5, t_idle)
        assert talking > 3 * max(idle, 0.2), f"mouth moves while speaking ({talking:.2f}) vs idle ({idle:.2f})"
        offset, corr = analysis.lip_sync_offset(client.rec, first - 0.5, speech_end + 0.5)
        assert corr > 0.3 and abs(offset) <= 0.15, f"lip sync offset {offset * 1000:.0f} ms (corr {corr:.2f})"
        fps, gap = analysis.video_rate(client.rec, first, speech_end)
        assert 22 <= fps <= 28 and gap < 0.25, f"speaking video at {fps:.1f} fps, gap {gap * 1000:.0f} ms"

        # Interrupt in the middle of a long text: the speech stops promptly and stays stopped.
        await client.post("/human", text=LONG_TEXT, type="echo")
        await asyncio.sleep(2.5)
        t_int = time.monotonic()
        res = await client.post("/interrupt_talk")
        assert res.status_code == 200
        await asyncio.sleep(2.0)
        last = analysis.last_speech_after(client.rec, t_int - 1.0)
        assert last is not None and last - t_int < 0.5, f"speech went on {last - t_int:.2f} s after interrupt"
        assert (await client.post("/is_speaking")).json()["data"] is False
    finally:
        await client.close()


async def test_bad_input_gets_4xx_and_server_keeps_serving(server):
    client = AvatarClient(server)
    try:
        await client.connect()
        sid = client.sessionid
        async with httpx.AsyncClient(base_url=server, timeout=15) as http:
            cases = [
                ("/offer", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
                ("/offer", {"json": {"sdp": "v=0\r\ngarbage", "type": "offer"}}, 400),
                ("/offer", {"json": {"sdp": "hello", "type": "offer"}}, 400),
                ("/offer", {"json": {"sdp": "v=0", "type": "answer"}}, 400),
                ("/human", {"json": {"sessionid": sid, "text": "hi", "type": "sing"}}, 400),
                ("/human", {"json": {"sessionid": sid, "type": "echo"}}, 400),
                ("/human", {"json": {"sessionid": sid, "text": "x" * 3_000_000, "type": "echo"}}, 413),
                ("/human", {"json": {"sessionid": "123abc", "text": "hi", "type": "echo"}}, 404),
                # a tag no SessionHost ever had: 404 like any unknown id (410 only for a dead host's sessions)
                ("/human", {"json": {"sessionid": "100000012345678", "text": "hi", "type": "echo"}}, 404),
                ("/human", {"json": {"text": "hi", "type": "echo"}}, 404),
                ("/human", {"json": {"sessionid": sid, "text": "hi", "type": "chat"}}, 501),
                ("/human", {"json": ["a", "list"]}, 400),
                ("/humanaudio", {"files": {"file": ("a.wav", b"not audio at all" * 100)}, "data": {"sessionid": sid}}, 415),
                ("/humanaudio", {"json": {"sessionid": sid}}, 400),
                ("/interrupt_talk", {"json": {"sessionid": None}}, 404),
            ]
            for path, kwargs, status in cases:
                res = await http.post(path, **kwargs)
                assert res.status_code == status, (path, status, res.status_code, res.text[:200])
                body = res.json()
                assert body["code"] == -1 and isinstance(body["msg"], str) and body["msg"], body
            # The session and the server are still fine.
            res = await http.post("/is_speaking", json={"sessionid": sid})
            assert res.status_code == 200 and res.json()["data"] is False
            assert (await http.get("/health")).status_code == 200
        n = len(client.rec.video_t)
        await asyncio.sleep(1.0)
        assert len(client.rec.video_t) > n + 15, "video kept flowing"
    finally:
        await client.close()


async def test_uploaded_audio_is_spoken(server, tmp_path):
    import numpy as np
    import soundfile as sf

    sr = 44_100
    t = np.arange(int(sr * 1.5)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path / "speech.flac"
    sf.write(path, np.stack([tone, tone], axis=1), sr)
    client = AvatarClient(server)
    try:
        await client.connect()
        t_send = time.monotonic()
        async with httpx.AsyncClient(base_url=server, timeout=15) as http:
            res = await http.post("/humanaudio", files={"file": ("speech.flac", path.read_bytes())},
                                  data={"sessionid": client.sessionid})
        assert res.status_code == 200, res.text
        await asyncio.sleep(3.0)
        assert analysis.speech_seconds(client.rec, t_send, time.monotonic()) > 1.0
    finally:
        await client.close()
