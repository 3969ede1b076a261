"""The conversation's microphone path on a real Silero VAD and a real conductor over fake stages:
which transcripts are asked for, which one a turn uses, and what is said back (echo mode).

The recogniser is a stand-in (the real one is tested alone and through Serve): it records each
request and answers after a short delay, so the test sees which finals were started early,
which were cancelled because speech resumed, and which one the turn used.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from aiortc.mediastreams import MediaStreamError

from deployments.common.audio import to_int16
from deployments.rtc.conversation import Conversation, ConversationSettings
from tests.fakes import eventually
from tests.unit.test_conductor_fakes import Media, Rig, speech_audio

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
RATE = 16000
PACKET = 320  # 20 ms
ONE_REPLY = round(3 * 0.2 * RATE)  # FakeSpeech's audio for one text (the slots round it up to a chunk)


class WavTrack:
    """A microphone track that delivers a 16 kHz signal as 20 ms frames, then ends."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray, hold_at_s: float | None = None) -> None:
        self._pcm = to_int16(pcm)
        self._at = 0
        self._hold_at = None if hold_at_s is None else round(hold_at_s * RATE)
        self.resume = asyncio.Event()  # delivery stops at `hold_at_s` until this is set

    async def recv(self) -> av.AudioFrame:
        if self._hold_at is not None and self._at >= self._hold_at:
            await self.resume.wait()
        if self._at >= self._pcm.size:
            raise MediaStreamError
        chunk = self._pcm[self._at : self._at + PACKET]
        self._at += PACKET
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        await asyncio.sleep(0)
        return frame


class Recogniser:
    """Records requests; a final answers `text` (None: "heard N samples") after `delay_s`, unless
    cancelled first.
    """

    def __init__(self, text: str | None = "please turn on the kitchen lights", delay_s: float = 0.5) -> None:
        self.text, self.delay_s = text, delay_s
        self.finals: list[np.ndarray] = []
        self.cancelled = 0

    async def __call__(self, pcm: np.ndarray, final: bool, session_id: str) -> dict:
        if final:
            self.finals.append(pcm)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        text = self.text if self.text is not None else f"heard {pcm.size} samples"
        return {"text": text if final else "please", "superseded": False}


def speech(name: str) -> np.ndarray:
    pcm, rate = sf.read(str(DATA / name), dtype="float32")
    assert rate == RATE
    return pcm


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


async def converse(stream: np.ndarray, settings: ConversationSettings) -> tuple[Conversation, Recogniser, Rig, list]:
    media, events = Media(), []
    recogniser = Recogniser()
    async with Rig(media) as rig:
        talk = Conversation(session_id="1", conductor=rig.conductor, publish=events.append,
                            transcribe=recogniser, chat=None, settings=settings)
        talk.listen(WavTrack(stream))
        await eventually(lambda: any(e.get("event") == "asr_final" for e in events), timeout=20)
        await eventually(lambda: not talk.replying)
        await eventually(lambda: rig.speech.calls)  # echo: the transcript went to TTS
        await talk.aclose()
    return talk, recogniser, rig, events


async def test_the_final_started_in_the_pause_is_the_one_the_turn_uses():
    stream = np.concatenate([silence(0.5), speech("speech_lights.wav"), silence(1.0)])
    talk, recogniser, rig, events = await converse(stream, ConversationSettings(early_final_s=0.2))
    assert talk.last_turn["prepared"] is True
    assert talk.last_turn["transcribe_t"] < talk.last_turn["turn_end_t"]
    finals = [e for e in events if e.get("event") == "asr_final"]
    assert [e["text"] for e in finals] == [recogniser.text]
    # Every final but the last was for a pause that speech went on after (its prepared reply
    # withdrawn); the turn used the last, started before the turn ended, and nothing was
    # transcribed again at the end.
    assert len(recogniser.finals) - 1 == recogniser.cancelled
    assert talk.counts["withdrawn"] == talk.counts["prepared"] - 1
    assert rig.speech.calls == [recogniser.text], "the avatar says the transcript back"


