"""What the transformers-based feature engines share: input checks and offline loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deployments.common.errors import CheckpointError
from deployments.common.features import check_finite, check_pcm_array


def check_audio(pcm: object, *, min_samples: int, max_samples: int, limit: str) -> np.ndarray:
    """`pcm` as float32 (no copy if it already is), or ValueError saying what is wrong."""
    pcm = check_pcm_array(pcm)
    if not max(min_samples, 1) <= pcm.size <= max_samples:
        raise ValueError(f"pcm must hold {max(min_samples, 1)} to {max_samples} samples ({limit}), got {pcm.size}")
    check_finite(pcm)
    return pcm.astype(np.float32, copy=False)


def load_pretrained(model_dir: str | Path, *, what: str, default_dir: str, repo: str,
                    extractor_cls: Any, model_cls: Any) -> tuple[Any, Any]:
    """(feature extractor, model) from a local HF folder; nothing is downloaded.

    Raises:
        CheckpointError: The folder is missing or does not load, naming what belongs there.
    """
    path = Path(model_dir)
    expected = f"{default_dir}/ with the files of HF repo {repo}"
    if not path.is_dir():
        raise CheckpointError(f"{what} model folder not found: {path} (expected {expected}; see models/README.md)")
    try:
        return (extractor_cls.from_pretrained(path, local_files_only=True),
                model_cls.from_pretrained(path, local_files_only=True))
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad folder
        raise CheckpointError(f"cannot load {what} from {path} (expected {expected}): {exc}") from exc
