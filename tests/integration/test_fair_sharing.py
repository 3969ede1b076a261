"""One session flooding speech cannot starve another, nor grow the TTS replica; one client cannot
hold every slot with offers it never connects. A real Serve app with real Piper.

The flooding session's excess calls get 429 (per-session queue caps); what it did queue is
synthesised piece by piece, only as fast as it plays, so the quiet session's first speech stays
within 2x its own baseline, measured in the same run (no absolute timings are asserted).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from aiortc import RTCPeerConnection
from ray import serve

from bench.procstat import find_pids, rss_mib
from clients import analysis
from clients.avatar_client import AvatarClient
from serve_app import AppArgs

pytestmark = pytest.mark.integration
PORT = 8133
SENTENCE = "Hello there, this is the quiet session speaking."
FLOOD_TEXT = "This is the flooding session, saying one more thing nobody asked for."
LONG_TEXT = ("The flooding session reads a very long text aloud, sentence after sentence. " * 27)[:2000]
ROUNDS = 3


@pytest.fixture(scope="module")
def app_url(start_app, avatar_data_dir):
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                  max_sessions=4, max_queued_utterances=8, max_queued_chars=4000, max_pending_offers_per_client=2)
    return start_app(cfg, PORT)


async def _first_speech_s(client: AvatarClient) -> float:
    """Seconds from posting a sentence to its first speech audio at the client; then hush."""
    await asyncio.sleep(0.5)
    t = time.monotonic()
    res = await client.post("/human", text=SENTENCE, type="echo", interrupt=True)
    assert res.status_code == 200, res.text
    for _ in range(300):
        first = analysis.first_speech_after(client.rec, t)
        if first is not None:
            break
        await asyncio.sleep(0.02)
    assert first is not None, "the quiet session spoke"
    await asyncio.sleep(0.3)
    await client.post("/interrupt_talk")
    return first - t


async def _median_first_speech_s(client: AvatarClient) -> float:
    return statistics.median([await _first_speech_s(client) for _ in range(ROUNDS)])


async def _flood(client: AvatarClient, text: str, calls: int) -> list:
    """`calls` /human posts from one session, 20 at a time; their responses."""
    responses = []
    for i in range(0, calls, 20):
        batch = [client.post("/human", text=text, type="echo") for _ in range(min(20, calls - i))]
        responses += await asyncio.gather(*batch)
    return responses


def _tts_rss_mib() -> float:
    return max(rss_mib(pid) for pid in find_pids("TTSService"))


async def test_a_flooding_session_gets_429s_and_does_not_starve_another(app_url):
    quiet, flood = AvatarClient(app_url), AvatarClient(app_url)
    try:
        await quiet.connect()
        await flood.connect()
        await _first_speech_s(quiet)  # warm: handles and the first synthesis
        baseline = await _median_first_speech_s(quiet)
        rss_before = _tts_rss_mib()

        # 200 short sentences at once: the queue takes 8, the rest are refused.
        responses = await _flood(flood, FLOOD_TEXT, 200)
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}, codes
        assert 8 <= codes.count(200) <= 12 and codes.count(429) >= 188, codes.count(200)
        assert "speech queue full" in next(r for r in responses if r.status_code == 429).json()["msg"]
        under_short_flood = await _median_first_speech_s(quiet)
        assert (await flood.post("/is_speaking")).json()["data"], "the flood is still being spoken"

        # 20 texts of 2000 characters after an interrupt: two fit the 4000-character queue.
        assert (await flood.post("/human", text=LONG_TEXT, type="echo", interrupt=True)).status_code == 200
        responses = await _flood(flood, LONG_TEXT, 19)
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 1 and codes.count(429) == 18, codes
        assert "characters" in next(r for r in responses if r.status_code == 429).json()["msg"]
        under_long_flood = await _median_first_speech_s(quiet)
        rss_after = _tts_rss_mib()

        print(f"\nquiet session first speech: baseline {baseline:.3f} s, under 200 short calls "
              f"{under_short_flood:.3f} s, under 2000-char texts {under_long_flood:.3f} s; "
              f"TTS replica RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
        assert under_short_flood <= 2 * baseline, (baseline, under_short_flood)
        assert under_long_flood <= 2 * baseline, (baseline, under_long_flood)
        assert rss_after - rss_before < 200, "TTS memory does not grow with queued text"
    finally:
        await quiet.close()
        await flood.close()


async def _offer_sdp() -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def test_a_client_cannot_hold_more_than_its_pending_offers(app_url):
    host = serve.get_deployment_handle("SessionHost", app_name="avatar")
    sdp = await _offer_sdp()
    opened = [await host.offer.remote(sdp, "offer", "198.51.100.7") for _ in range(2)]
    try:
        with pytest.raises(Exception, match="too many pending offers from 198.51.100.7") as err:
            await host.offer.remote(sdp, "offer", "198.51.100.7")
        assert getattr(err.value, "status", 429) == 429
        # Another client still gets its session.
        opened.append(await host.offer.remote(sdp, "offer", "198.51.100.8"))
    finally:
        for answer in opened:
            await host.options(session_id=answer["sessionid"]).close_session.remote(answer["sessionid"])
