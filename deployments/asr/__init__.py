"""Audio features for lip sync: Wav2Lip mel spectrogram and LiveTalking per-frame windows.

The engines (``mel``, ``features``) import nothing from Ray; ``AudioFeatures`` (the Serve
deployment) is loaded lazily so that importing this package does not import Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deployments.asr.features import (
    LEFT_CONTEXT_SAMPLES,
    RIGHT_CONTEXT_SAMPLES,
    StreamingMelASR,
    mel_frame_windows,
)
from deployments.asr.mel import melspectrogram

if TYPE_CHECKING:
    from deployments.asr.deployment import AudioFeatures

__all__ = [
    "LEFT_CONTEXT_SAMPLES",
    "RIGHT_CONTEXT_SAMPLES",
    "AudioFeatures",
    "StreamingMelASR",
    "mel_frame_windows",
    "melspectrogram",
]


def __getattr__(name: str) -> Any:
    """Import the Serve deployment on first use only (it pulls in Ray)."""
    if name == "AudioFeatures":
        from deployments.asr.deployment import AudioFeatures

        return AudioFeatures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
