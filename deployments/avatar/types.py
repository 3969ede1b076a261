"""Typed request/response of the AvatarRenderer deployment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RenderRequest:
    """One session's chunk: K frames of one avatar and the audio they speak.

    `frame_indices` index the avatar's frames (face crops). `pcm` is the chunk's 16 kHz float32
    speech with its context, laid out as `deployments.common.features` says (left context,
    K * 640 samples, right context): the renderer computes the features its model reads, so a
    speaking chunk is one round trip and no feature array crosses a process.
    """

    avatar_id: str
    frame_indices: tuple[int, ...]
    pcm: np.ndarray


@dataclass(frozen=True)
class RenderResult:
    """The K rendered face crops, (K, S, S, 3) uint8 BGR, in request order."""

    crops: np.ndarray
