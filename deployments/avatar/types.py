"""Typed request/response of the AvatarRenderer deployment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RenderRequest:
    """One session's chunk: K frames of one avatar.

    `frame_indices` index the avatar's frames (face crops); `features` holds one
    per-frame audio feature window per frame, (K, 80, 16) float32 Wav2Lip mel windows.
    """

    avatar_id: str
    frame_indices: tuple[int, ...]
    features: np.ndarray


@dataclass(frozen=True)
class RenderResult:
    """The K rendered face crops, (K, S, S, 3) uint8 BGR, in request order."""

    crops: np.ndarray
