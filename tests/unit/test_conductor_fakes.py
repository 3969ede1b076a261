"""The conductor with fake stages (tests/fakes.py) on a virtual media clock: slow, failing and hung
TTS and rendering, and interrupts while a stage is busy.

Media time only moves when a test (or a fake stage's injected `sleep`) advances it; a `Media`
stands in for the two tracks and records what each slot played. The conductor's own short waits
are real time, so assertions about idle motion ask for idle slots, not for a gapless lead.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import numpy as np
import pytest

from deployments.common.audio import to_int16
from deployments.common.timing import SAMPLES_PER_FRAME
from deployments.rtc.conductor import Conductor, ConductorConfig
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaItem, MediaTimeline
from tests.fakes import FakeFeatures, FakeRenderer, FakeSpeech, FakeStageError, eventually, fake_paste, tone

pytestmark = pytest.mark.unit

K = 4  # frames per chunk
N_FRAMES = 10  # avatar frames; frame i is filled with the value i (below every renderer colour)


class Media:
    """Virtual media time plus a player in place of the tracks: slot n starts at frame n."""

    def __init__(self) -> None:
        self.slot = 0
        self.clock = MediaClock(now=lambda: self._t)
        self._t = 1000.0
        self.clock.start()
        self.timeline = MediaTimeline()
        self.played: dict[int, MediaItem | None] = {}
        self._play(0)

    def _play(self, slot: int) -> None:
        # Mid-frame, so float rounding never puts the clock a slot behind.
        self._t = self.clock.t0 + (slot + 0.5) * FRAME_S
        self.played[slot] = self.timeline.get(slot)
        self.timeline.mark_video_played(slot)
        self.timeline.mark_audio_played(slot)

    def advance(self, frames: int = 1) -> None:
        for _ in range(frames):
            self.slot += 1
            self._play(self.slot)

    async def vsleep(self, seconds: float) -> None:
        """A stage that takes `seconds` of media time (inject as a fake's `sleep`)."""
        self.advance(round(seconds / FRAME_S))
        await asyncio.sleep(0)

    async def play_for(self, seconds: float, settle: float = 0.005) -> None:
        for _ in range(round(seconds / FRAME_S)):
            self.advance()
            await asyncio.sleep(settle)

    async def play_until_quiet(self, conductor: Conductor, max_s: float = 5.0) -> None:
        """Play until the conductor has no speech left (a bounded number of frames)."""
        for _ in range(round(max_s / 0.2)):
            if not conductor.speaking:
                return
            await self.play_for(0.2)
        raise AssertionError(f"still speaking after {max_s} s of media time")

    def items(self, first: int = 0, last: int | None = None) -> list[MediaItem | None]:
        last = self.slot if last is None else last
        return [self.played[s] for s in range(first, last + 1)]


class Rig:
    """A conductor over fake stages; `async with` runs it and tears it down."""

    def __init__(self, media: Media, *, render=None, speech=None, lead: int = 2, **config) -> None:
        self.media = media
        self.render = render or FakeRenderer()
        self.speech = speech or FakeSpeech()
        self.frames = np.zeros((N_FRAMES, 48, 48, 3), np.uint8)
        for i in range(N_FRAMES):
            self.frames[i] = i
        self.observed: list[tuple[str, float]] = []
        self.conductor = Conductor(
            avatar_id="fake", full_frames=self.frames, paste=fake_paste, clock=media.clock,
            timeline=media.timeline, render=self.render, speech=self.speech,
            config=ConductorConfig(chunk_frames=K, lead_chunks=lead, **config),
            observe=lambda stage, s: self.observed.append((stage, s)),
        )
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Rig:
        self.task = asyncio.create_task(self.conductor.run(), name="conductor-under-test")
        await eventually(lambda: self.media.timeline.last_slot() > 0)  # idle lead queued
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conductor.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def running(self) -> bool:
        """The conductor's task is alive; re-raise what ended it otherwise."""
        if self.task.done() and not self.task.cancelled():
            self.task.result()
        return not self.task.done()


def speech_audio(items: list[MediaItem | None]) -> np.ndarray:
    return np.concatenate([i.audio for i in items if i is not None and i.speech] or [np.zeros(0, np.int16)])


def assert_same_audio(heard: np.ndarray, sent: np.ndarray) -> None:
    """`heard` starts with `sent` (int16 rounding aside) and is silence after it."""
    want = to_int16(sent)
    assert heard.size >= want.size, f"{heard.size} samples heard, {want.size} sent"
    assert np.abs(heard[: want.size].astype(int) - want).max(initial=0) <= 1
    assert not heard[want.size :].any(), "only zero padding after the speech"


def renderer_call_of(item: MediaItem) -> int | None:
    """Which FakeRenderer call produced this frame (its colour at pixel (0, 0)), if any."""
    b, g, r = (int(v) for v in item.frame[0, 0])
    call = b - 50
    return call if (b, g, r) == FakeRenderer.colour(call) else None


# ---- slow stages ---------------------------------------------------------------------------
async def test_a_renderer_slower_than_a_chunk_delays_speech_but_loses_none():
    media = Media()
    render = FakeRenderer(delay_s=0.2, sleep=media.vsleep)  # 200 ms of media time per 160 ms chunk
    async with Rig(media, render=render) as rig:
        sent = tone(1.0)
        rig.conductor.play(sent)
        await eventually(lambda: len(render.results) == 7)  # 25 frames = 7 chunks of 4
        await media.play_for(0.8)
        assert rig.running() and not rig.conductor.speaking

    items = media.items()
    speech_slots = [s for s, i in enumerate(items) if i is not None and i.speech]
    assert len(speech_slots) == 7 * K and rig.conductor.rendered_chunks == 7
    assert_same_audio(speech_audio(items), sent)  # every sample once, in order
    calls = [renderer_call_of(items[s]) for s in speech_slots]
    assert calls == sorted(calls) == [c for c in range(1, 8) for _ in range(K)], "each chunk pasted once, in order"
    assert all(len(r.pcm) == 3200 + K * SAMPLES_PER_FRAME + 3200 for r in render.requests)
    # Today the conductor renders one chunk at a time and queues nothing while a render is in
    # flight: a render slower than a chunk shifts the next chunk behind the playing slot, so
    # speech plays in runs of K slots with an empty slot (repeated frame, silence) between them.
    # How many empty slots fall between two chunks depends on when the conductor's real-time waits
    # wake against the virtual clock, so the test asks for at least one, never for an exact count.
    first, last = speech_slots[0], speech_slots[-1]
    runs = [speech_slots[i : i + K] for i in range(0, len(speech_slots), K)]
    assert all(run == list(range(run[0], run[0] + K)) for run in runs), "each chunk plays in K consecutive slots"
    between = [b[0] - a[-1] - 1 for a, b in pairwise(runs)]
    assert all(1 <= g <= 3 for g in between), f"empty slots between chunks: {between}"
    assert all(items[s] is None for a, b in pairwise(runs) for s in range(a[-1] + 1, b[0]))
    assert 6 <= first <= 8, "the first chunk waited for its render (5 slots) and then played at once"
    # After the utterance the conductor went back to idle on its own.
    assert any(i is not None and not i.speech for i in items[last + 1 :])
    assert [stage for stage, _ in rig.observed].count("render") == 7


async def test_slow_tts_keeps_idle_going_until_the_first_audio():
    media = Media()
    speech = FakeSpeech(pieces=2, first_delay_s=0.3, sleep=media.vsleep)  # 300 ms to first audio
    async with Rig(media, speech=speech) as rig:
        utt = rig.conductor.say("hello")
        assert rig.conductor.speaking, "speaking from the moment text is queued"
        await eventually(lambda: utt.ended)
        await media.play_until_quiet(rig.conductor)
        assert rig.running()
    items = media.items()
    assert all(i is not None and not i.speech for i in items[1:8]), "idle kept playing while TTS was slow"
    assert_same_audio(speech_audio(items), speech.audio_for(2))
    assert [stage for stage, _ in rig.observed].count("tts_first_audio") == 1


# ---- failing stages --------------------------------------------------------------------------
@pytest.mark.parametrize("fail_after", [0, 2])
async def test_tts_failing_mid_sentence_ends_the_utterance_and_the_session_goes_on(fail_after):
    media = Media()
    speech = FakeSpeech(pieces=5, piece_s=0.2, fail_after=fail_after)
    async with Rig(media, speech=speech) as rig:
        utt = rig.conductor.say("a sentence that breaks")
        await eventually(lambda: utt.ended)
        assert utt.error and utt.error.startswith("tts failed")
        assert list(rig.conductor.errors) == [utt.error] and "fake tts failed" in utt.error
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
        assert rig.running()
    items = media.items()
    assert speech.failed == 1 and speech.pieces_sent == fail_after
    # What arrived before the failure plays in full; nothing after it.
    assert_same_audio(speech_audio(items), speech.audio_for(fail_after))
    assert len(rig.render.requests) == -(-fail_after * 5 // K)  # 0.2 s = 5 frames per piece
    assert any(i is not None and not i.speech for i in items[-10:]), "idle after the failure"


@pytest.mark.parametrize("fail_every", [1, 2])
async def test_a_failing_render_plays_its_audio_over_idle_frames_and_the_session_goes_on(fail_every):
    media = Media()
    render = FakeRenderer(fail_every=fail_every)
    sent = tone(1.0)
    async with Rig(media, render=render, render_retry_s=0) as rig:  # every chunk tries the renderer
        rig.conductor.play(sent)
        await eventually(lambda: render.failures >= 1)
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
        assert rig.running(), "the conductor survives a render failure"
        assert sum("render failed" in e for e in rig.conductor.errors) == render.failures
        assert rig.conductor.stage_errors["render"] == render.failures
        assert not rig.conductor.speaking
    items = media.items()
    assert_same_audio(speech_audio(items), sent)  # every sample heard: no gap where renders failed
    spoken = [i for i in items if i is not None and i.speech]
    failed_chunks = [i for i in spoken if renderer_call_of(i) is None]  # the avatar's own frames
    assert failed_chunks and len(failed_chunks) == K * render.failures
    last_speech = max(n for n, i in enumerate(items) if i is not None and i.speech)
    assert any(i is not None and not i.speech for i in items[last_speech + 1 :]), "idle after the speech"


# ---- interrupts while a stage is busy ---------------------------------------------------------
async def test_interrupt_silences_the_rest_of_the_slot_playing():
    # The slot playing has sent its first 20 ms packet: the second one is silence (barge-in stops
    # the voice up to 20 ms sooner); its picture stays, it is on screen already.
    media = Media()
    async with Rig(media) as rig:
        rig.conductor.play(tone(1.0))
        for _ in range(50):
            item = media.timeline.get(media.slot)
            if item is not None and item.speech:
                break
            await media.play_for(FRAME_S, settle=0.02)
        assert item is not None and item.speech and item.audio.any()
        rig.conductor.interrupt()
        muted = media.timeline.get(media.slot)
        assert muted is not None and not muted.audio.any() and not muted.speech
        assert muted.frame is item.frame and muted.cues == item.cues


async def test_interrupt_while_a_render_is_in_flight_discards_its_result():
    media = Media()
    render = FakeRenderer(hang=True)
    async with Rig(media, render=render) as rig:
        rig.conductor.play(tone(1.0))
        await eventually(lambda: render.in_flight == 1)
        turn = rig.conductor.turn
        rig.conductor.interrupt()
        assert rig.conductor.turn == turn + 1 and not rig.conductor.speaking
        render.release()
        await eventually(lambda: render.in_flight == 0 and len(render.results) == 1)
        await media.play_for(0.6)
        assert rig.running()
        assert len(render.requests) == 1, "the interrupted utterance is not rendered further"
        assert rig.conductor.rendered_chunks == 0
        stale = media.items()
        assert not any(i is not None and (i.speech or renderer_call_of(i) == 1) for i in stale)
        assert not rig.conductor.speaking
        # The session still speaks afterwards.
        rig.conductor.play(tone(0.2))
        await eventually(lambda: rig.conductor.rendered_chunks >= 2)
        await media.play_for(0.6)
    fresh = [i for i in media.items(len(stale)) if i is not None and i.speech]
    assert fresh and {renderer_call_of(i) for i in fresh} == {2, 3}


async def test_interrupt_while_a_render_hangs_resumes_idle_without_waiting_for_it():
    # interrupt() abandons the in-flight render of the old turn (and cancels it): a render that
    # never answers cannot freeze the session.
    media = Media()
    render = FakeRenderer(hang=True)
    async with Rig(media, render=render) as rig:
        rig.conductor.play(tone(1.0))
        await eventually(lambda: render.in_flight == 1)
        rig.conductor.interrupt()
        await eventually(lambda: render.in_flight == 0)
        await media.play_for(0.4)
        await eventually(lambda: media.timeline.last_slot() > media.slot, timeout=1.0)
        assert rig.running() and not rig.conductor.speaking
        assert render.cancelled == 1 and not render.results
        assert not rig.conductor.errors, "an abandoned render is not a failure"


async def test_tts_hang_then_interrupt_cancels_it():
    media = Media()
    speech = FakeSpeech(hang=True)
    async with Rig(media, speech=speech) as rig:
        utt = rig.conductor.say("never comes")
        await eventually(lambda: speech.active == 1)
        await media.play_for(0.6, settle=0.01)
        assert rig.running()
        # A hung TTS does not stop idle motion, but the session reports speaking until interrupted.
        assert rig.conductor.speaking
        assert any(i is not None and not i.speech for i in media.items()[1:])
        rig.conductor.interrupt()
        await eventually(lambda: utt.ended and speech.active == 0)
        assert speech.cancelled == 1 and speech.pieces_sent == 0
        assert utt.error == "cancelled" and not rig.conductor.errors, "a cancel is not an error"
        assert not rig.conductor.speaking
        await media.play_for(0.2)
        assert rig.running() and rig.render.requests == []


# ---- the fakes themselves ---------------------------------------------------------------------
async def test_fake_speech_knobs():
    speech = FakeSpeech(pieces=3, piece_s=0.1)
    pieces = [p async for p in speech("hi")]
    assert [p.size for p in pieces] == [1600] * 3 and all(p.dtype == np.float32 and p.std() > 0.1 for p in pieces)
    assert np.allclose(np.concatenate(pieces), speech.audio_for(3), atol=1e-5)
    assert speech.calls == ["hi"] and speech.finished == 1 and speech.active == 0

    failing = FakeSpeech(pieces=3, fail_after=1, error=ValueError)
    got = []
    with pytest.raises(ValueError, match="after 1 pieces"):
        async for p in failing("x"):
            got.append(p)
    assert len(got) == 1 and failing.failed == 1

    hanging = FakeSpeech(pieces=1, hang=True)
    task = asyncio.create_task(anext(hanging("x")))
    await eventually(lambda: hanging.active == 1)
    hanging.release()
    assert (await task).size == 3200 and hanging.cancelled == 0


async def test_fake_renderer_knobs():
    from deployments.avatar.types import RenderRequest
    from deployments.common.features import pcm_samples_for

    render = FakeRenderer(face_size=8, fail_every=2)
    ok = RenderRequest("a", (0, 1), np.zeros(pcm_samples_for(2), np.float32))
    crops = (await render(ok)).crops
    assert crops.shape == (2, 8, 8, 3) and crops.dtype == np.uint8 and tuple(crops[1, 3, 3]) == render.colour(1)
    with pytest.raises(FakeStageError):
        await render(ok)
    with pytest.raises(ValueError, match="must hold"):
        await render(RenderRequest("a", (0, 1), np.zeros(pcm_samples_for(3), np.float32)))
    assert len(render.requests) == 3 and render.failures == 1 and render.in_flight == 0

    hanging = FakeRenderer(hang=True)
    task = asyncio.create_task(hanging(ok))
    await eventually(lambda: hanging.in_flight == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert hanging.cancelled == 1 and hanging.results == []


def test_fake_features_knobs():
    from deployments.common.features import FEATURE_SHAPES, pcm_samples_for

    for kind, shape in FEATURE_SHAPES.items():
        feats = FakeFeatures(kind).batch([np.zeros(pcm_samples_for(n), np.float32) for n in (1, 4)], [1, 4])
        assert [f.shape for f in feats] == [(1, *shape), (4, *shape)] and feats[0].dtype == np.float32
    engine = FakeFeatures("mel", fail_every=2, delay_s=0.01, sleep=lambda s: None)
    pcm = [np.zeros(pcm_samples_for(1), np.float32)]
    engine.batch(pcm, [1])
    with pytest.raises(FakeStageError):
        engine.batch(pcm, [1])
    with pytest.raises(ValueError):
        engine.batch(pcm, [2])
    assert engine.batches == [[1], [1], [2]] and engine.failures == 1
