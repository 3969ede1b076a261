"""The lip-sync engine contract, the weight-free engine, and `make_engine` over the model registry.

An engine turns a batch of an avatar's per-frame inputs (its face crops; MuseTalk: the crops'
VAE latents, `frame_inputs`) and one audio feature window per frame into new face crops.
Engines are pure (inputs are never written) and batch-invariant: rendering B frames at once
gives what rendering them one by one gives. They import nothing from Ray, so every
engine is unit-tested without Serve; `AvatarRenderer` only picks one with `make_engine`, which
reads `deployments.common.models` (the one registry of models and their needs).

    engine = make_engine("wav2lip256", face_size=256, checkpoint="models/wav2lip.pth", device="cuda")
    out = engine.render(crops, features)    # (B, S, S, 3) uint8 BGR in, same out

The network engines (torch) are imported only when asked for, so the weight-free default keeps
a replica free of torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from deployments.avatar.assets import DEFAULT_MOUTH_BOX, Avatar
from deployments.avatar.parametric import ParametricLipSync
from deployments.common.features import FEATURE_SHAPES, FeatureKind
from deployments.common.models import lipsync_model
from deployments.common.registry import import_path


class LipSyncEngine(ABC):
    """Renders (B, S, S, 3) uint8 BGR face crops from (B, *feature_shape) audio features.

    Attributes:
        model: Its name in the model registry, which says which features it reads.
        face_size: Side S of the avatar's crops (inputs and outputs).
    """

    model: str
    face_size: int

    @property
    def feature_kind(self) -> FeatureKind:
        """The audio features it needs per frame: "mel", "hubert" or "whisper" (the registry's)."""
        return lipsync_model(self.model).feature_kind  # type: ignore[return-value]  # served models' kinds

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one frame's feature window, e.g. (80, 16) for "mel"."""
        return FEATURE_SHAPES[self.feature_kind]

    @property
    def frame_input_spec(self) -> tuple[tuple[int, ...], type]:
        """Shape and dtype of one frame's input: an (S, S, 3) uint8 BGR face crop."""
        return (self.face_size, self.face_size, 3), np.uint8

    def frame_inputs(self, avatar: Avatar) -> np.ndarray:
        """The avatar's per-frame inputs, indexed like its frames: its face crops."""
        return avatar.face_crops

    @abstractmethod
    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Render a batch of frame inputs; returns a new (B, S, S, 3) uint8 BGR array in input order."""

    def check_batch(self, crops: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inputs as (B, *frame_input_shape) and (B, *feature_shape) float32 arrays.

        Raises:
            ValueError: Wrong shape or dtype, or a different batch size for crops and features.
        """
        shape, dtype = self.frame_input_spec
        crops, features = np.asarray(crops), np.asarray(features, dtype=np.float32)
        if crops.shape[1:] != shape or crops.dtype != dtype:
            raise ValueError(f"frame inputs must be (B, {', '.join(map(str, shape))}) {np.dtype(dtype)}, "
                             f"not {crops.dtype} {crops.shape}")
        if features.shape[1:] != self.feature_shape or len(features) != len(crops):
            want = (len(crops), *self.feature_shape)
            raise ValueError(f"{self.feature_kind} features must be {want}, got {features.shape}")
        return crops, features


class ParametricEngine(LipSyncEngine):
    """The weight-free default (`ParametricLipSync`) behind the engine contract.

    Args:
        face_size: Side S of the crops.
        mouth_box: The lips' box (x, y, w, h) as fractions of the crop.
    """

    model = "parametric"

    def __init__(self, face_size: int,
                 mouth_box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX) -> None:
        self.face_size = int(face_size)
        self.renderer = ParametricLipSync(self.face_size, mouth_box)

    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """See `LipSyncEngine.render` (validated, then `ParametricLipSync.render`)."""
        return self.renderer.render(*self.check_batch(crops, features))


def make_engine(
    model: str,
    *,
    face_size: int,
    mouth_box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX,
    checkpoint: str | None = None,
    device: str = "cpu",
    fp16: bool = False,
) -> LipSyncEngine:
    """Build the engine for `model`.

    Args:
        model: A name (or alias) in `deployments.common.models.LIPSYNC_MODELS`.
        face_size: Side S of the avatar's crops; networks resize to their own size and back.
        mouth_box: The lips' box (x, y, w, h) in crop fractions (parametric only).
        checkpoint: The network's weights file (ignored by "parametric").
        device: Torch device of a network, e.g. "cpu", "cuda" or "cuda:0".
        fp16: Run a network in half precision on CUDA (ignored elsewhere).

    Raises:
        ValueError: Unknown model.
        CheckpointError: A network without a checkpoint, or one that is missing or does not fit.
    """
    spec = lipsync_model(model)
    cls = import_path(spec.engine)
    if not spec.needs_torch:
        return cls(face_size, mouth_box)  # type: ignore[no-any-return]
    return cls(spec.name, checkpoint=checkpoint, face_size=face_size, device=device, fp16=fp16)  # type: ignore[no-any-return]
