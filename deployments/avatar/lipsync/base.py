"""The lip-sync engine contract and the model registry.

An engine turns a batch of an avatar's per-frame inputs (its face crops; MuseTalk: the crops'
VAE latents, `frame_inputs`) and one audio feature window per frame into new face crops. Engines are pure (inputs are never written) and batch-invariant: rendering B frames
at once gives what rendering them one by one gives. They import nothing from Ray, so every
engine is unit-tested without Serve; `AvatarRenderer` only picks one with `make_engine`.

    engine = make_engine("wav2lip256", face_size=256, checkpoint="models/wav2lip.pth", device="cuda")
    out = engine.render(crops, features)    # (B, S, S, 3) uint8 BGR in, same out

The network engines (torch) are imported only when asked for, so the weight-free default keeps
a replica free of torch.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deployments.avatar.assets import DEFAULT_MOUTH_BOX, Avatar
from deployments.avatar.parametric import MEL_STEPS, N_MELS, ParametricLipSync

FeatureKind = Literal["mel", "hubert", "whisper"]
# Per-frame feature window of each kind (README §4.3–4.5): a Wav2Lip mel window (80 bins x
# 200 ms); 8 video frames x 2 x 1024 HuBERT-large values; 10 whisper-tiny frames x 5 layers.
FEATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "mel": (N_MELS, MEL_STEPS),
    "hubert": (16, 32, 32),
    "whisper": (50, 384),
}


class LipSyncEngine(ABC):
    """Renders (B, S, S, 3) uint8 BGR face crops from (B, *feature_shape) audio features.

    Attributes:
        face_size: Side S of the avatar's crops (inputs and outputs).
        feature_kind: The audio features it needs per frame: "mel", "hubert" or "whisper".
    """

    face_size: int
    feature_kind: FeatureKind

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

    def warmup(self, batch_size: int = 1) -> None:
        """Render one dummy batch (first-call costs: allocator, kernel selection, page-in)."""
        shape, dtype = self.frame_input_spec
        self.render(np.zeros((batch_size, *shape), dtype),
                    np.zeros((batch_size, *self.feature_shape), np.float32))


class ParametricEngine(LipSyncEngine):
    """The weight-free default (`ParametricLipSync`) behind the engine contract.

    Args:
        face_size: Side S of the crops.
        mouth_box: The lips' box (x, y, w, h) as fractions of the crop.
    """

    feature_kind: FeatureKind = "mel"

    def __init__(self, face_size: int,
                 mouth_box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX) -> None:
        self.face_size = int(face_size)
        self.renderer = ParametricLipSync(self.face_size, mouth_box)

    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """See `LipSyncEngine.render` (validated, then `ParametricLipSync.render`)."""
        return self.renderer.render(*self.check_batch(crops, features))


@dataclass(frozen=True)
class EngineSpec:
    """One selectable model: its features, engine class and native crop size."""

    feature_kind: FeatureKind
    engine: str  # "<module in this package>:<class>"
    native_face_size: int | None  # avatars built at this size skip a resize; None: any size
    needs_latents: bool = False  # renders from the avatar's VAE latents (MuseTalk)


ENGINES: dict[str, EngineSpec] = {
    "parametric": EngineSpec("mel", "base:ParametricEngine", None),
    "wav2lip96": EngineSpec("mel", "wav2lip:Wav2LipEngine", 96),
    "wav2lip256": EngineSpec("mel", "wav2lip:Wav2LipEngine", 256),
    "ultralight_hubert": EngineSpec("hubert", "ultralight:UltralightEngine", 168),
    "musetalk": EngineSpec("whisper", "musetalk:MuseTalkEngine", 256, needs_latents=True),
}
MODELS = tuple(ENGINES)


def engine_spec(model: str) -> EngineSpec:
    """The registry entry of `model`.

    Raises:
        ValueError: Unknown model (the message lists the known ones).
    """
    if model not in ENGINES:
        raise ValueError(f"unknown lip-sync model {model!r}: choose one of {', '.join(MODELS)}")
    return ENGINES[model]


def feature_kind(model: str) -> FeatureKind:
    """The audio features `model` needs, without building it (for routing feature requests)."""
    return engine_spec(model).feature_kind


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
        model: One of `MODELS`.
        face_size: Side S of the avatar's crops; networks resize to their own size and back.
        mouth_box: The lips' box (x, y, w, h) in crop fractions (parametric only).
        checkpoint: The network's weights file (ignored by "parametric").
        device: Torch device of a network, e.g. "cpu", "cuda" or "cuda:0".
        fp16: Run a network in half precision on CUDA (ignored elsewhere).

    Raises:
        ValueError: Unknown model.
        CheckpointError: A network without a checkpoint, or one that is missing or does not fit.
    """
    module_name, class_name = engine_spec(model).engine.split(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
    if cls is ParametricEngine:
        return ParametricEngine(face_size, mouth_box)
    return cls(model, checkpoint=checkpoint, face_size=face_size, device=device, fp16=fp16)
