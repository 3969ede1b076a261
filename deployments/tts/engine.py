"""The TTS engine interface and the registry that builds an engine from its config name.

Engines are pure Python (no Ray): `deployment.TTSService` wraps whichever one the config names.
"""

from __future__ import annotations

import abc
import importlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from deployments.common.timing import SAMPLE_RATE

# name -> "module:Class"; imported lazily so that choosing one engine never imports the other
ENGINES: dict[str, str] = {
    "piper": "deployments.tts.piper_engine:PiperEngine",
    "edge": "deployments.tts.edge_engine:EdgeTTSEngine",
}

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

    async def aclose(self) -> None:  # noqa: B027 (engines without resources need nothing)
        """Release the engine's resources; idempotent."""


def make_engine(name: str, options: dict[str, Any] | None = None) -> TTSEngine:
    """Build the engine registered as `name` with keyword `options`.

    Args:
        name: One of `ENGINES` ("piper", "edge").
        options: Keyword arguments of the engine's constructor.

    Returns:
        The constructed engine (models loaded: construction fails fast).

    Raises:
        ValueError: Unknown name, or options the engine does not accept.
    """
    if name not in ENGINES:
        valid = ", ".join(repr(n) for n in ENGINES)
        raise ValueError(f"unknown tts engine {name!r}: choose one of {valid}")
    module_name, class_name = ENGINES[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options = dict(options or {})
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise ValueError(f"bad options for tts engine {name!r}: {e}") from e
    engine: TTSEngine = cls(**options)
    return engine
