"""The real lip-sync networks, loading the real published checkpoint layouts.

    model = load_model("wav2lip256", "models/wav2lip.pth")
    out = model(audio, face)          # the inputs in the upstream order (parity kit json)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from deployments.avatar.models._checkpoint import CheckpointError, load_strict, read_state_dict

__all__ = ["MODEL_NAMES", "CheckpointError", "load_model"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one network and where its checkpoint's keys land."""

    module: str  # deployments.avatar.models.<module>
    factory: str  # a callable in it returning the nn.Module
    expected_file: str  # named in errors and models/README.md
    args: tuple = ()


SPECS: dict[str, ModelSpec] = {
    "wav2lip96": ModelSpec("wav2lip", "Wav2Lip96", "models/wav2lip.pth (Rudrabha wav2lip.pth or wav2lip_gan.pth)"),
    "wav2lip256": ModelSpec("wav2lip", "Wav2Lip256", "models/wav2lip.pth (LiveTalking's wav2lip256.pth, renamed)"),
    "ultralight_hubert": ModelSpec("ultralight", "Ultralight", "data/avatars/<id>/ultralight.pth", ("hubert",)),
    "ultralight_wenet": ModelSpec("ultralight", "Ultralight", "data/avatars/<id>/ultralight.pth", ("wenet",)),
    "musetalk": ModelSpec("musetalk", "MuseTalkUNet", "models/musetalkV15/unet.pth (with musetalk.json)"),
}
MODEL_NAMES = tuple(SPECS)


def build_model(name: str) -> nn.Module:
    """The network with its default (untrained) weights."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    spec = SPECS[name]
    factory: Callable[..., nn.Module] = getattr(importlib.import_module(f"{__name__}.{spec.module}"), spec.factory)
    return factory(*spec.args)


def load_model(name: str, checkpoint_path: str | Path, device: str = "cpu") -> nn.Module:
    """Build `name`, load its checkpoint strictly (any published layout), eval mode, on `device`."""
    model = build_model(name)
    expected = SPECS[name].expected_file
    state = read_state_dict(checkpoint_path, expected=expected)
    # Each network decides which of its submodules the checkpoint addresses and how old key
    # names map to current ones (e.g. Ultralight's legacy names, MuseTalk's bare UNet keys).
    target = getattr(model, "checkpoint_target", lambda: model)()
    rename = getattr(model, "checkpoint_key", None)
    load_strict(target, state, source=str(checkpoint_path), expected=expected, rename=rename)
    return model.eval().to(device)
