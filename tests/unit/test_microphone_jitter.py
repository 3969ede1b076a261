"""The microphone's receive buffer: aiortc's default holds 4 packets (80 ms) before decoding."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection

from deployments.rtc.session import MICROPHONE_PREFETCH_PACKETS, hear_promptly

pytestmark = pytest.mark.unit


async def test_the_microphone_receiver_decodes_after_one_packet_not_four() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="sendrecv").receiver
        buffer = "_RTCRtpReceiver__jitter_buffer"
        assert getattr(receiver, buffer)._prefetch == 4, "aiortc's default changed: revisit hear_promptly"
        # if aiortc moves its buffer this turns False and the test fails: the VAD would hear 60 ms late
        assert hear_promptly(receiver) is True
        assert getattr(receiver, buffer)._prefetch == MICROPHONE_PREFETCH_PACKETS == 1
    finally:
        await pc.close()
