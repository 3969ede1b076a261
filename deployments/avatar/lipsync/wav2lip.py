"""Wav2Lip engines (96 and LiveTalking's 256), with LiveTalking's inference preprocessing.

LiveTalking (`avatars/wav2lip_avatar.py`, parity README §4.1–4.2) per batch::

    img_masked = img_batch.copy(); img_masked[:, S // 2:] = 0
    img_batch = concatenate((img_masked, img_batch), axis=3) / 255.      # -> (B, 6, S, S)
    mel_batch = mel_batch reshaped to (B, 1, 80, 16)
    pred = model(mel_batch, img_batch).cpu().numpy().transpose(0, 2, 3, 1) * 255.
    cv2.resize(pred.astype(np.uint8), box)                                # paste-back

The network's crop replaces the whole face crop. Avatars built at the network's size (96 or
256) go through unresized; other sizes are resized to it and the result back.
"""

from __future__ import annotations

import numpy as np
import torch

from deployments.avatar.lipsync._torch import TorchLipSyncEngine, resize_batch
from deployments.common.models import lipsync_model

WAV2LIP_MODELS = ("wav2lip96", "wav2lip256")


class Wav2LipEngine(TorchLipSyncEngine):
    """Wav2Lip on (B, 80, 16) mel windows.

    Args:
        model: "wav2lip96" (Rudrabha) or "wav2lip256" (LiveTalking's `wav2lip_v2`).
        checkpoint: `models/wav2lip.pth` in either published layout.
        face_size: Side S of the avatar's crops.
        device: Torch device.
        fp16: Half precision on CUDA.

    Raises:
        ValueError: Not a Wav2Lip model.
        CheckpointError: Missing checkpoint, or one that does not fit `model`.
    """

    def __init__(self, model: str = "wav2lip256", *, checkpoint: str | None, face_size: int,
                 device: str = "cpu", fp16: bool = False) -> None:
        if model not in WAV2LIP_MODELS:
            raise ValueError(f"{model!r} is not a Wav2Lip model ({', '.join(WAV2LIP_MODELS)})")
        size = lipsync_model(model).native_face_size
        assert size is not None  # every network has one
        super().__init__(model, checkpoint=checkpoint, model_size=size, face_size=face_size,
                         device=device, fp16=fp16)

    def prepare(self, crops: np.ndarray, features: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(mel (B, 1, 80, 16), face (B, 6, s, s) = [lower half black, full] / 255): `forward` order."""
        s = self.model_size
        face = self.face_input(resize_batch(crops, s), slice(s // 2, None), slice(None),
                               masked_first=True)
        return self.as_input(features)[:, None], face

    def compose(self, crops: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """The network's crops, resized to the avatar's size."""
        return resize_batch(pred, self.face_size)
