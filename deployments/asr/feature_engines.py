"""One interface over the per-frame feature extractors, selected by the lip-sync model's kind.

    mel      Wav2Lip mel windows (80, 16)          parametric, wav2lip96, wav2lip256
    hubert   Ultralight HuBERT windows (16, 32, 32) ultralight_hubert
    whisper  MuseTalk audio prompts (50, 384)       musetalk

All take LEFT_CONTEXT_SAMPLES + n_frames * 640 + RIGHT_CONTEXT_SAMPLES of 16 kHz audio
(200 ms each side, LiveTalking's l = r = 10 chunks): the right context is look-ahead, and so
latency, every model pays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from deployments.asr.features import check_pcm, mel_frame_windows

FEATURE_KINDS = ("mel", "hubert", "whisper")
# Where LiveTalking keeps the feature networks (models/README.md), relative to the repo.
DEFAULT_MODEL_DIRS = {"hubert": "models/hubert-large-ls960-ft", "whisper": "models/whisper"}


class FeatureEngine(Protocol):
    """What AudioFeatures needs of an extractor."""

    def check(self, pcm: np.ndarray, n_frames: int) -> None: ...

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]: ...


class MelEngine:
    """Wav2Lip mel windows; numpy, no weights."""

    def check(self, pcm: np.ndarray, n_frames: int) -> None:
        check_pcm(pcm, n_frames)

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        # A numpy batch over equal lengths measured slower than this loop (cache-bound STFT).
        return [mel_frame_windows(pcm, n) for pcm, n in zip(pcms, n_frames, strict=True)]


class _NetworkEngine:
    """Adapts a transformers-based engine: one forward pass per batch."""

    def __init__(self, engine: object, batch_method: str) -> None:
        self._batch = getattr(engine, batch_method)

    def check(self, pcm: np.ndarray, n_frames: int) -> None:
        check_pcm(pcm, n_frames)  # same buffer layout as mel; the engine re-checks in batch()

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        return self._batch(pcms, n_frames)


def make_feature_engine(kind: str, model_dir: str | None = None, device: str = "cpu") -> FeatureEngine:
    """The extractor for `kind`; network kinds load their local model folder (or fail clearly)."""
    if kind == "mel":
        return MelEngine()
    if kind == "hubert":
        from deployments.asr.hubert_features import HubertFeatureEngine

        hubert = HubertFeatureEngine(model_dir or DEFAULT_MODEL_DIRS["hubert"], device=device)
        return _NetworkEngine(hubert, "frame_windows_batch")
    if kind == "whisper":
        from deployments.asr.whisper_features import WhisperFeatureEngine

        whisper = WhisperFeatureEngine(model_dir or DEFAULT_MODEL_DIRS["whisper"], device=device)
        return _NetworkEngine(whisper, "frame_prompts_batch")
    raise ValueError(f"unknown feature kind {kind!r}: choose one of {', '.join(FEATURE_KINDS)}")
