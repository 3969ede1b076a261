"""`SpeechRecognizer`: the Serve deployment around the Whisper recogniser (Serve concerns only).

SessionHost segments each microphone with `deployments.asr.vad.VadSegmenter` and sends speech
here: `transcribe.remote(pcm, final=False, session_id=sid)` with the turn so far while the user
talks (partials), `transcribe.remote(turn.pcm, session_id=sid)` at the end of the turn. The answer
is `{"text", "seconds", "audio_s", "final", "superseded"}` (see `recognizer.Transcript`).

Whisper runs on `num_workers` threads (CTranslate2 replicas of the model state over shared
weights), never on the event loop, so sessions are served side by side. No `@serve.batch`: on
this CPU the encoder of a batch of 2 costs 2x a batch of 1 (269 vs 550 ms), so batching would only
add the wait. A partial that a newer request of its session supersedes before it started answers
at once with `superseded: True`; finals always go first.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from ray import serve

from deployments.asr.recognizer import RecognizerSettings, TranscriptionScheduler, WhisperRecognizer
from deployments.common.errors import EngineError
from deployments.common.logs import adopt_serve_logging

logger = logging.getLogger(__name__)


# num_cpus 0 like every replica here: Whisper runs in bursts (one per turn). Many ongoing
# requests: the scheduler queues them itself, and only a queue it holds can drop stale partials.
# Probed every second, as TTSService: a dead replica is replaced before the next turn ends.
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64,
                  health_check_period_s=1, health_check_timeout_s=5)
class SpeechRecognizer:
    """Transcribes turns and partial turns of many sessions with faster-whisper."""

    def __init__(self, recognizer_options: dict[str, Any] | None = None) -> None:
        """Load Whisper; a bad option or a missing model fails `serve.run` at once.

        Args:
            recognizer_options: Fields of `deployments.asr.recognizer.RecognizerSettings`
                (`model_dir`, `language`, `compute_type`, `beam_size`, `cpu_threads`, `num_workers`).
        """
        adopt_serve_logging()
        settings = RecognizerSettings(**(recognizer_options or {}))
        self._recognizer = WhisperRecognizer(settings)
        self._scheduler = TranscriptionScheduler(self._recognizer.transcribe, workers=settings.num_workers)
        self._closed = False

    async def transcribe(self, pcm: np.ndarray, final: bool = True, session_id: str = "") -> dict[str, Any]:
        """The text of 16 kHz float32 speech (at most 30 s).

        Args:
            pcm: The turn (final) or the turn so far (partial).
            final: False for a partial: a newer request of `session_id` supersedes it if it has
                not started yet.
            session_id: The caller's session (names it in the logs, groups its partials).

        Returns:
            `{"text": str, "seconds": float, "audio_s": float, "final": bool, "superseded": bool}`;
            `seconds` is the time spent here, queueing included.

        Raises:
            BadRequest: `pcm` is not a 1-D float array, is empty, longer than 30 s or not finite.
            EngineError: Whisper failed, or the replica is shutting down.
        """
        if self._closed:
            raise EngineError("the speech recognizer is shutting down", retryable=True)
        try:
            result = await self._scheduler.submit(pcm, final=final, session_id=session_id)
        except asyncio.CancelledError:
            logger.debug("session %s: %s transcription cancelled", session_id or "-",
                         "final" if final else "partial")
            raise
        if final:
            logger.info("session %s: %.2f s of speech transcribed in %.2f s", session_id or "-",
                        result.audio_s, result.seconds)
        return asdict(result)

    async def stats(self) -> dict[str, Any]:
        """Counters (finals, partials, superseded, cancelled, failed) and the load right now."""
        return {**self._scheduler.counts, "queued": self._scheduler.queued, "busy": self._scheduler.busy,
                "workers": self._scheduler.workers}

    async def check_health(self) -> None:
        """Serve's health probe: fails once the replica is shutting down."""
        if self._closed:
            raise EngineError("the speech recognizer is shut down")

    async def __del__(self) -> None:
        """Serve calls this once on replica shutdown (it awaits an `async def __del__`)."""
        self._closed = True
        if hasattr(self, "_scheduler"):  # the constructor may have failed
            self._scheduler.shutdown()
