"""aiortc tracks paced by the shared MediaClock, reading the MediaTimeline.

Each `recv()` sleeps until its slot's wall time, then sends the slot's item, or a filler (the
last picture, or silence) if the conductor has nothing there. The audio track runs the slots'
cues (timeline.Cue) as it plays them: sentence events follow what is heard. A track that falls behind skips
slots rather than playing late, so the two tracks stay on the same clock.
"""

from __future__ import annotations

import asyncio
import fractions

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from deployments.common.timing import AUDIO_CHUNK_S, AUDIO_CHUNK_SAMPLES, CHUNKS_PER_FRAME, FPS, SAMPLE_RATE
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaTimeline

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
VIDEO_TICKS_PER_FRAME = VIDEO_CLOCK_RATE // FPS  # 3600, exact: no float time in the pts
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
SILENCE = np.zeros(AUDIO_CHUNK_SAMPLES, np.int16)
OPUS_TIME_BASE = fractions.Fraction(1, 48_000)  # Opus RTP timestamps count 48 kHz (RFC 7587)
OPUS_TICKS_PER_PACKET = 960
OPUS_BITRATE = 32_000  # mono 16 kHz speech (aiortc's encoder spends 96 kbit/s on resampled stereo)
# A track called late (a busy event loop, a starved CPU) still sends the slots it owes, each
# stamped with its own time, while it is at most this far behind: the receiver's jitter buffer
# evens the burst out and no frame or speech packet is lost. Further behind, it skips to the
# slot playing now: a long stall is not replayed. Audio gets longer: a lost packet is a click in
# the speech, and a sender 20 ms per packet behind catches up only by what each packet saves.
VIDEO_CATCH_UP_S = 0.12
AUDIO_CATCH_UP_S = 0.3
CATCH_UP_FRAMES = round(VIDEO_CATCH_UP_S / FRAME_S)  # 3
CATCH_UP_PACKETS = round(AUDIO_CATCH_UP_S / AUDIO_CHUNK_S)  # 15


def _next_due(last: int, now: int, catch_up: int) -> int:
    """The slot (or packet) to send after `last` (-1: none yet: join at `now`) when `now` is playing."""
    return last + 1 if last >= 0 and now - (last + 1) <= catch_up else max(now, last + 1)


async def _sleep_until(clock: MediaClock, t: float) -> None:
    wait = t - clock.now()
    if wait > 0:
        await asyncio.sleep(wait)


def _to_video_frame(bgr: np.ndarray) -> VideoFrame:
    """The encoders want I420; OpenCV converts ~3x faster than PyAV reformatting BGR."""
    h, w = bgr.shape[:2]
    if h % 2 or w % 2:  # I420 needs even sides
        return VideoFrame.from_ndarray(bgr, format="bgr24")
    return VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


class AvatarVideoTrack(MediaStreamTrack):
    """25 fps video: slot n at t0 + 40 ms·n."""

    kind = "video"

    def __init__(self, clock: MediaClock, timeline: MediaTimeline, first_frame: np.ndarray) -> None:
        super().__init__()
        self._clock, self._timeline = clock, timeline
        self._last = first_frame
        self._slot = -1
        self.sent = 0
        self.skipped = 0  # slots never sent: the track was more than VIDEO_CATCH_UP_S behind

    @property
    def position_s(self) -> float:
        """Media time of the last frame sent (0 before the first)."""
        return max(self._slot, 0) * FRAME_S

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._clock.start()
        slot = _next_due(self._slot, self._clock.playing_slot(), CATCH_UP_FRAMES)
        self.skipped += slot - self._slot - 1 if self._slot >= 0 else 0
        self._slot = slot
        await _sleep_until(self._clock, self._clock.slot_time(self._slot))
        item = self._timeline.get(self._slot)
        if item is not None:
            self._last = item.frame
        self._timeline.mark_video_played(self._slot)
        frame = _to_video_frame(self._last)
        frame.pts = self._slot * VIDEO_TICKS_PER_FRAME
        frame.time_base = VIDEO_TIME_BASE
        self.sent += 1
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """16 kHz mono audio in 20 ms packets: packet m belongs to slot m // 2.

    `recv` gives PyAV audio frames, or, once `encode_opus()` was called (the WebRTC sender
    negotiated Opus), the Opus packets themselves: aiortc sends a packet as it is, while it hands
    every frame to an encoder thread and back, a round trip per 20 ms that falls behind on a busy
    event loop. libopus takes the 16 kHz samples directly (no resampler, no frame of delay) in
    about 0.1 ms.
    """

    kind = "audio"

    def __init__(self, clock: MediaClock, timeline: MediaTimeline) -> None:
        super().__init__()
        self._clock, self._timeline = clock, timeline
        self._opus: av.CodecContext | None = None
        self._packet = -1
        self.sent = 0
        self.skipped = 0  # packets never sent: the track was more than AUDIO_CATCH_UP_S behind

    @property
    def position_s(self) -> float:
        """Media time of the last packet sent, to the frame it belongs to (0 before the first)."""
        return max(self._packet, 0) // CHUNKS_PER_FRAME * FRAME_S

    def encode_opus(self) -> None:
        """Give Opus packets from now on (call before the first `recv`)."""
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate, codec.format, codec.layout = OPUS_BITRATE, "s16", "mono"
        codec.sample_rate, codec.time_base = SAMPLE_RATE, AUDIO_TIME_BASE
        codec.options = {"application": "voip"}  # as aiortc's own encoder
        self._opus = codec

    async def recv(self) -> AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        t0 = self._clock.start()
        now_packet = int((self._clock.now() - t0) / AUDIO_CHUNK_S)
        packet = _next_due(self._packet, now_packet, CATCH_UP_PACKETS)
        self.skipped += packet - self._packet - 1 if self._packet >= 0 else 0
        self._packet = packet
        await _sleep_until(self._clock, t0 + self._packet * AUDIO_CHUNK_S)
        slot, half = divmod(self._packet, CHUNKS_PER_FRAME)
        self._timeline.audio_starting(slot)  # the slot's start cues (sentence start) run as it plays
        item = self._timeline.get(slot)
        pcm = SILENCE if item is None else item.audio[half * AUDIO_CHUNK_SAMPLES : (half + 1) * AUDIO_CHUNK_SAMPLES]
        if half == CHUNKS_PER_FRAME - 1:
            self._timeline.mark_audio_played(slot)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._packet * AUDIO_CHUNK_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        self.sent += 1
        if self._opus is None:
            return frame
        (packet,) = self._opus.encode(frame)  # libopus: one packet per 20 ms frame, at once
        packet.pts, packet.time_base = self._packet * OPUS_TICKS_PER_PACKET, OPUS_TIME_BASE
        return packet
