"""Admission that cannot be clogged: offers that never connect are reaped, malformed ones refused.

An offer whose peer never completes ICE (a replayed offer, one with no candidates, a client that
vanished before applying the answer) would hold its slot forever: aiortc never gives up on it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiortc import RTCPeerConnection

from clients.avatar_client import AvatarClient
from serve_app import AppArgs

pytestmark = pytest.mark.integration
PORT = 8127
CONNECT_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def app_url(start_app, avatar_data_dir):
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                  max_sessions=1, connect_timeout_s=CONNECT_TIMEOUT_S)
    return start_app(cfg, PORT)


async def _offer_and_vanish(http: httpx.AsyncClient) -> str:
    """Post a real offer, never apply the answer: the server's side can never connect."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        res = await http.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert res.status_code == 200, res.text
        return res.json()["sessionid"]
    finally:
        await pc.close()


async def test_an_offer_that_never_connects_frees_its_slot(app_url):
    async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
        sid = await _offer_and_vanish(http)
        assert (await http.post("/is_speaking", json={"sessionid": sid})).status_code == 200
        full = await http.post("/offer", json={"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"})
        assert full.status_code == 503, full.text  # max_sessions 1: the unconnected offer holds the slot
        for _ in range(round((CONNECT_TIMEOUT_S + 8) / 0.25)):
            if (await http.post("/is_speaking", json={"sessionid": sid})).status_code == 404:
                break
            await asyncio.sleep(0.25)
        assert (await http.post("/is_speaking", json={"sessionid": sid})).status_code == 404, "reaped"
    client = AvatarClient(app_url)
    try:
        await asyncio.sleep(1.2)  # the router's view of the replica's sessions (1 s stats period)
        await client.connect()  # the slot is free again, and a connected session is not reaped
        await asyncio.sleep(CONNECT_TIMEOUT_S + 1)
        assert (await client.post("/is_speaking")).status_code == 200
    finally:
        await client.close()


async def test_offers_with_other_m_lines_are_refused(app_url):
    pc = RTCPeerConnection()
    try:
        for _ in range(3):
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
            res = await http.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert res.status_code == 400 and "one video m-line" in res.json()["msg"], res.text
    finally:
        await pc.close()