async def test_without_an_early_final_the_turn_is_transcribed_once_at_its_end():
    stream = np.concatenate([silence(0.5), speech("speech_lights.wav"), silence(1.0)])
    talk, recogniser, rig, events = await converse(stream, ConversationSettings(early_final_s=None))
    assert "prepared" not in talk.last_turn and talk.last_turn["transcribe_t"] == talk.last_turn["turn_end_t"]
    assert len(recogniser.finals) == 1 and recogniser.cancelled == 0
    assert rig.speech.calls == [recogniser.text]
    assert [e["text"] for e in events if e.get("event") == "asr_final"] == [recogniser.text]


async def test_the_early_final_has_exactly_the_audio_of_the_turn():
    stream = np.concatenate([silence(0.5), speech("speech_lights.wav"), silence(1.0)])
    _, early, _, _ = await converse(stream, ConversationSettings(early_final_s=0.2))
    _, at_end, _, _ = await converse(stream, ConversationSettings(early_final_s=None))
    np.testing.assert_array_equal(early.finals[-1], at_end.finals[0])


async def held_in_a_pause(rig: Rig, stream: np.ndarray, hold_at_s: float, events: list) -> tuple[Conversation, WavTrack]:
    """Listen until `hold_at_s` of `stream` (in a pause) and until the reply prepared for it is
    synthesised; check nothing of it is heard or published yet.
    """
    recogniser = Recogniser(text=None, delay_s=0.05)
    talk = Conversation(session_id="1", conductor=rig.conductor, publish=events.append,
                        transcribe=recogniser, chat=None, settings=ConversationSettings(early_final_s=0.1))
    track = WavTrack(stream, hold_at_s=hold_at_s)
    talk.listen(track)
    await eventually(lambda: rig.speech.calls and rig.speech.finished, timeout=20)
    assert talk.counts["prepared"] == 1 and talk.replying is False
    await rig.media.play_for(0.6)
    assert not rig.conductor.speaking and not speech_audio(rig.media.items()).size, "held: nothing plays"
    assert events == [], "held: nothing is published"
    return talk, track


async def test_a_reply_prepared_in_the_pause_plays_the_moment_the_turn_ends():
    lights = speech("speech_lights.wav")
    stream = np.concatenate([silence(0.5), lights, silence(1.0)])
    events: list = []
    async with Rig(Media()) as rig:
        talk, track = await held_in_a_pause(rig, stream, 0.5 + lights.size / RATE + 0.3, events)
        track.resume.set()
        await eventually(lambda: rig.conductor.speaking)
        await rig.media.play_until_quiet(rig.conductor)
        await talk.aclose()
    assert len(rig.speech.calls) == 1, "the prepared reply is the one spoken: not synthesised again"
    assert [e["event"] for e in events] == ["asr_final"] and events[0]["text"] == rig.speech.calls[0]
    assert ONE_REPLY <= speech_audio(rig.media.items()).size < 2 * ONE_REPLY, "its speech, once"
    assert talk.counts["withdrawn"] == 0


async def test_a_reply_prepared_in_a_pause_that_speech_goes_on_after_is_never_heard():
    lights, weather = speech("speech_lights.wav"), speech("speech_weather.wav")
    stream = np.concatenate([silence(0.5), lights, silence(0.3), weather, silence(1.0)])
    events: list = []
    async with Rig(Media()) as rig:
        talk, track = await held_in_a_pause(rig, stream, 0.5 + lights.size / RATE + 0.25, events)
        prepared = rig.speech.calls[0]
        track.resume.set()
        await eventually(lambda: len(rig.speech.calls) == 2 and rig.conductor.speaking, timeout=20)
        await rig.media.play_until_quiet(rig.conductor)
        await talk.aclose()
    final = rig.speech.calls[1]
    assert final != prepared and int(final.split()[1]) > int(prepared.split()[1]), "the whole turn's audio"
    assert talk.counts["withdrawn"] >= 1
    assert [e["text"] for e in events if e.get("event") == "asr_final"] == [final], "only the turn's transcript"
    assert ONE_REPLY <= speech_audio(rig.media.items()).size < 2 * ONE_REPLY, "one reply heard, not two"
