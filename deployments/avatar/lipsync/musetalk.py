"""MuseTalk v1.5 engine: UNet on the avatar's VAE latents and whisper prompts, then VAE decode.

LiveTalking (`musereal.py` `inference`, parity README §4.4) per batch::

    audio = pe(whisper_batch)                                    # (B, 50, 384)
    pred = unet(latent_batch, timesteps=[0], encoder_hidden_states=audio).sample
    recon = vae.decode_latents(pred)                             # (B, 256, 256, 3) uint8 BGR

`latent_batch` is the avatar's precomputed `latents.pt` rows ([masked lower half, reference],
made once by the builder), so the per-frame cost is one UNet step and one VAE decode; the face
box crop never goes through the encoder at run time. The 256 crop goes back with MuseTalk's
mask blending (`paste.MaskBlendPaster`), done by the session host.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from deployments.avatar.assets import Avatar, InvalidAvatar
from deployments.avatar.lipsync._torch import (
    TorchLipSyncEngine,
    resize_batch,
    shared_network,
)
from deployments.avatar.models.vae import (
    FACE_SIZE,
    UNET_LATENT_SHAPE,
    decode_latents,
    load_vae,
)

VAE_FOLDER = "sd-vae-ft-mse"  # LiveTalking's models/ layout: beside musetalkV15/


def default_vae_dir(checkpoint: str | Path) -> Path:
    """`models/sd-vae-ft-mse` for a UNet at `models/musetalkV15/unet.pth` (a link is not followed)."""
    return Path(os.path.abspath(checkpoint)).parent.parent / VAE_FOLDER


class MuseTalkEngine(TorchLipSyncEngine):
    """MuseTalk v1.5 on (B, 8, 32, 32) latents and (B, 50, 384) whisper prompts.

    Args:
        model: "musetalk".
        checkpoint: `models/musetalkV15/unet.pth`.
        face_size: Side S of the avatar's crops (256 skips a resize).
        device: Torch device.
        fp16: UNet and VAE in half precision on CUDA (as LiveTalking runs them).
        vae_dir: The VAE folder; default `sd-vae-ft-mse/` beside the UNet's folder.

    Raises:
        ValueError: Not "musetalk".
        CheckpointError: Missing UNet or VAE, or one that does not fit.
    """

    def __init__(self, model: str = "musetalk", *, checkpoint: str | None, face_size: int,
                 device: str = "cpu", fp16: bool = False, vae_dir: str | Path | None = None) -> None:
        if model != "musetalk":
            raise ValueError(f"{model!r} is not MuseTalk")
        super().__init__(model, checkpoint=checkpoint, model_size=FACE_SIZE, face_size=face_size,
                         device=device, fp16=fp16)
        assert checkpoint is not None  # the base class raised otherwise
        self.vae_dir = Path(vae_dir) if vae_dir is not None else default_vae_dir(checkpoint)
        self.vae = shared_network("sd-vae", self.vae_dir, self.device, self.dtype,
                                  load=lambda: load_vae(self.vae_dir, self.device, self.dtype))

    @property
    def frame_input_spec(self) -> tuple[tuple[int, ...], type]:
        """One frame's (8, 32, 32) float32 latents: [masked lower half, reference]."""
        return UNET_LATENT_SHAPE, np.float32

    def frame_inputs(self, avatar: Avatar) -> np.ndarray:
        """The avatar's `latents.pt`, loaded by `load_avatar(..., latents=True)`."""
        if avatar.latents is None:
            raise InvalidAvatar(
                f"avatar {avatar.id} has no VAE latents (latents.pt): build it with `python -m "
                f"deployments.avatar.builder --model musetalk` (needs {VAE_FOLDER} in models/)")
        return avatar.latents

    def prepare(self, crops: np.ndarray, features: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(latents (B, 8, 32, 32), prompts (B, 50, 384)) on the device: `MuseTalkUNet` order."""
        return self.as_input(crops), self.as_input(features)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """UNet step at t = 0, then VAE decode: (B, 256, 256, 3) BGR in [0, 255], float32."""
        with torch.inference_mode():
            return decode_latents(self.vae, self.net(*inputs))

    def compose(self, crops: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """The decoded 256 crops at the avatar's crop size."""
        return resize_batch(pred, self.face_size)
