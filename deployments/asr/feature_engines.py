"""The per-frame feature extractors behind one contract (`common.features.FeatureEngine`).

    engine = make_feature_engine("hubert", device="cuda")     # registry: common.models.FEATURE_MODELS
    windows = engine.batch(pcms, n_frames)                    # one (n, *FEATURE_SHAPES[kind]) per buffer

`mel` is numpy (no weights); `hubert` and `whisper` load a local pretrained folder (torch and
transformers are imported only then).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deployments.asr.mel_stream import mel_frame_windows
from deployments.common.features import FeatureEngine, FeatureKind
from deployments.common.models import FEATURE_MODELS
from deployments.common.registry import import_path


class MelEngine:
    """Wav2Lip mel windows; numpy, no weights (~0.1 ms a frame)."""

    kind: FeatureKind = "mel"

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        """One (n, 80, 16) float32 array per buffer (each validated by `mel_frame_windows`)."""
        if len(pcms) != len(n_frames):
            raise ValueError(f"got {len(pcms)} pcm buffers for {len(n_frames)} frame counts")
        # A numpy batch over equal lengths measured slower than this loop (cache-bound STFT).
        return [mel_frame_windows(pcm, n) for pcm, n in zip(pcms, n_frames, strict=True)]


def make_feature_engine(kind: str, model_dir: str | None = None, device: str = "cpu") -> FeatureEngine:
    """The extractor of `kind`; a network kind loads `model_dir` (default: the registry's folder).

    Raises:
        ValueError: Unknown kind.
        CheckpointError: A network's folder is missing or does not load.
    """
    spec = FEATURE_MODELS.get(kind)
    cls = import_path(spec.engine)
    if spec.model_dir is None:
        return cls()  # type: ignore[no-any-return]
    return cls(model_dir or spec.model_dir, device=device)  # type: ignore[no-any-return]
