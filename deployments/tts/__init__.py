"""Text-to-speech: engines (Piper offline, edge-tts online), text splitting, the Serve deployment.

`deployment.TTSService` is not imported here, so the engines can be used without Ray.
"""

from __future__ import annotations

from deployments.tts.engine import ENGINES, TTSEngine, make_engine
from deployments.tts.splitter import split_text

__all__ = ["ENGINES", "TTSEngine", "make_engine", "split_text"]
