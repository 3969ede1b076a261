"""Reading published checkpoint layouts and loading them strictly, with errors that say what to do."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from deployments.common.errors import CheckpointError

WRAPPER_KEYS = ("state_dict", "model")  # Wav2Lip's save_checkpoint; Ultralight's head train.py
DATAPARALLEL_PREFIX = "module."
KEYS_SHOWN = 5


def read_state_dict(path: str | Path, *, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint in any of the published layouts, `module.` prefixes removed.

    Args:
        path: The checkpoint file.
        expected: What the user should put there (named in errors), e.g. "models/wav2lip.pth".
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (expected {expected}; see models/README.md)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (expected {expected}): {exc}") from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (expected {expected})")
    return {k.removeprefix(DATAPARALLEL_PREFIX): v for k, v in obj.items()}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, expected: str,
                rename: Callable[[str], str] | None = None) -> None:
    """`load_state_dict(strict=True)` with an error naming the first missing/unexpected keys."""
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, first {missing[:KEYS_SHOWN]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, first {unexpected[:KEYS_SHOWN]}")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes, first {wrong[:KEYS_SHOWN]}")
        raise CheckpointError(f"{source} does not fit this network (expected {expected}): " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
