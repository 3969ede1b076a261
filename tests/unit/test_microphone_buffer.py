"""The microphone's receive buffer: each audio packet goes to the decoder as it arrives, in order
(aiortc's own waits for four more packets, 80 ms, before decoding one).
"""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from deployments.rtc.microphone import PacketAtOnce, hear_promptly

pytestmark = pytest.mark.unit


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=960 * seq % 2**32)
    p._data = bytes([seq % 256])  # what the receiver's depayloader leaves for the buffer
    return p


def test_each_packet_is_handed_on_at_once_and_late_ones_are_dropped() -> None:
    buffer = PacketAtOnce()
    sent = [65533, 65534, 65535, 65536, 65538, 65537, 65538, 65539]  # wraps to 0; 65537 late; 65538 twice
    handed = [buffer.add(packet(seq))[1] for seq in sent]
    stamps = [None if frame is None else frame.timestamp for frame in handed]
    late = {5, 6}
    assert stamps == [None if i in late else 960 * seq % 2**32 for i, seq in enumerate(sent)]
    assert handed[0].data == bytes([65533 % 256]), "the packet's own payload, not a later one's"
    assert buffer.dropped == 2


async def test_a_microphone_receiver_gets_the_packet_at_once_buffer() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio", direction="sendrecv").receiver
        # if aiortc moves its buffer this turns False and the test fails: the VAD would hear 80 ms late
        assert hear_promptly(receiver) is True
        assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, PacketAtOnce)
    finally:
        await pc.close()
