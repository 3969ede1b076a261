"""The per-frame audio feature contract every stage agrees on: kinds, shapes, the PCM window.

A lip-sync model reads one feature window per 25 fps video frame, computed from 16 kHz audio:

    kind     window per frame    what                                    models
    mel      (80, 16)            Wav2Lip mel, 200 ms                     parametric, wav2lip96/256
    hubert   (16, 32, 32)        8 frames x 2 x 1024 HuBERT-large rows   ultralight_hubert
    whisper  (50, 384)           10 whisper-tiny rows x 5 hidden states  musetalk

Every extractor takes the same buffer for a chunk of `n` frames: `LEFT_CONTEXT_SAMPLES` of past
audio, the frames' own `n * 640` samples, then `RIGHT_CONTEXT_SAMPLES` of look-ahead (200 ms
each side: LiveTalking's l = r = 10 chunks of 20 ms). The look-ahead is latency every model pays.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Literal, Protocol

import numpy as np

from deployments.common.timing import AUDIO_CHUNK_SAMPLES, SAMPLES_PER_FRAME

FeatureKind = Literal["mel", "hubert", "whisper"]
FEATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "mel": (80, 16),  # 80 mel bins x 16 columns (200 ms at 80 columns/s)
    "hubert": (16, 32, 32),  # 16 rows of 20 ms x 1024 values, reshaped 32 x 32 by Ultralight
    "whisper": (50, 384),  # 10 encoder rows x 5 hidden states, 384 wide
}
FEATURE_KINDS: tuple[str, ...] = tuple(FEATURE_SHAPES)

LEFT_CONTEXT_CHUNKS = 10  # LiveTalking `l`: 200 ms of past audio before the first frame
RIGHT_CONTEXT_CHUNKS = 10  # LiveTalking `r`: 200 ms of look-ahead, paid as latency
LEFT_CONTEXT_SAMPLES = LEFT_CONTEXT_CHUNKS * AUDIO_CHUNK_SAMPLES  # 3200
RIGHT_CONTEXT_SAMPLES = RIGHT_CONTEXT_CHUNKS * AUDIO_CHUNK_SAMPLES  # 3200


def pcm_samples_for(n_frames: int) -> int:
    """Samples of the buffer for `n_frames` video frames: left context + frames + right context."""
    return LEFT_CONTEXT_SAMPLES + n_frames * SAMPLES_PER_FRAME + RIGHT_CONTEXT_SAMPLES


def check_n_frames(n_frames: object) -> int:
    """`n_frames` as an int, or ValueError unless it is a positive integer."""
    if not isinstance(n_frames, Integral) or isinstance(n_frames, bool) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    return int(n_frames)


def check_pcm_array(pcm: object) -> np.ndarray:
    """`pcm` itself if it is a 1-D floating numpy array, or ValueError saying what it is."""
    if not isinstance(pcm, np.ndarray):
        raise ValueError(f"pcm must be a numpy array, got {type(pcm).__name__}")
    if pcm.ndim != 1 or not np.issubdtype(pcm.dtype, np.floating):
        raise ValueError(f"pcm must be a 1-D float array of 16 kHz samples, got {pcm.dtype} {pcm.shape}")
    return pcm


def check_finite(pcm: np.ndarray) -> None:
    """ValueError if `pcm` holds NaN or infinite samples."""
    if not np.isfinite(pcm).all():
        raise ValueError("pcm contains NaN or infinite samples")


def check_pcm(pcm: object, n_frames: object) -> np.ndarray:
    """Validate one chunk's buffer without computing anything; returns it as float32 (no copy if it is).

    Raises:
        ValueError: `n_frames` is not a positive integer, or `pcm` is not a finite 1-D floating
            array of exactly `pcm_samples_for(n_frames)` samples.
    """
    n = check_n_frames(n_frames)
    pcm = check_pcm_array(pcm)
    if pcm.shape[0] != (expected := pcm_samples_for(n)):
        raise ValueError(
            f"pcm for {n} frames must hold {LEFT_CONTEXT_SAMPLES} + {n} * {SAMPLES_PER_FRAME} + "
            f"{RIGHT_CONTEXT_SAMPLES} = {expected} samples (left context, frames, right context), "
            f"got {pcm.shape[0]}")
    check_finite(pcm)
    return pcm.astype(np.float32, copy=False)


def check_pcm_batch(pcms: Sequence[object], n_frames: Sequence[object]) -> list[np.ndarray]:
    """`check_pcm` for each request of a batch; float32 buffers out."""
    if len(pcms) != len(n_frames):
        raise ValueError(f"got {len(pcms)} pcm buffers for {len(n_frames)} frame counts")
    return [check_pcm(pcm, n) for pcm, n in zip(pcms, n_frames, strict=True)]


class FeatureEngine(Protocol):
    """An extractor of one kind: one window per frame for each buffer of a batch.

    `batch` validates its input (`check_pcm_batch`) and returns, per request, a float32
    `(n_frames, *FEATURE_SHAPES[kind])` array; batched results equal unbatched ones.
    """

    kind: FeatureKind

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]: ...
