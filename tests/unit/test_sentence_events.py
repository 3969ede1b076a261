"""Sentence events come from playback: `start`/`end` when an utterance's slots are played, not when
they are synthesised or rendered; interrupts, failures and the tracks' cues.

The conductor runs over fake stages on the virtual media clock of test_conductor_fakes (`Media`
plays slot n at frame n and runs its cues then); the tracks run on the virtual time of test_tracks.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.common.timing import SAMPLES_PER_FRAME
from deployments.rtc.conductor import Conductor, ConductorConfig
from deployments.rtc.timeline import Cue, MediaItem, MediaTimeline
from deployments.rtc.tracks import AvatarAudioTrack, AvatarVideoTrack
from tests.fakes import FakeRenderer, FakeSpeech, eventually, fake_paste, tone
from tests.unit.test_conductor_fakes import N_FRAMES, K, Media, assert_same_audio, speech_audio
from tests.unit.test_tracks import clock, item, solid, timeline, vt  # noqa: F401  (fixtures)

pytestmark = pytest.mark.unit


class EventRig:
    """A conductor over fake stages that publishes into `events`, as (slot playing, event)."""

    def __init__(self, media: Media, *, render=None, speech=None, **config) -> None:
        self.media = media
        self.render = render or FakeRenderer()
        self.speech = speech or FakeSpeech()
        self.events: list[tuple[int, dict]] = []
        frames = np.zeros((N_FRAMES, 48, 48, 3), np.uint8)
        self.conductor = Conductor(
            avatar_id="fake", full_frames=frames, paste=fake_paste, clock=media.clock,
            timeline=media.timeline, render=self.render, speech=self.speech,
            config=ConductorConfig(chunk_frames=K, lead_chunks=2, **config),
            publish=lambda event: self.events.append((media.slot, event)),
        )
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> EventRig:
        self.task = asyncio.create_task(self.conductor.run(), name="conductor-under-test")
        await eventually(lambda: self.media.timeline.last_slot() > 0)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conductor.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def sentence_events(self) -> list[tuple[int, str, str]]:
        """(slot, "start"/"end", text) of the sentence events, in order."""
        return [(slot, e["status"], e["text"]) for slot, e in self.events if "status" in e]

    def kinds(self) -> list[str]:
        return [e.get("status") or e["event"] for _, e in self.events]


def audible_slots(media: Media) -> list[int]:
    """Slots with a 20 ms packet of RMS 0.01 or more (conductor.AUDIBLE_RMS)."""
    def loud(audio: np.ndarray) -> bool:
        packets = audio.astype(np.float32).reshape(2, -1) / 32768
        return bool((np.sqrt((packets**2).mean(axis=1)) >= 0.01).any())

    return [s for s, i in media.played.items() if i is not None and loud(i.audio)]


def sample_slots(media: Media) -> list[int]:
    return [s for s, i in media.played.items() if i is not None and i.speech and i.audio.any()]


async def test_start_and_end_are_published_when_the_slots_play_not_when_they_are_rendered():
    media = Media()
    async with EventRig(media) as rig:
        upload = np.concatenate([np.zeros(4000, np.float32), tone(0.5)])  # 250 ms of leading silence
        rig.conductor.play(upload)
        await eventually(lambda: rig.conductor.rendered_chunks >= 2)
        assert rig.events == [], "rendered and queued, not yet heard: no event"
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
    assert_same_audio(speech_audio(media.items()), upload)
    (start_slot, start, text), (end_slot, end, _) = rig.sentence_events()
    assert (start, end, text) == ("start", "end", "")
    assert start_slot == audible_slots(media)[0], "start: the first audible slot, not the leading silence"
    assert end_slot == sample_slots(media)[-1], "end: the slot of the last sample"
    first_speech_slot = min(s for s, i in media.played.items() if i is not None and i.speech)
    assert start_slot - first_speech_slot == 4000 // SAMPLES_PER_FRAME


async def test_sentences_of_back_to_back_utterances_pair_up_in_order_and_none_is_cut():
    media = Media()
    speech = FakeSpeech(pieces=2, piece_s=0.3)
    async with EventRig(media, speech=speech) as rig:
        rig.conductor.say("first")
        rig.conductor.say("second")
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
    # The second utterance goes after the first one's queued tail, not over it (the first one's
    # last chunk ends in a slot of padding: leave it out).
    heard = np.concatenate([i.audio for i in media.items() if i is not None and i.speech and i.audio.any()])
    assert_same_audio(heard, np.concatenate([speech.audio_for(2)] * 2))
    got = rig.sentence_events()
    assert [(kind, text) for _, kind, text in got] == [
        ("start", "first"), ("end", "first"), ("start", "second"), ("end", "second")]
    slots = [slot for slot, _, _ in got]
    assert slots == sorted(slots) and slots[1] < slots[2]
    assert slots[0] == audible_slots(media)[0] and slots[3] == sample_slots(media)[-1]
    assert all(e["turn"] == 0 for _, e in rig.events)


async def test_an_interrupt_publishes_interrupted_then_ends_the_sentence_that_was_playing():
    media = Media()
    async with EventRig(media, speech=FakeSpeech(pieces=5, piece_s=0.4)) as rig:
        rig.conductor.say("a long sentence")
        await eventually(lambda: rig.conductor.rendered_chunks >= 1)
        await media.play_for(0.4)
        assert rig.kinds() == ["start"]
        rig.conductor.interrupt(reason="barge_in")
        interrupted_at = media.slot
        await media.play_for(0.6)
        rig.conductor.say("next")
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
    assert rig.kinds() == ["start", "interrupted", "end", "start", "end"]
    (_, interrupted), (slot, end) = rig.events[1:3]
    assert interrupted == {"event": "interrupted", "reason": "barge_in", "turn": 1}
    assert end == {"status": "end", "text": "a long sentence", "turn": 0, "interrupted": True}
    assert slot == interrupted_at, "published at once, not when the dropped slots would have played"
    assert [e["text"] for _, e in rig.events[3:]] == ["next", "next"] and "interrupted" not in rig.events[4][1]


async def test_an_interrupt_before_the_sentence_was_heard_publishes_only_interrupted():
    media = Media()
    async with EventRig(media) as rig:
        rig.conductor.play(tone(1.0))
        await eventually(lambda: rig.conductor.rendered_chunks >= 1)  # queued, not played
        rig.conductor.interrupt()
        await media.play_for(0.8)
    assert [e for _, e in rig.events] == [{"event": "interrupted", "reason": "api", "turn": 1}]


async def test_a_failing_render_publishes_an_error_and_the_sentence_events_still_come():
    media = Media()
    async with EventRig(media, render=FakeRenderer(fail=True)) as rig:
        rig.conductor.say("over idle frames")
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
    errors = [e for _, e in rig.events if e.get("event") == "error"]
    assert errors and errors[0]["stage"] == "render" and "fake render failed" in errors[0]["message"]
    assert [(kind, text) for _, kind, text in rig.sentence_events()] == [
        ("start", "over idle frames"), ("end", "over idle frames")]


async def test_tts_failing_before_any_audio_publishes_an_error_and_no_sentence():
    media = Media()
    async with EventRig(media, speech=FakeSpeech(fail_after=0)) as rig:
        utt = rig.conductor.say("never heard")
        await eventually(lambda: utt.ended)
        await media.play_for(0.4)
    assert [e["event"] for _, e in rig.events] == ["error"] and rig.events[0][1]["stage"] == "tts"


async def test_tts_ending_after_its_last_audio_was_queued_still_ends_the_sentence():
    # TTS delivers its audio but reports its end only after the conductor has scheduled all of
    # it: the end cue then goes onto the already queued slot of the last sample.
    media = Media()
    done = asyncio.Event()

    async def speech(text: str):
        yield tone(0.3)
        await done.wait()

    async with EventRig(media, speech=speech) as rig:
        utt = rig.conductor.say("late end")
        for _ in range(50):
            if utt.started and utt.remaining == 0:
                break
            await media.play_for(0.04)
        assert utt.remaining == 0 and not utt.ended and not utt.end_cued
        done.set()
        await eventually(lambda: utt.end_cued)
        await media.play_until_quiet(rig.conductor)
        await media.play_for(0.4)
    assert [kind for _, kind, _ in rig.sentence_events()] == ["start", "end"]
    assert rig.sentence_events()[1][0] == sample_slots(media)[-1]


# ---- the tracks run the cues ------------------------------------------------------------------
async def test_the_audio_track_runs_start_cues_as_a_slot_starts_and_end_cues_once_it_has_played(vt, clock, timeline):  # noqa: F811
    ran: list[tuple[str, int, float]] = []
    for n in range(4):
        timeline.put(n, item(n))
    timeline.add_cue(1, Cue(lambda: ran.append(("start", 1, vt.t))))
    timeline.add_cue(2, Cue(lambda: ran.append(("end", 2, vt.t)), at_end=True))
    audio = AvatarAudioTrack(clock, timeline)
    t0 = vt.t
    for _ in range(8):
        await audio.recv()
    assert ran == [("start", 1, pytest.approx(t0 + 0.040)), ("end", 2, pytest.approx(t0 + 0.100))]
    assert not timeline.add_cue(1, Cue(lambda: None)), "a slot that has played takes no cue"


async def test_cues_of_slots_a_lagging_audio_track_skipped_still_run_in_order(vt, clock, timeline):  # noqa: F811
    ran: list[int] = []
    for n in range(12):
        timeline.put(n, item(n))
        timeline.add_cue(n, Cue(lambda n=n: ran.append(n)))
        timeline.add_cue(n, Cue(lambda n=n: ran.append(-n), at_end=True))
    audio = AvatarAudioTrack(clock, timeline)
    await audio.recv()
    # The consumer stalled past the audio catch-up bound (300 ms): slot 9's second packet is due.
    vt.t += 9 * 0.040 + 0.025
    await audio.recv()
    assert audio.skipped > 0
    assert ran == [x for n in range(10) for x in (n, -n)]


async def test_without_an_audio_track_the_video_track_runs_the_cues_and_slots_are_pruned(vt, clock, timeline):  # noqa: F811
    ran: list[int] = []
    for n in range(6):
        timeline.put(n, item(n))
    timeline.add_cue(2, Cue(lambda: ran.append(2)))
    timeline.without_audio()
    video = AvatarVideoTrack(clock, timeline, solid(0))
    for _ in range(5):
        await video.recv()
    assert ran == [2]
    assert [s for s in range(6) if timeline.get(s) is not None] == [4, 5], "played slots are pruned"


def test_a_failing_cue_does_not_stop_the_slot_from_playing():
    timeline_ = MediaTimeline()
    audio = np.zeros(SAMPLES_PER_FRAME, np.int16)
    timeline_.put(0, MediaItem(solid(0), audio, 0, 0, True))
    timeline_.add_cue(0, Cue(lambda: 1 / 0))
    ran = []
    timeline_.add_cue(0, Cue(lambda: ran.append(0), at_end=True))
    timeline_.mark_audio_played(0)
    assert ran == [0]
