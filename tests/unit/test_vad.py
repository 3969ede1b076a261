"""`VadSegmenter` on the real Silero model and real speech (Piper WAVs in tests/data), no mocks.

Where the speech is comes from the WAV itself: the first and last 10 ms frame louder than
-46 dBFS. Silero must put onsets and ends of turns within 100 ms of that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from deployments.asr.vad import SileroVad, SpeechOnset, TurnEnd, VadEvent, VadSegmenter, VadSettings
from deployments.common.audio import to_float32
from deployments.common.timing import AUDIO_CHUNK_SAMPLES, SAMPLE_RATE

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
TOLERANCE_S = 0.1
WINDOW_S = 0.032  # Silero's window: decisions fall on its edges
LOUD_RMS = 0.005  # -46 dBFS over 10 ms: speech (the voice's syllables measure ~0.08)


def load(name: str) -> np.ndarray:
    pcm, sr = sf.read(DATA / name, dtype="int16")
    assert sr == SAMPLE_RATE
    return to_float32(pcm)


def speech_span(pcm: np.ndarray) -> tuple[float, float]:
    """Seconds from the start of `pcm` to its first and past its last loud 10 ms frame."""
    frames = pcm[: pcm.size // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > LOUD_RMS)
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def feed_packets(seg: VadSegmenter, stream: np.ndarray, size: int = AUDIO_CHUNK_SAMPLES) -> list[VadEvent]:
    """Feed `stream` in packets of `size` samples, as a WebRTC receiver would."""
    return [e for i in range(0, stream.size, size) for e in seg.feed(stream[i : i + size])]


@pytest.fixture(scope="module")
def lights() -> np.ndarray:
    return load("speech_lights.wav")


@pytest.fixture(scope="module")
def weather() -> np.ndarray:
    return load("speech_weather.wav")


def test_the_wavs_are_the_sentences_the_json_names() -> None:
    texts = json.loads((DATA / "speech_wavs.json").read_text())
    assert set(texts) == {"speech_lights.wav", "speech_weather.wav"}


def test_one_turn_with_leading_and_trailing_silence(lights: np.ndarray) -> None:
    lead = 1.0
    stream = np.concatenate([silence(lead), lights, silence(1.0)])
    events = feed_packets(VadSegmenter(), stream)
    assert [type(e) for e in events] == [SpeechOnset, TurnEnd]
    onset, end = events
    start, stop = (lead + t for t in speech_span(lights))
    assert abs(onset.start_s - start) <= TOLERANCE_S, (onset, start)
    assert abs(end.end_s - stop) <= TOLERANCE_S, (end, stop)
    # onset declared once 200 ms of speech were heard; the end after 500 ms of silence
    assert 0.2 <= onset.at_s - onset.start_s < 0.2 + WINDOW_S
    assert 0.5 <= end.at_s - end.end_s < 0.5 + WINDOW_S
    assert onset.turn == end.turn == 1 and end.start_s == onset.start_s and not end.forced
    # the turn's audio: 200 ms pre-roll, the speech, 100 ms post-roll, sample-exact
    first = round((end.start_s - 0.2) * SAMPLE_RATE)
    assert end.pcm.dtype == np.float32
    assert end.pcm.size == round((end.end_s - end.start_s + 0.3) * SAMPLE_RATE)
    np.testing.assert_array_equal(end.pcm, stream[first : first + end.pcm.size])


def test_a_pause_shorter_than_end_silence_keeps_one_turn(lights: np.ndarray, weather: np.ndarray) -> None:
    stream = np.concatenate([silence(0.8), lights, silence(0.3), weather, silence(1.0)])
    events = feed_packets(VadSegmenter(), stream)
    assert [type(e) for e in events] == [SpeechOnset, TurnEnd]
    end = events[1]
    second_at = 0.8 + lights.size / SAMPLE_RATE + 0.3
    assert abs(end.start_s - (0.8 + speech_span(lights)[0])) <= TOLERANCE_S
    assert abs(end.end_s - (second_at + speech_span(weather)[1])) <= TOLERANCE_S


def test_a_pause_longer_than_end_silence_makes_two_turns(lights: np.ndarray, weather: np.ndarray) -> None:
    stream = np.concatenate([silence(0.8), lights, silence(0.9), weather, silence(1.0)])
    events = feed_packets(VadSegmenter(), stream)
    assert [type(e) for e in events] == [SpeechOnset, TurnEnd, SpeechOnset, TurnEnd]
    second_at = 0.8 + lights.size / SAMPLE_RATE + 0.9
    for (onset, end), at, pcm in zip((events[:2], events[2:]), (0.8, second_at), (lights, weather), strict=True):
        start, stop = (at + t for t in speech_span(pcm))
        assert abs(onset.start_s - start) <= TOLERANCE_S, (onset, start)
        assert abs(end.end_s - stop) <= TOLERANCE_S, (end, stop)
    assert [e.turn for e in events] == [1, 1, 2, 2]


def test_no_event_on_silence_or_low_noise() -> None:
    rng = np.random.default_rng(0)
    seg = VadSegmenter()
    assert feed_packets(seg, silence(5.0)) == []
    for dbfs in (-60, -40):  # a quiet room, a noisy laptop fan
        noise = (rng.standard_normal(5 * SAMPLE_RATE) * 10 ** (dbfs / 20)).astype(np.float32)
        assert feed_packets(seg, noise) == [], f"white noise at {dbfs} dBFS"
    hum = (0.01 * np.sin(2 * np.pi * 50 * np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    assert feed_packets(seg, hum) == [], "mains hum"
    assert not seg.in_turn and seg.turn_audio() is None


def test_speech_shorter_than_min_speech_is_no_onset(lights: np.ndarray) -> None:
    start = round(speech_span(lights)[0] * SAMPLE_RATE)
    blip = lights[start : start + round(0.1 * SAMPLE_RATE)]  # 100 ms of a word: a cough's length
    stream = np.concatenate([silence(1.0), blip, silence(1.0)])
    assert feed_packets(VadSegmenter(), stream) == []


def test_packet_size_does_not_change_the_events(lights: np.ndarray, weather: np.ndarray) -> None:
    """The model's state and context carry across `feed` calls: any split gives the same events."""
    stream = np.concatenate([silence(0.5), lights, silence(0.9), weather, silence(0.8)])
    whole = VadSegmenter().feed(stream)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(stream.size, 300, replace=False))
    seg = VadSegmenter()
    ragged = [e for piece in np.split(stream, cuts) for e in seg.feed(piece)]
    for events in (feed_packets(VadSegmenter(), stream), ragged):
        assert len(events) == len(whole) == 4
        for a, b in zip(events, whole, strict=True):
            assert type(a) is type(b) and a.start_s == b.start_s and a.at_s == b.at_s
            if isinstance(a, TurnEnd):
                np.testing.assert_array_equal(a.pcm, b.pcm)


