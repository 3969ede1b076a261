"""Ultralight-Digital-Human engine (HuBERT), with its and LiveTalking's preprocessing.

Upstream `inference.py` / LiveTalking `lightreal.py` (parity README §4.3) per frame::

    crop_img = cv2.resize(box_crop, (168, 168), cv2.INTER_AREA)   # flag lands in `dst`: bilinear
    img_real_ex = crop_img[4:164, 4:164].copy()
    img_masked = cv2.rectangle(img_real_ex.copy(), (5, 5, 150, 145), (0, 0, 0), -1)
    x = cat([img_real_ex / 255.0, img_masked / 255.0])            # (6, 160, 160), reference first
    pred = model(x, audio_feat) ... * 255                          # audio (16, 32, 32)
    crop_img[4:164, 4:164] = pred.astype(np.uint8); cv2.resize(crop_img, (w, h))

Ultralight models are trained per person on crops from its own landmark box (nose to chin);
the avatar's crops must come from the same box for the model to fit them.
"""

from __future__ import annotations

import numpy as np
import torch

from deployments.avatar.lipsync._torch import TorchLipSyncEngine, resize_batch
from deployments.common.models import lipsync_model

ULTRALIGHT_MODELS = ("ultralight_hubert",)  # LiveTalking only ever uses hubert
CROP_SIZE = 168  # the landmark box is resized to this ...
INNER = slice(4, 164)  # ... and the network sees its inner 160 x 160
NET_SIZE = INNER.stop - INNER.start
# cv2.rectangle's Rect form (x, y, w, h) = (5, 5, 150, 145) fills rows 5..149, columns 5..154.
MASK_ROWS, MASK_COLS = slice(5, 5 + 145), slice(5, 5 + 150)


class UltralightEngine(TorchLipSyncEngine):
    """Ultralight `Model(6, 'hubert')` on (B, 16, 32, 32) HuBERT windows.

    Args:
        model: "ultralight_hubert".
        checkpoint: `data/avatars/<id>/ultralight.pth` (legacy bare state dict or head layout).
        face_size: Side S of the avatar's crops (168 skips both resizes).
        device: Torch device.
        fp16: Half precision on CUDA.

    Raises:
        ValueError: Not an Ultralight model.
        CheckpointError: Missing checkpoint, or one that does not fit.
    """

    def __init__(self, model: str = "ultralight_hubert", *, checkpoint: str | None, face_size: int,
                 device: str = "cpu", fp16: bool = False) -> None:
        if model not in ULTRALIGHT_MODELS:
            raise ValueError(f"{model!r} is not an Ultralight model ({', '.join(ULTRALIGHT_MODELS)})")
        assert lipsync_model(model).native_face_size == CROP_SIZE
        super().__init__(model, checkpoint=checkpoint, model_size=NET_SIZE, face_size=face_size,
                         device=device, fp16=fp16)

    def prepare(self, crops: np.ndarray, features: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(face (B, 6, 160, 160) = [reference, masked] / 255, audio (B, 16, 32, 32)): `forward` order."""
        inner = resize_batch(crops, CROP_SIZE)[:, INNER, INNER]
        face = self.face_input(inner, MASK_ROWS, MASK_COLS, masked_first=False)
        return face, self.as_input(features)

    def compose(self, crops: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """The 168 crop with the network's 160 x 160 in its inner area, resized to the avatar's size."""
        big = resize_batch(crops, CROP_SIZE).copy()  # a copy: at 168 it is the caller's array
        big[:, INNER, INNER] = pred
        return resize_batch(big, self.face_size)
