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
from tests.unit.test_conductor_fakes import Media, Rig

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
RATE = 16000
PACKET = 320  # 20 ms


class WavTrack:
    """A microphone track that delivers a 16 kHz signal as 20 ms frames, then ends."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        self._pcm = to_int16(pcm)
        self._at = 0

    async def recv(self) -> av.AudioFrame:
        if self._at >= self._pcm.size:
            raise MediaStreamError
        chunk = self._pcm[self._at : self._at + PACKET]
        self._at += PACKET
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        await asyncio.sleep(0)
        return frame


class Recogniser:
    """Records requests; a final answers `text` after `delay_s`, unless cancelled first."""

    def __init__(self, text: str = "please turn on the kitchen lights", delay_s: float = 0.5) -> None:
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
        return {"text": self.text if final else "please", "superseded": False}


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
    assert talk.last_turn["early_final"] is True
    finals = [e for e in events if e.get("event") == "asr_final"]
    assert [e["text"] for e in finals] == [recogniser.text]
    # Every final but the last was for a pause that speech went on after; the turn used the last,
    # started before the turn ended, and nothing was transcribed again at the end.
    assert len(recogniser.finals) - 1 == recogniser.cancelled
    assert rig.speech.calls == [recogniser.text], "the avatar says the transcript back"


async def test_without_an_early_final_the_turn_is_transcribed_once_at_its_end():
    stream = np.concatenate([silence(0.5), speech("speech_lights.wav"), silence(1.0)])
    talk, recogniser, rig, events = await converse(stream, ConversationSettings(early_final_s=None))
    assert talk.last_turn["early_final"] is False
    assert len(recogniser.finals) == 1 and recogniser.cancelled == 0
    assert rig.speech.calls == [recogniser.text]
    assert [e["text"] for e in events if e.get("event") == "asr_final"] == [recogniser.text]


async def test_the_early_final_has_exactly_the_audio_of_the_turn():
    stream = np.concatenate([silence(0.5), speech("speech_lights.wav"), silence(1.0)])
    _, early, _, _ = await converse(stream, ConversationSettings(early_final_s=0.2))
    _, at_end, _, _ = await converse(stream, ConversationSettings(early_final_s=None))
    np.testing.assert_array_equal(early.finals[-1], at_end.finals[0])
