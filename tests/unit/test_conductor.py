"""The conductor on a virtual media clock, with the real engines called directly (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.asr import mel_frame_windows
from deployments.avatar.assets import load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.parametric import ParametricLipSync
from deployments.avatar.paste import FeatheredPaster
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.rtc.conductor import Conductor, ConductorConfig
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaTimeline
from deployments.tts.piper_engine import PiperEngine
from tests.fakes import eventually

pytestmark = pytest.mark.unit


class VirtualTime:
    """Media time that only moves when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars")
    build_avatar("face", astronaut=True, out_dir=root, idle_seconds=1.0, progress=False)
    return load_avatar(root / "face")


@pytest.fixture(scope="module")
def piper():
    return PiperEngine()


class Rig:
    """A conductor wired to the real mel front-end, parametric renderer and Piper."""

    def __init__(self, avatar, piper, k: int = 4) -> None:
        self.time = VirtualTime()
        self.clock = MediaClock(now=self.time)
        self.timeline = MediaTimeline()
        self.renders = 0
        renderer = ParametricLipSync(avatar.face_size, avatar.mouth_box)

        async def render(req: RenderRequest) -> RenderResult:
            self.renders += 1
            feats = mel_frame_windows(req.pcm, len(req.frame_indices))
            return RenderResult(renderer.render(avatar.face_crops[list(req.frame_indices)], feats))

        self.conductor = Conductor(
            avatar_id="face", full_frames=avatar.full_frames, paste=FeatheredPaster(avatar).paste,
            clock=self.clock, timeline=self.timeline, render=render, speech=piper.stream,
            config=ConductorConfig(chunk_frames=k, lead_chunks=2),
        )
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Rig:
        self.clock.start()
        self.task = asyncio.create_task(self.conductor.run())
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conductor.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def play_for(self, seconds: float, settle: float = 0.01) -> None:
        """Advance media time frame by frame, consuming slots like the tracks do."""
        for _ in range(round(seconds / FRAME_S)):
            self.time.t += FRAME_S
            slot = self.clock.playing_slot()
            self.timeline.mark_video_played(slot)
            self.timeline.mark_audio_played(slot)
            await asyncio.sleep(settle)

    def slots(self, first: int, last: int) -> list:
        return [self.timeline.get(s) for s in range(first, last + 1)]


async def test_idle_is_bounded_and_never_renders(avatar, piper):
    async with Rig(avatar, piper) as rig:
        await rig.play_for(2.0)
        playing = rig.clock.playing_slot()
        # The conductor refills the lead in real time: on a loaded box give it a moment.
        await eventually(lambda: all(rig.timeline.get(s) is not None for s in range(playing + 1, playing + 5)))
        ahead = rig.timeline.last_slot() - playing
        assert 0 < ahead <= 2 * 4 + 4, f"lead of {ahead} slots"
        assert len(rig.timeline) <= ahead + 2, "played slots are pruned"
        assert rig.renders == 0
        items = rig.slots(playing + 1, playing + 4)
        assert all(i is not None and not i.speech and not i.audio.any() for i in items)
        # Idle motion: consecutive frames are not all the same picture.
        assert len({i.avatar_index for i in items}) >= 2


async def test_speech_plays_promptly_with_mouth_motion_then_returns_to_idle(avatar, piper):
    async with Rig(avatar, piper) as rig:
        await rig.play_for(0.4)
        rig.conductor.say("Hello there, this is a test of the talking avatar.")
        for _ in range(100):  # wall-clock wait for Piper's first clause, media time frozen
            if rig.timeline.has_speech_from(rig.clock.playing_slot()):
                break
            await asyncio.sleep(0.02)
        playing = rig.clock.playing_slot()
        first_speech = min(s for s in range(playing, rig.timeline.last_slot() + 1)
                           if rig.timeline.get(s) and rig.timeline.get(s).speech)
        assert first_speech - playing <= 2, "new speech replaces queued idle instead of waiting behind it"
        assert rig.conductor.speaking
        await rig.play_for(6.0, settle=0.02)
        assert rig.renders > 5
        assert not rig.conductor.speaking
        assert not rig.timeline.has_speech_from(rig.clock.playing_slot())


async def test_speech_frames_differ_from_idle_only_near_the_mouth(avatar, piper):
    async with Rig(avatar, piper) as rig:
        rig.conductor.play(0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000).astype(np.float32))
        await asyncio.sleep(0.2)
        items = [i for i in rig.slots(0, rig.timeline.last_slot()) if i is not None and i.speech]
        assert items and np.abs(items[0].audio).max() > 3000
        y1, y2, x1, x2 = avatar.coords[items[0].avatar_index]
        changed = [np.abs(i.frame.astype(int) - avatar.full_frames[i.avatar_index]).sum(axis=2) > 0 for i in items]
        assert any(c.any() for c in changed), "the mouth moved"
        for c in changed:
            ys, xs = np.nonzero(c)
            assert ys.size == 0 or (ys.min() >= y1 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2)


async def test_silent_audio_never_calls_the_renderer(avatar, piper):
    async with Rig(avatar, piper) as rig:
        rig.conductor.play(np.zeros(16000, np.float32))
        await rig.play_for(1.5)
        assert rig.renders == 0


async def test_interrupt_drops_everything_not_yet_played(avatar, piper):
    async with Rig(avatar, piper) as rig:
        rig.conductor.say("This is a long sentence that keeps going, and going, and going, so that we can "
                          "interrupt it in the middle, long before it is finished.")
        for _ in range(100):
            if rig.timeline.has_speech_from(rig.clock.playing_slot()):
                break
            await asyncio.sleep(0.02)
        await rig.play_for(0.5, settle=0.02)
        assert rig.conductor.speaking
        turn = rig.conductor.turn
        rig.conductor.interrupt()
        assert rig.conductor.turn == turn + 1
        playing = rig.clock.playing_slot()
        assert not rig.timeline.has_speech_from(playing + 1), "nothing of the old turn is left to play"
        await rig.play_for(1.0, settle=0.02)
        assert not rig.conductor.speaking
        items = rig.slots(rig.clock.playing_slot() + 1, rig.timeline.last_slot())
        assert items and all(i is not None and not i.speech for i in items), "idle continues"
