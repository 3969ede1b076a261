"""The user's microphone as aiortc receives it, without aiortc's playback buffering.

aiortc's audio receiver keeps a jitter buffer that hands a packet to the decoder only once four
later ones have arrived (80 ms), as a player smoothing out network jitter would. The microphone
feeds a voice-activity detector, not a speaker: every 20 ms Opus packet is a whole frame, so it is
decoded as soon as it arrives, in order. A packet older than one already handed on (reordered,
duplicated) is dropped; the VAD does not miss 20 ms. This moves the user's onset (barge-in) and
end of speech (end of turn) ~80 ms earlier.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.utils import uint16_gt

__all__ = ["PacketAtOnce", "hear_promptly"]

_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.x keeps it in this private attribute


class PacketAtOnce(JitterBuffer):
    """A receive buffer that hands each audio packet on as it comes, in sequence order."""

    def __init__(self) -> None:
        super().__init__(capacity=16)
        self._last: int | None = None  # sequence number of the last packet handed on
        self.dropped = 0

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        if self._last is not None and not uint16_gt(packet.sequence_number, self._last):
            self.dropped += 1
            return False, None
        self._last = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def hear_promptly(receiver: Any) -> bool:
    """Give an audio receiver a `PacketAtOnce` buffer (call before its first packet); False if
    this aiortc keeps its buffer elsewhere (then its default 80 ms stays).
    """
    if not isinstance(getattr(receiver, _RECEIVER_BUFFER, None), JitterBuffer):
        return False
    setattr(receiver, _RECEIVER_BUFFER, PacketAtOnce())
    return True
