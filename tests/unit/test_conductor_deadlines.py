"""No stage and no client can freeze, starve or flood a session: deadlines derived from play time,
TTS bounded ahead of playback, per-session queue caps, and a conductor that dies closes its session.

Fakes from tests/fakes.py on the virtual media clock of test_conductor_fakes (deadlines are media
time, so a test moves the clock past them instead of waiting).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from deployments.common.errors import TooManyRequests
from deployments.rtc.conductor import Conductor
from deployments.rtc.session import Session
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaTimeline
from deployments.rtc.tracks import AvatarAudioTrack, AvatarVideoTrack
from tests.fakes import FakeRenderer, FakeSpeech, eventually, fake_paste, tone
from tests.unit.test_conductor_fakes import K, Media, Rig, assert_same_audio, renderer_call_of, speech_audio

pytestmark = pytest.mark.unit


# ---- deadlines -------------------------------------------------------------------------------
async def test_a_hung_render_misses_its_deadline_and_its_audio_plays_over_idle_frames():
    media = Media()
    render = FakeRenderer(hang=True)  # never answers
    sent = tone(0.48)  # 3 chunks
    async with Rig(media, render=render, render_late_s=0.2, render_retry_s=0) as rig:
        rig.conductor.play(sent)
        await eventually(lambda: render.in_flight == 1)
        for _ in range(60):  # media time moves on; each chunk's render is given up 0.2 s after it was due
            await media.play_for(0.2)
            if not rig.conductor.speaking:
                break
        assert rig.running() and not rig.conductor.speaking, "a hung renderer does not keep the session speaking"
        assert render.cancelled == rig.conductor.stage_errors["render"] == 3, "each late call is cancelled"
        assert all("render failed" in e and "deadline" in e for e in rig.conductor.errors)
        await media.play_for(0.4, settle=0.05)  # a frame's worth of real time: the idle lead keeps up
    items = media.items()
    assert_same_audio(speech_audio(items), sent)  # every sample heard, over the avatar's own frames
    assert not any(i is not None and renderer_call_of(i) is not None for i in items)
    assert any(i is not None and not i.speech for i in items[-5:]), "idle motion goes on afterwards"


async def test_after_a_failed_render_speech_skips_the_renderer_for_a_while_and_plays_without_gaps():
    media = Media()
    render = FakeRenderer(hang=True)  # a dead renderer: every call hangs until its deadline
    sent = tone(1.6)  # 10 chunks
    async with Rig(media, render=render, render_late_s=0.2, render_retry_s=10.0) as rig:
        rig.conductor.play(sent)
        await eventually(lambda: render.in_flight == 1)
        for _ in range(60):
            await media.play_for(0.2, settle=0.05)  # a frame's worth of real time: the conductor keeps up
            if not rig.conductor.speaking:
                break
        assert rig.running() and not rig.conductor.speaking
        assert len(render.requests) == 1 and rig.conductor.stage_errors["render"] == 1, "one call waited out"
        assert rig.conductor.unrendered_chunks == 9
    items = media.items()
    assert_same_audio(speech_audio(items), sent)
    speech_slots = [s for s, i in enumerate(items) if i is not None and i.speech]
    after_first = speech_slots[K:]
    gaps = after_first[-1] - after_first[0] + 1 - len(after_first)
    # Waiting out each chunk's deadline would leave 5 empty slots per chunk (45); scheduling jitter
    # of the real-time waits may leave one or two.
    assert gaps <= 3, f"once the renderer failed, the rest played without waiting on it: {gaps} empty slots"


async def test_a_render_within_its_lateness_is_used():
    media = Media()
    render = FakeRenderer(delay_s=0.3, sleep=media.vsleep)  # 300 ms of media time: late, but within 1 s
    async with Rig(media, render=render, render_late_s=1.0) as rig:
        rig.conductor.play(tone(0.16))
        await eventually(lambda: len(render.results) == 1)
        await media.play_until_quiet(rig.conductor)
        assert not rig.conductor.errors and rig.conductor.rendered_chunks == 1
    assert [renderer_call_of(i) for i in media.items() if i is not None and i.speech] == [1] * K


async def test_a_hung_tts_times_out_its_first_audio_and_the_session_goes_on():
    media = Media()
    speech = FakeSpeech(hang=True)
    async with Rig(media, speech=speech, tts_first_audio_s=0.4) as rig:
        utt = rig.conductor.say("never comes")
        await eventually(lambda: speech.active == 1)
        await media.play_for(0.2)
        assert not utt.ended, "no deadline before tts_first_audio_s"
        await media.play_for(0.4)
        await eventually(lambda: utt.ended)
        assert utt.error.startswith("tts timed out") and list(rig.conductor.errors) == [utt.error]
        assert rig.conductor.stage_errors["tts"] == 1 and speech.cancelled == 1
        await eventually(lambda: not rig.conductor.speaking)
        # The next sentence is spoken.
        speech.hang = False
        speech.release()
        nxt = rig.conductor.say("next")
        await eventually(lambda: nxt.ended)
        await media.play_until_quiet(rig.conductor)
        assert nxt.error is None and rig.running()


async def test_tts_stalling_mid_utterance_times_out_once_playback_has_caught_up():
    media = Media()
    # The first piece at once, the second never (it sleeps in real time far past the test).
    speech = FakeSpeech(pieces=2, piece_s=0.4, piece_delay_s=3600)
    async with Rig(media, speech=speech, tts_stall_s=0.4) as rig:
        utt = rig.conductor.say("a sentence whose second half never comes")
        await eventually(lambda: utt.received > 0)
        ended_at = None
        for _ in range(150):  # frame by frame until the utterance gives up
            await media.play_for(FRAME_S, settle=0.01)
            if utt.ended:
                ended_at = media.slot
                break
        assert ended_at is not None, "a stalled TTS does not keep the utterance open"
        # Not before playback ran out of the first piece, plus tts_stall_s (10 frames).
        assert ended_at >= utt.last_slot + 10, (ended_at, utt.last_slot)
        assert utt.error.startswith("tts timed out") and rig.conductor.stage_errors["tts"] == 1
        await eventually(lambda: not rig.conductor.speaking)
        assert rig.running()
    assert_same_audio(speech_audio(media.items()), speech.audio_for(1))


async def test_a_slow_tts_piece_has_no_deadline_while_audio_is_buffered():
    media = Media()  # media time stands still: the first piece's 1 s of audio is never played out
    speech = FakeSpeech(pieces=2, piece_s=1.0, piece_delay_s=0.3)  # real seconds
    async with Rig(media, speech=speech, tts_stall_s=0.05) as rig:
        utt = rig.conductor.say("slow but ahead")
        await eventually(lambda: utt.ended, timeout=3.0)
        assert utt.error is None and speech.finished == 1


# ---- TTS bounded ahead of playback -------------------------------------------------------------
async def test_tts_is_pulled_no_further_than_tts_lead_s_ahead_of_playback():
    media = Media()
    speech = FakeSpeech(pieces=40, piece_s=0.5)  # 20 s of speech, delivered as fast as asked
    async with Rig(media, speech=speech, tts_lead_s=2.0) as rig:
        utt = rig.conductor.say("a long text")
        await eventually(lambda: speech.pieces_sent >= 4)
        await asyncio.sleep(0.3)
        assert speech.pieces_sent <= 5, f"{speech.pieces_sent} pieces pulled with playback standing still"
        await media.play_for(2.0)
        await eventually(lambda: speech.pieces_sent >= 7)
        assert speech.pieces_sent <= 10
        assert utt.remaining / 16000 <= 2.0 + 0.5, "at most the lead plus one piece buffered"
        rig.conductor.interrupt()
        await eventually(lambda: speech.active == 0)


async def test_only_the_playing_utterance_and_the_next_are_synthesised():
    media = Media()
    speech = FakeSpeech(hang=True)
    async with Rig(media, speech=speech) as rig:
        utts = [rig.conductor.say(f"text {i}") for i in range(5)]
        await eventually(lambda: speech.active == 2)
        await asyncio.sleep(0.05)
        assert speech.calls == ["text 0", "text 1"], "queued text costs no TTS until its turn is near"
        speech.hang = False
        speech.release()
        await media.play_until_quiet(rig.conductor, max_s=10.0)  # each starts as the one before it plays
        assert speech.calls == [f"text {i}" for i in range(5)], "the rest follow in order"
        assert all(u.error is None for u in utts)
        rig.conductor.interrupt()


# ---- per-session queue caps ----------------------------------------------------------------------
async def test_queue_caps_refuse_more_speech_and_an_interrupt_empties_the_queue():
    media = Media()
    speech = FakeSpeech(hang=True)
    async with Rig(media, speech=speech, max_queued_utterances=3, max_queued_chars=20,
                   max_queued_audio_s=1.0) as rig:
        c = rig.conductor
        for _ in range(3):
            c.say("four")
        with pytest.raises(TooManyRequests, match="3 utterances queued") as err:
            c.say("more")
        assert err.value.status == 429
        c.interrupt()
        c.say("x" * 15)  # an interrupt always makes room
        with pytest.raises(TooManyRequests, match="characters"):
            c.say("y" * 6)
        c.interrupt()
        c.play(tone(0.8))
        with pytest.raises(TooManyRequests, match="uploaded audio"):
            c.play(tone(0.5))
        assert c.queued["utterances"] == 1 and c.queued["audio_s"] == pytest.approx(0.8)
        c.interrupt()


# ---- a conductor that dies closes its session ------------------------------------------------------
class BrokenConductor(Conductor):
    """A real conductor with a bug in its media loop: the idle chunk raises."""

    def _idle_chunk(self, k: int) -> None:
        raise RuntimeError("bug in the idle loop")


async def test_a_conductor_that_dies_closes_its_session_and_tells_the_host(caplog):
    clock, timeline = MediaClock(), MediaTimeline()
    frames = np.zeros((4, 48, 48, 3), np.uint8)
    conductor = BrokenConductor(avatar_id="fake", full_frames=frames, paste=fake_paste, clock=clock,
                                timeline=timeline, render=FakeRenderer(), speech=FakeSpeech(), session_id="123456789012345")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    session = Session("123456789012345", pc, conductor, clock, timeline,
                      AvatarVideoTrack(clock, timeline, frames[0]), AvatarAudioTrack(clock, timeline))
    told: list[tuple[str, str]] = []
    with caplog.at_level(logging.ERROR, logger="deployments"):
        session.start(on_failure=lambda sid, reason: told.append((sid, reason)))
        await eventually(lambda: bool(told))
    assert told == [("123456789012345", "conductor crashed: RuntimeError('bug in the idle loop')")]
    assert session.closed.is_set() and pc.connectionState == "closed"
    assert any(r.getMessage().startswith("session 123456789012345: conductor crashed") for r in caplog.records)
    await session.aclose()  # idempotent


async def test_a_session_closed_on_purpose_is_not_a_failure():
    clock, timeline = MediaClock(), MediaTimeline()
    frames = np.zeros((4, 48, 48, 3), np.uint8)
    conductor = Conductor(avatar_id="fake", full_frames=frames, paste=fake_paste, clock=clock,
                          timeline=timeline, render=FakeRenderer(), speech=FakeSpeech())
    session = Session("1", RTCPeerConnection(), conductor, clock, timeline,
                      AvatarVideoTrack(clock, timeline, frames[0]), AvatarAudioTrack(clock, timeline))
    told: list = []
    session.start(on_failure=lambda sid, reason: told.append(reason))
    await asyncio.sleep(0.05)
    await session.aclose()
    await asyncio.sleep(0.05)
    assert told == [] and session.failure is None