def test_turn_audio_grows_while_the_user_talks(lights: np.ndarray) -> None:
    seg = VadSegmenter()
    assert seg.turn_audio() is None
    stream = np.concatenate([silence(1.0), lights, silence(1.0)])
    sizes, onset, last = [], None, (0, np.zeros(0))
    for i in range(0, stream.size, AUDIO_CHUNK_SAMPLES):
        for event in seg.feed(stream[i : i + AUDIO_CHUNK_SAMPLES]):
            onset = event if isinstance(event, SpeechOnset) else onset
        if seg.in_turn:
            last = (i + AUDIO_CHUNK_SAMPLES, seg.turn_audio())
            sizes.append(last[1].size)
    assert onset is not None and sizes == sorted(sizes) and sizes[-1] > lights.size * 0.8
    # what it returns is the stream from the pre-roll up to the newest packet
    first = round((onset.start_s - 0.2) * SAMPLE_RATE)
    np.testing.assert_array_equal(last[1], stream[first : last[0]])
    assert seg.turn_audio() is None and not seg.in_turn  # the turn ended


def test_a_turn_longer_than_max_turn_is_cut(lights: np.ndarray, weather: np.ndarray) -> None:
    seg = VadSegmenter(VadSettings(max_turn_s=2.0))
    stream = np.concatenate([silence(0.5), lights, silence(0.2), weather, silence(1.0)])
    events = feed_packets(seg, stream)
    ends = [e for e in events if isinstance(e, TurnEnd)]
    assert ends[0].forced and abs(ends[0].end_s - ends[0].start_s - 2.0) <= WINDOW_S
    assert ends[0].pcm.size <= (2.0 + 0.2 + 0.1) * SAMPLE_RATE
    assert not ends[-1].forced and isinstance(events[-1], TurnEnd) and len(ends) == 2


