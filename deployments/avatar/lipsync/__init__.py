"""Lip-sync engines behind one contract: `make_engine(model, ...)` -> `LipSyncEngine`.

    parametric          weight-free mouth warp, mel windows (B, 80, 16)
    wav2lip96/256       Wav2Lip, mel windows (B, 80, 16)
    ultralight_hubert   Ultralight-Digital-Human, HuBERT windows (B, 16, 32, 32)
    musetalk            MuseTalk v1.5 on the avatar's VAE latents, whisper prompts (B, 50, 384)

Which engine serves which model is `deployments.common.models`; the torch engines (and torch
itself) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from deployments.avatar.lipsync.base import LipSyncEngine, ParametricEngine, make_engine

_LAZY = {
    "TorchLipSyncEngine": "_torch",
    "limit_gpu_memory": "_torch",
    "Wav2LipEngine": "wav2lip",
    "UltralightEngine": "ultralight",
    "MuseTalkEngine": "musetalk",
}

__all__ = [  # the torch engines and limit_gpu_memory load on first use (__getattr__)
    "LipSyncEngine",
    "MuseTalkEngine",
    "ParametricEngine",
    "TorchLipSyncEngine",
    "UltralightEngine",
    "Wav2LipEngine",
    "limit_gpu_memory",
    "make_engine",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # keeps `import deployments.avatar.lipsync` free of torch
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
