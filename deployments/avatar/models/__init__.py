"""The real lip-sync networks, loading the real published checkpoint layouts.

model = load_model("wav2lip256", "models/wav2lip.pth")
out = model(audio, face)          # the inputs in the upstream order (parity kit json)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from deployments.avatar.models._checkpoint import load_strict, read_state_dict
from deployments.common.errors import CheckpointError
from deployments.common.models import LIPSYNC_MODELS, lipsync_model
from deployments.common.registry import import_path

__all__ = ["NETWORK_MODELS", "CheckpointError", "build_model", "load_model"]

# The registry's models that are networks (all but the weight-free parametric one).
NETWORK_MODELS = tuple(n for n in LIPSYNC_MODELS.names if lipsync_model(n).needs_torch)


def build_model(name: str) -> nn.Module:
    """The network of model `name` (or its alias) with its default (untrained) weights."""
    spec = lipsync_model(name)
    if spec.network is None:
        raise ValueError(f"{spec.name!r} has no network: choose one of {', '.join(NETWORK_MODELS)}")
    factory: Callable[..., nn.Module] = import_path(spec.network)
    return factory(*spec.network_args)


def load_model(name: str, checkpoint_path: str | Path, device: str = "cpu") -> nn.Module:
    """Build `name`, load its checkpoint strictly (any published layout), eval mode, on `device`."""
    model = build_model(name)
    expected = lipsync_model(name).checkpoint_layout
    state = read_state_dict(checkpoint_path, expected=expected)
    # Each network decides which of its submodules the checkpoint addresses and how old key
    # names map to current ones (e.g. Ultralight's legacy names, MuseTalk's bare UNet keys).
    target = getattr(model, "checkpoint_target", lambda: model)()
    rename = getattr(model, "checkpoint_key", None)
    load_strict(target, state, source=str(checkpoint_path), expected=expected, rename=rename)
    return model.eval().to(device)
