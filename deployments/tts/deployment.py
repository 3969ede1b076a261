"""`TTSService`: the Serve deployment around a TTS engine (Serve concerns only).

SessionHost asks piece by piece: `begin.remote(text, session_id)` voices the first (short) piece
of the text and returns the other pieces, then `synthesize.remote(piece, session_id)` voices one
piece at a time, as float32 16 kHz mono (one round trip to first audio, as a stream had). Each call is
short, so sessions take turns here however much text one of them queued, and a caller paces its
own requests (a Serve stream has no back-pressure: its generator would run ahead of playback).
`stream(text)` still yields a whole text's pieces for callers that want everything at once.
A caller that is interrupted cancels its call; Serve then cancels the work here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from ray import serve

from deployments.common.errors import EngineError
from deployments.common.logs import adopt_serve_logging
from deployments.common.timing import SAMPLE_RATE
from deployments.tts.engine import make_engine

logger = logging.getLogger(__name__)


# num_cpus 0: synthesis is short bursts (RTF ~0.1); a whole reserved core would be idle.
# Probed every second (Serve's default is 10 s): a dead replica is replaced within ~1 s plus its
# start-up, so the next sentence is not queued behind a replica nobody has noticed is gone.
@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=1, health_check_timeout_s=5)
class TTSService:
    """Speaks text with the configured engine ("piper" offline, "edge" online)."""

    def __init__(self, engine: str = "piper", engine_options: dict[str, Any] | None = None) -> None:
        """Build the engine; a bad name, option or missing voice fails `serve.run` at once.

        Args:
            engine: A name registered in `deployments.tts.engine.ENGINES`.
            engine_options: Keyword arguments of that engine's constructor.
        """
        adopt_serve_logging()
        self._engine_name = engine
        self._engine = make_engine(engine, engine_options)
        self._closed = False

    async def stream(self, text: str) -> AsyncIterator[np.ndarray]:
        """Yield the speech for `text` as float32 16 kHz mono arrays, first piece early."""
        n_pieces = 0
        try:
            async for pcm in self._engine.stream(text):
                n_pieces += 1
                yield pcm
        except asyncio.CancelledError:
            # the caller was interrupted: the engine's generator is closed on the way out
            logger.info("tts stream cancelled after %d pieces", n_pieces)
            raise

    async def begin(self, text: str, session_id: str = "") -> tuple[np.ndarray, list[str]]:
        """The speech of `text`'s first piece, and its other pieces for `synthesize`, in order."""
        pieces = self._engine.pieces(text)
        if not pieces:
            return np.zeros(0, np.float32), []
        return await self.synthesize(pieces[0], session_id), pieces[1:]

    async def synthesize(self, piece: str, session_id: str = "") -> np.ndarray:
        """Speech for one piece; `session_id` names the caller in the logs."""
        try:
            return await self._engine.synthesize(piece)
        except asyncio.CancelledError:
            logger.info("session %s: tts piece cancelled", session_id or "-")
            raise

    async def sample_rate(self) -> int:
        """The sample rate of every array `stream` yields (16000)."""
        return SAMPLE_RATE

    async def check_health(self) -> None:
        """Serve's health probe: fails once the engine is closed."""
        if self._closed:
            raise EngineError(f"tts engine {self._engine_name!r} is closed")

    async def __del__(self) -> None:
        """Serve calls this once on replica shutdown (it awaits an `async def __del__`)."""
        self._closed = True
        if hasattr(self, "_engine"):  # the constructor may have failed
            await self._engine.aclose()
