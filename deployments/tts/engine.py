"""The TTS engine interface and the registry that builds an engine from its config name.

Engines are pure Python (no Ray): `deployment.TTSService` wraps whichever one the config names.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from deployments.common.registry import LazyRegistry
from deployments.common.timing import SAMPLE_RATE
from deployments.tts.splitter import split_text

# Imported only when chosen, so choosing one engine never imports the other's dependencies.
# LiveTalking's `--tts edgetts` is accepted as an alias.
ENGINES: LazyRegistry = LazyRegistry("tts engine", {
    "piper": "deployments.tts.piper_engine:PiperEngine",
    "edge": "deployments.tts.edge_engine:EdgeTTSEngine",
}, aliases={"edgetts": "edge"})

__all__ = ["ENGINES", "TTSEngine", "make_engine"]


class TTSEngine(abc.ABC):
    """Text in, speech out: 16 kHz mono float32 pieces, the first one as early as possible."""

    sample_rate: int = SAMPLE_RATE

    @abc.abstractmethod
    def stream(self, text: str) -> AsyncIterator[np.ndarray]:
        """Synthesise `text`, yielding float32 16 kHz mono arrays in [-1, 1] as they are ready.

        Implemented as an async generator (`async def` with `yield`). Closing it or cancelling the
        task that iterates it stops further synthesis.

        Args:
            text: The text to speak; blank text yields nothing.

        Raises:
            EngineError: The backend failed (`retryable` says whether trying again may help).
        """

    def pieces(self, text: str) -> list[str]:
        """The pieces `stream(text)` would voice one by one (the first one short)."""
        return split_text(text)

    async def synthesize(self, piece: str) -> np.ndarray:
        """Speech for one piece of `pieces(text)`, whole (float32 16 kHz mono; empty if silent).

        Callers that pace themselves ask piece by piece. This default joins what `stream` yields;
        engines that voice a piece in one call override it.
        """
        audio = [pcm async for pcm in self.stream(piece)]
        return np.concatenate(audio) if audio else np.zeros(0, np.float32)

    async def aclose(self) -> None:  # noqa: B027 (engines without resources need nothing)
        """Release the engine's resources; idempotent."""


def make_engine(name: str, options: dict[str, Any] | None = None) -> TTSEngine:
    """Build the engine registered as `name` with keyword `options`.

    Args:
        name: A name or alias in `ENGINES` ("piper", "edge" / "edgetts").
        options: Keyword arguments of the engine's constructor.

    Returns:
        The constructed engine (models loaded: construction fails fast).

    Raises:
        ValueError: Unknown name, or options the engine does not accept.
    """
    cls = ENGINES.load(name)  # ValueError listing the engines for an unknown name
    options = dict(options or {})
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise ValueError(f"bad options for tts engine {name!r}: {e}") from e
    engine: TTSEngine = cls(**options)
    return engine
