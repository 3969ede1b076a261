"""Streaming voice-activity segmentation of one session's microphone, on Silero VAD (ONNX, no torch).

`VadSegmenter.feed(pcm)` takes 16 kHz float32 audio in pieces of any size (a WebRTC packet is
20 ms) and returns what the pieces completed:

    SpeechOnset   speech has lasted `min_speech_ms`: the user is talking (barge-in signal)
    TurnEnd       `end_silence_ms` of silence followed it: the turn's audio, pre-roll included

Silero scores 32 ms windows (512 samples, each with the previous window's last 64 samples as
context) and carries an LSTM state from window to window; the segmenter keeps that state, the
context and the audio of the current turn, so one segmenter serves one stream. The ONNX session
itself holds no per-stream state and is shared by every segmenter of a process (`SileroVad`).
Times in events are seconds of the stream: samples fed since the segmenter was made (or reset).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.common.timing import SAMPLE_RATE

logger = logging.getLogger(__name__)

WINDOW_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # samples of the previous window the model reads before each window
STATE_SHAPE = (1, 1, 128)  # the LSTM's h and c
WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE

__all__ = [
    "SileroVad",
    "SpeechOnset",
    "TurnEnd",
    "VadEvent",
    "VadSegmenter",
    "VadSettings",
    "default_vad_model_path",
]


def default_vad_model_path() -> Path:
    """Silero VAD v6, as shipped in faster-whisper's assets (no download)."""
    from faster_whisper.utils import get_assets_path

    return Path(get_assets_path()) / "silero_vad_v6.onnx"


