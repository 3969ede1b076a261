"""The aiortc tracks paced on a virtual clock: timestamps, slot timing, fillers, skipping, pruning.

`MediaClock(now=...)` reads virtual time, and the tracks module sees an `asyncio` whose `sleep`
advances that time at once (only inside deployments.rtc.tracks; the event loop's own sleep is
untouched), so a recv() returns at the exact virtual instant its slot plays.
"""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from deployments.common.timing import SAMPLES_PER_FRAME
from deployments.rtc import tracks
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaItem, MediaTimeline
from deployments.rtc.tracks import CATCH_UP_FRAMES, CATCH_UP_PACKETS, AvatarAudioTrack, AvatarVideoTrack

pytestmark = pytest.mark.unit

T0 = 1000.0
H = W = 16


class VirtualTime:
    """Time that moves only when a track sleeps (or a test jumps it)."""

    def __init__(self) -> None:
        self.t = T0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


class _AsyncioWithVirtualSleep:
    def __init__(self, sleep) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str):
        return getattr(asyncio, name)


@pytest.fixture
def vt(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    vt = VirtualTime()
    monkeypatch.setattr(tracks, "asyncio", _AsyncioWithVirtualSleep(vt.sleep))
    return vt


@pytest.fixture
def clock(vt: VirtualTime) -> MediaClock:
    return MediaClock(now=vt)


@pytest.fixture
def timeline() -> MediaTimeline:
    return MediaTimeline()


def solid(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def item(slot: int, value: int | None = None) -> MediaItem:
    """Slot `slot`'s item: a solid picture and 640 distinct int16 samples."""
    audio = (np.arange(SAMPLES_PER_FRAME) + 1000 * slot).astype(np.int16)
    return MediaItem(solid(40 + 10 * slot if value is None else value), audio, slot, 0, True)


def picture(frame) -> float:
    """The mean BGR value of a received video frame (solid test pictures survive YUV at +-2)."""
    return float(frame.to_ndarray(format="bgr24").mean())


def samples(frame) -> np.ndarray:
    return frame.to_ndarray().reshape(-1)


async def test_video_is_stamped_3600_ticks_per_frame_and_plays_slot_n_at_t0_plus_40ms_n(vt, clock, timeline):
    video = AvatarVideoTrack(clock, timeline, solid(0))
    for n in range(6):
        frame = await video.recv()
        assert frame.pts == 3600 * n and frame.time_base == fractions.Fraction(1, 90_000)
        assert vt.t == pytest.approx(T0 + n * FRAME_S)
    assert clock.t0 == T0, "the first recv starts the clock"
    assert video.sent == 6


async def test_audio_is_stamped_320_samples_per_20ms_packet(vt, clock, timeline):
    audio = AvatarAudioTrack(clock, timeline)
    for m in range(8):
        frame = await audio.recv()
        assert frame.pts == 320 * m and frame.time_base == fractions.Fraction(1, 16_000)
        assert frame.sample_rate == 16_000 and frame.samples == 320 and frame.format.name == "s16"
        assert vt.t == pytest.approx(T0 + m * 0.020)
    assert audio.sent == 8


async def test_slot_n_carries_its_picture_and_its_640_samples_as_packets_2n_and_2n_plus_1(vt, clock, timeline):
    for n in range(4):
        timeline.put(n, item(n))
    video, audio = AvatarVideoTrack(clock, timeline, solid(0)), AvatarAudioTrack(clock, timeline)
    for n in range(4):
        frame = await video.recv()
        assert picture(frame) == pytest.approx(40 + 10 * n, abs=2)
        first, second = await audio.recv(), await audio.recv()
        assert (first.pts, second.pts) == (640 * n, 640 * n + 320)
        want = item(n).audio
        assert np.array_equal(samples(first), want[:320]) and np.array_equal(samples(second), want[320:])
        assert vt.t == pytest.approx(T0 + n * FRAME_S + 0.020), "both tracks on one clock"


async def play_slot(video: AvatarVideoTrack, audio: AvatarAudioTrack):
    """One slot as aiortc would pull it on a shared clock: a video frame and two audio packets."""
    return await video.recv(), await audio.recv(), await audio.recv()


async def test_an_empty_slot_repeats_the_last_picture_and_plays_silence(vt, clock, timeline):
    timeline.put(1, item(1, value=200))
    video, audio = AvatarVideoTrack(clock, timeline, solid(30)), AvatarAudioTrack(clock, timeline)
    played = [await play_slot(video, audio) for _ in range(4)]
    shown = [picture(v) for v, _, _ in played]
    assert shown == pytest.approx([30, 200, 200, 200], abs=2), "first frame, slot 1, then slot 1 again"
    heard = [np.concatenate([samples(a1), samples(a2)]) for _, a1, a2 in played]
    assert not heard[0].any(), "silence before slot 1"
    assert np.array_equal(heard[1], item(1).audio)
    assert not heard[2].any() and not heard[3].any(), "silence after it"
    assert [v.pts for v, _, _ in played] == [0, 3600, 7200, 10800]


async def test_a_track_far_behind_skips_slots_instead_of_playing_late(vt, clock, timeline):
    for n in range(14):
        timeline.put(n, item(n))
    video, audio = AvatarVideoTrack(clock, timeline, solid(0)), AvatarAudioTrack(clock, timeline)
    await play_slot(video, audio)
    # The consumer stalled past both catch-up bounds: slot 10 (packet 20) is playing now.
    assert 10 - 1 > CATCH_UP_FRAMES and 20 - 2 > CATCH_UP_PACKETS
    vt.t = T0 + 10 * FRAME_S + 0.005
    sleeps = len(vt.sleeps)
    frame = await video.recv()
    assert frame.pts == 3600 * 10 and picture(frame) == pytest.approx(40 + 100, abs=2)
    frame = await audio.recv()
    assert frame.pts == 320 * 20 and np.array_equal(samples(frame), item(10).audio[:320])
    assert len(vt.sleeps) == sleeps, "no sleep: both were already due"
    # Then back on schedule: the next ones wait for their own time.
    frame = await audio.recv()
    assert frame.pts == 320 * 21 and vt.t == pytest.approx(T0 + 10 * FRAME_S + 0.020)
    assert np.array_equal(samples(frame), item(10).audio[320:])
    frame = await video.recv()
    assert frame.pts == 3600 * 11 and vt.t == pytest.approx(T0 + 11 * FRAME_S)
    assert video.sent == 3 and audio.sent == 4
    assert video.skipped == 9 and audio.skipped == 18, "slots 1-9 (packets 2-19) never sent"


async def test_a_track_a_little_behind_sends_what_it_owes_at_once_then_keeps_time(vt, clock, timeline):
    for n in range(12):
        timeline.put(n, item(n))
    video, audio = AvatarVideoTrack(clock, timeline, solid(0)), AvatarAudioTrack(clock, timeline)
    await play_slot(video, audio)  # slot 0, packets 0 and 1
    vt.t = T0 + 3 * FRAME_S + 0.005  # a 100 ms stall: slot 3 (packet 6) is playing, within both bounds
    sleeps = len(vt.sleeps)
    assert [(await video.recv()).pts // 3600 for _ in range(3)] == [1, 2, 3], "no frame lost"
    assert [(await audio.recv()).pts // 320 for _ in range(5)] == [2, 3, 4, 5, 6], "no speech packet lost"
    assert len(vt.sleeps) == sleeps, "sent at once: all were due"
    assert video.skipped == audio.skipped == 0
    frame = await video.recv()
    assert frame.pts == 3600 * 4 and vt.t == pytest.approx(T0 + 4 * FRAME_S), "then on time again"
    assert picture(frame) == pytest.approx(40 + 40, abs=2)


async def test_slots_are_pruned_once_both_tracks_have_played_them(vt, clock, timeline):
    for n in range(8):
        timeline.put(n, item(n))
    video, audio = AvatarVideoTrack(clock, timeline, solid(0)), AvatarAudioTrack(clock, timeline)

    def kept() -> list[int]:
        return [s for s in range(8) if timeline.get(s) is not None]

    await play_slot(video, audio)
    assert kept() == list(range(8)), "slot 0 was played by both, and is kept (the latest played)"
    await video.recv()  # slot 1 on video; audio has not finished it
    await audio.recv()
    assert kept() == list(range(8))
    await audio.recv()  # second half of slot 1: both tracks are past slot 0
    assert kept() == list(range(1, 8))
    for _ in range(3):
        await play_slot(video, audio)
    assert kept() == list(range(4, 8))


async def test_the_second_track_joins_the_clock_the_first_one_started(vt, clock, timeline):
    audio, video = AvatarAudioTrack(clock, timeline), AvatarVideoTrack(clock, timeline, solid(0))
    assert (await audio.recv()).pts == 0
    vt.t += 0.1  # the video track asks 100 ms later: slot 2 is playing
    assert (await video.recv()).pts == 3600 * 2
    assert clock.t0 == T0


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_recv_after_stop_raises_media_stream_error(vt, clock, timeline, kind):
    track = AvatarVideoTrack(clock, timeline, solid(0)) if kind == "video" else AvatarAudioTrack(clock, timeline)
    await track.recv()
    track.stop()
    assert track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.sent == 1


async def test_odd_sized_pictures_are_sent_as_bgr(vt, clock, timeline):
    video = AvatarVideoTrack(clock, timeline, np.full((15, 17, 3), 90, np.uint8))
    frame = await video.recv()
    assert (frame.height, frame.width) == (15, 17) and frame.format.name == "bgr24"


async def test_video_timestamps_are_exact_far_into_a_session(vt, clock, timeline):
    video = AvatarVideoTrack(clock, timeline, solid(0))
    await video.recv()
    for slot in (205, 410, 820):
        vt.t = T0 + (slot + 0.5) * FRAME_S
        assert (await video.recv()).pts == 3600 * slot


async def test_with_opus_the_audio_track_gives_each_packet_encoded_and_stamped_in_48_khz(vt, clock, timeline):
    from aiortc import RTCPeerConnection
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame

    from deployments.rtc.session import audio_codec

    t = np.arange(12 * SAMPLES_PER_FRAME) / 16000
    voice = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)  # 300 Hz, 12 slots
    for n in range(12):
        timeline.put(n, MediaItem(solid(0), voice[n * SAMPLES_PER_FRAME : (n + 1) * SAMPLES_PER_FRAME], n, 0, True))
    audio = AvatarAudioTrack(clock, timeline)
    audio.encode_opus()
    decoder, heard = OpusDecoder(), []
    for m in range(24):
        packet = await audio.recv()
        assert packet.pts == 960 * m and packet.time_base == fractions.Fraction(1, 48000)
        (frame,) = decoder.decode(JitterFrame(bytes(packet), packet.pts))
        heard.append(frame.to_ndarray().reshape(-1, 2)[:, 0])  # 48 kHz stereo, as a browser decodes it
    heard = np.concatenate(heard)[4800:].astype(np.float32)  # past the codec's start-up
    spectrum = np.abs(np.fft.rfft(heard))
    assert abs(np.argmax(spectrum) * 48000 / heard.size - 300) < 5, "the slot's voice, decoded"
    assert 0.15 < np.sqrt(np.mean(heard**2)) / 32768 < 0.25, "at its level (8000/32768/sqrt 2 = 0.17)"

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        assert audio_codec(pc.localDescription.sdp) == "audio/opus"
    finally:
        await pc.close()