def test_reset_starts_the_stream_again(lights: np.ndarray) -> None:
    seg = VadSegmenter()
    seg.feed(np.concatenate([silence(0.5), lights[: SAMPLE_RATE // 2]]))
    assert seg.in_turn
    seg.reset()
    assert not seg.in_turn and seg.time_s == 0.0
    events = feed_packets(seg, np.concatenate([silence(1.0), lights, silence(1.0)]))
    assert [e.turn for e in events] == [1, 1] and abs(events[0].start_s - 1.0 - speech_span(lights)[0]) <= 0.1


def test_settings_are_validated() -> None:
    assert VadSettings().silence_below == pytest.approx(0.35)
    with pytest.raises(ValidationError, match="above threshold"):
        VadSettings(threshold=0.5, neg_threshold=0.6)
    with pytest.raises(ValidationError):
        VadSettings(max_turn_s=40)  # longer than Whisper reads
    with pytest.raises(ValidationError):
        VadSettings(min_speech_ms=-1)
    with pytest.raises(ValueError, match="1-D float"):
        VadSegmenter().feed(np.zeros(320, np.int16))
    with pytest.raises(FileNotFoundError):
        SileroVad("/nonexistent/silero.onnx")


def test_non_finite_samples_do_not_poison_the_stream(lights: np.ndarray) -> None:
    seg = VadSegmenter()
    bad = silence(0.5)
    bad[::7] = np.nan
    bad[3] = np.inf
    assert feed_packets(seg, bad) == []
    events = feed_packets(seg, np.concatenate([silence(0.5), lights, silence(1.0)]))
    assert [type(e) for e in events] == [SpeechOnset, TurnEnd]
    assert abs(events[0].start_s - 1.0 - speech_span(lights)[0]) <= TOLERANCE_S


def test_segmenters_share_one_model() -> None:
    assert VadSegmenter()._model is VadSegmenter()._model


def test_real_time_factor_is_small(lights: np.ndarray, weather: np.ndarray) -> None:
    """CPU per session: seconds of compute per second of 20 ms packets (~0.004 measured on 2 cores)."""
    stream = np.concatenate([silence(1.0), lights, silence(0.9), weather, silence(1.0)] * 3)
    seg = VadSegmenter()
    feed_packets(seg, silence(0.5))  # warm
    start = time.process_time()
    events = feed_packets(seg, stream)
    rtf = (time.process_time() - start) / (stream.size / SAMPLE_RATE)
    print(f"VAD real-time factor: {rtf:.4f} over {stream.size / SAMPLE_RATE:.1f} s")
    assert len(events) == 12
    assert rtf < 0.05  # a 20x margin over the measurement, for a busy CI box


def test_a_pause_offers_the_turn_audio_before_it_ends_the_turn(lights: np.ndarray, weather: np.ndarray) -> None:
    """`audio_if_turn_ends` during a pause is exactly the `TurnEnd.pcm` that pause makes (so an
    early final transcript can be used), and a pause that speech resumes after offers a shorter one.
    """
    seg = VadSegmenter()
    stream = np.concatenate([silence(0.8), lights, silence(0.3), weather, silence(1.0)])
    offered: dict[float, np.ndarray] = {}
    silences: list[float] = []
    end = None
    for i in range(0, stream.size, AUDIO_CHUNK_SAMPLES):
        for event in seg.feed(stream[i : i + AUDIO_CHUNK_SAMPLES]):
            end = event if isinstance(event, TurnEnd) else end
        silences.append(seg.trailing_silence_s)
        pending = seg.audio_if_turn_ends()
        if pending is not None:
            offered.setdefault(pending[0], pending[1])
    assert end is not None and end.end_s in offered
    np.testing.assert_array_equal(offered[end.end_s], end.pcm)
    assert len(offered) >= 2, "the mid-sentence pause (and gaps between words) offered turns too"
    assert min(offered) < end.end_s and offered[min(offered)].size < end.pcm.size
    assert max(silences) >= 0.45 and silences[-1] == 0.0, "silence counted in a pause, 0 after the turn"