class VadSettings(BaseModel):
    """Thresholds of the segmenter; the defaults suit a headset or laptop microphone.

    Attributes:
        threshold: A window whose speech probability reaches this is speech.
        neg_threshold: Once in speech, only a window below this counts as silence (hysteresis:
            Silero's VADIterator uses `threshold - 0.15`, the default when None).
        min_speech_ms: Speech must last this long before it is an onset (shorter: a cough or click).
        end_silence_ms: Silence that ends a turn.
        pre_roll_ms: Audio kept before the first speech window (Silero fires a little late on soft
            consonants, and Whisper likes a little silence before the first word).
        post_roll_ms: Audio kept after the last speech window.
        max_turn_s: A turn this long ends at once (Whisper reads 30 s at most).
        model_path: The Silero ONNX file; None for the one bundled with faster-whisper.
        onnx_threads: onnxruntime intra-op threads (one window costs well under a millisecond).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    neg_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(200, ge=0, le=5_000)
    end_silence_ms: int = Field(500, ge=WINDOW_S * 1000, le=10_000)
    pre_roll_ms: int = Field(200, ge=0, le=2_000)
    post_roll_ms: int = Field(100, ge=0, le=2_000)
    max_turn_s: float = Field(25.0, gt=1.0, le=28.0)
    model_path: str | None = None
    onnx_threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> VadSettings:
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(f"neg_threshold {self.neg_threshold} is above threshold {self.threshold}")
        return self

    @property
    def silence_below(self) -> float:
        """The probability under which a window in speech counts as silence."""
        return self.neg_threshold if self.neg_threshold is not None else max(0.01, self.threshold - 0.15)


@dataclass(frozen=True)
class SpeechOnset:
    """The user started talking.

    Attributes:
        turn: The turn's number in this stream, from 1.
        start_s: Where the speech began (start of its first speech window).
        at_s: Where it was recognised as speech (`start_s` + `min_speech_ms`, to a window).
    """

    turn: int
    start_s: float
    at_s: float


@dataclass(frozen=True)
class TurnEnd:
    """The user stopped talking (or talked `max_turn_s` without a pause).

    Attributes:
        turn: The turn's number, as in its `SpeechOnset`.
        start_s: Where the speech began.
        end_s: Where it ended (end of its last speech window).
        at_s: Where the end was recognised (`end_s` + `end_silence_ms`, or the forced cut).
        pcm: The turn's 16 kHz float32 audio, from `start_s - pre_roll` to `end_s + post_roll`.
        forced: True when `max_turn_s` cut the turn.
    """

    turn: int
    start_s: float
    end_s: float
    at_s: float
    pcm: np.ndarray
    forced: bool = False


VadEvent = SpeechOnset | TurnEnd


class SileroVad:
    """The Silero ONNX session: speech probabilities for a run of windows, state in and out.

    Stateless itself (onnxruntime's `run` may be called from several threads), so one instance
    serves every stream of a process: see `shared`.
    """

    def __init__(self, model_path: str | Path | None = None, *, onnx_threads: int = 1) -> None:
        path = Path(model_path) if model_path else default_vad_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"silero vad model not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = onnx_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its shape-inference warnings are noise
        self._session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        self.model_path = path

    @classmethod
    @functools.cache
    def shared(cls, model_path: str | None = None, onnx_threads: int = 1) -> SileroVad:
        """One instance per (model, threads) in this process."""
        return cls(model_path, onnx_threads=onnx_threads)

    def probabilities(self, windows: np.ndarray, h: np.ndarray, c: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score consecutive windows of one stream.

        Args:
            windows: float32 `(n, CONTEXT_SAMPLES + WINDOW_SAMPLES)`: each window with its context.
            h: The LSTM state after the previous window, `STATE_SHAPE`.
            c: Likewise.

        Returns:
            `(n,)` speech probabilities, and the state after the last window.
        """
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(probs, np.float32).reshape(-1), h, c


class _TurnAudio:
    """The stream's recent samples in one growable array, addressed by absolute sample index."""

    def __init__(self) -> None:
        self._buf = np.zeros(SAMPLE_RATE * 4, np.float32)
        self._start = 0  # absolute index of _buf[0]
        self._len = 0

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self._start + self._len

    def append(self, pcm: np.ndarray) -> None:
        if self._len + pcm.size > self._buf.size:
            grown = np.zeros(max(2 * self._buf.size, self._len + pcm.size), np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len : self._len + pcm.size] = pcm
        self._len += pcm.size

    def drop_before(self, index: int) -> None:
        """Forget samples before absolute `index`."""
        n = min(max(0, index - self._start), self._len)
        if n:
            self._buf[: self._len - n] = self._buf[n : self._len]
            self._start += n
            self._len -= n

    def read(self, start: int, end: int) -> np.ndarray:
        """A copy of absolute samples [start, end), clipped to what is held."""
        a, b = max(start, self._start) - self._start, min(end, self.end) - self._start
        return self._buf[a:b].copy() if b > a else np.zeros(0, np.float32)


class VadSegmenter:
    """One stream's speech segmenter: feed audio, get onsets and ends of turns.

    Not thread-safe: one stream, one caller (a session's receive loop). Cost is one Silero window
    per 32 ms of audio plus a few numpy copies.
    """

    def __init__(self, settings: VadSettings | None = None, *, model: SileroVad | None = None) -> None:
        """Make a segmenter.

        Args:
            settings: Thresholds; the defaults when None.
            model: The Silero session to use; `SileroVad.shared(...)` of the settings' model when None.
        """
        self.settings = settings or VadSettings()
        self._model = model or SileroVad.shared(self.settings.model_path, self.settings.onnx_threads)
        s = self.settings
        self._min_speech = _samples(s.min_speech_ms)
        self._end_silence = _samples(s.end_silence_ms)
        self._pre_roll = _samples(s.pre_roll_ms)
        self._post_roll = _samples(s.post_roll_ms)
        self._max_turn = round(s.max_turn_s * SAMPLE_RATE)
        self._speech_below = s.silence_below
        self.reset()

    def reset(self) -> None:
        """Forget the stream: state, audio and turn count (stream time starts again at 0)."""
        self._h = np.zeros(STATE_SHAPE, np.float32)
        self._c = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._pending = np.zeros(0, np.float32)  # samples not yet a whole window
        self._audio = _TurnAudio()
        self._scored = 0  # absolute samples scored so far (whole windows)
        self._turns = 0
        self._candidate: int | None = None  # start of speech not yet long enough for an onset
        self._speech_start: int | None = None  # start of the current turn's speech (after onset)
        self._speech_end = 0  # end of the last speech window of the current turn
        self._silence_from: int | None = None  # start of the silence run inside a turn

    @property
    def in_turn(self) -> bool:
        """True between a `SpeechOnset` and its `TurnEnd`."""
        return self._speech_start is not None

    @property
    def time_s(self) -> float:
        """Seconds of audio fed so far."""
        return self._audio.end / SAMPLE_RATE

    def turn_audio(self) -> np.ndarray | None:
        """The current turn's audio so far, pre-roll included (for partial transcripts); None outside a turn."""
        if self._speech_start is None:
            return None
        return self._audio.read(self._speech_start - self._pre_roll, self._audio.end)

    @property
    def trailing_silence_s(self) -> float:
        """Seconds of silence since the current turn's speech paused; 0 while it goes on or outside a turn."""
        if self._speech_start is None or self._silence_from is None:
            return 0.0
        return (self._scored - self._silence_from) / SAMPLE_RATE

    def audio_if_turn_ends(self) -> tuple[float, np.ndarray] | None:
        """What `TurnEnd.pcm` will be if the pause going on now ends the turn, with the `end_s` it
        will carry (so an early transcript of it can be matched to the turn); None outside a pause
        longer than the post-roll.
        """
        if self._speech_start is None or self._silence_from is None:
            return None
        end = self._speech_end + self._post_roll
        if end > self._audio.end:
            return None
        return _s(self._speech_end), self._audio.read(self._speech_start - self._pre_roll, end)

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Take the next piece of the stream; return the events it completed, in order.

        Args:
            pcm: 16 kHz mono float32 samples, any length (a 20 ms packet is 320); NaN and
                infinities are read as silence and full scale.

        Raises:
            ValueError: `pcm` is not a 1-D float array.
        """
        pcm = np.asarray(pcm)
        if pcm.ndim != 1 or pcm.dtype.kind != "f":
            raise ValueError(f"pcm must be 1-D float samples at 16 kHz, got {pcm.dtype} {pcm.shape}")
        pcm = pcm.astype(np.float32, copy=False)
        if not np.isfinite(pcm).all():  # one NaN would poison the LSTM state for the rest of the stream
            pcm = np.nan_to_num(pcm, nan=0.0, posinf=1.0, neginf=-1.0)
        self._audio.append(pcm)
        self._pending = np.concatenate([self._pending, pcm])  # a copy: the caller may reuse its buffer
        n = self._pending.size // WINDOW_SAMPLES
        if n == 0:
            return []
        frames = self._pending[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)
        self._pending = self._pending[n * WINDOW_SAMPLES :].copy()
        contexts = np.concatenate([self._context[None], frames[:-1, -CONTEXT_SAMPLES:]])
        windows = np.ascontiguousarray(np.concatenate([contexts, frames], axis=1))
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._h, self._c = self._model.probabilities(windows, self._h, self._c)
        events: list[VadEvent] = []
        for p in probs:
            start = self._scored
            self._scored += WINDOW_SAMPLES
            event = self._step(float(p), start, self._scored)
            if event is not None:
                events.append(event)
        self._forget_old_audio()
        return events

    def _step(self, p: float, start: int, end: int) -> VadEvent | None:
        """Advance the state machine by one window [start, end) of probability `p`."""
        if self._speech_start is None:  # between turns: looking for an onset
            if p >= self.settings.threshold and self._candidate is None:
                self._candidate = start
            elif p < self._speech_below:
                self._candidate = None  # too short: a click, a cough
            if self._candidate is not None and end - self._candidate >= self._min_speech:
                self._speech_start, self._speech_end, self._silence_from = self._candidate, end, None
                self._candidate = None
                self._turns += 1
                return SpeechOnset(self._turns, _s(self._speech_start), _s(end))
            return None
        if p >= self.settings.threshold:
            self._speech_end, self._silence_from = end, None
        elif p < self._speech_below and self._silence_from is None:
            self._silence_from = start
        elif self._silence_from is None:
            self._speech_end = end  # in between: speech goes on (hysteresis)
        if self._silence_from is not None and end - self._silence_from >= self._end_silence:
            return self._end_turn(end, forced=False)
        if end - self._speech_start >= self._max_turn:
            return self._end_turn(end, forced=True)
        return None

    def _end_turn(self, at: int, *, forced: bool) -> TurnEnd:
        start, end = self._speech_start, self._speech_end
        assert start is not None
        pcm = self._audio.read(start - self._pre_roll, min(end + self._post_roll, at))
        self._speech_start, self._silence_from = None, None
        return TurnEnd(self._turns, _s(start), _s(end), _s(at), pcm, forced)

    def _forget_old_audio(self) -> None:
        """Keep only what a turn may still need: all of a turn, else the pre-roll of a candidate."""
        if self._speech_start is not None:
            keep_from = self._speech_start - self._pre_roll
        else:
            keep_from = min(self._candidate if self._candidate is not None else self._scored,
                            self._scored) - self._pre_roll
        self._audio.drop_before(keep_from)


def _samples(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


def _s(samples: int) -> float:
    return samples / SAMPLE_RATE
