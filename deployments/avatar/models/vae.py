"""MuseTalk's VAE: Stable Diffusion's `sd-vae-ft-mse` (diffusers `AutoencoderKL`), as MuseTalk uses it.

Reproduces TMElyralab/MuseTalk 0a89dec (``musetalk/models/vae.py``):

- ``get_latents_for_unet(crop)``: the 256 x 256 BGR face crop as RGB / 255, once with its lower
  half zeroed (``mask_tensor[:128, :] = 1``, applied *before* the [-1, 1] normalisation, so the
  masked half encodes as -1) and once whole; each encoded, ``latent_dist.sample()`` x 0.18215,
  concatenated [masked, reference] -> (1, 8, 32, 32). Done once per avatar frame, by the builder.
- ``decode_latents(latents)``: ``vae.decode(latents / 0.18215)``, ``(x / 2 + 0.5).clamp(0, 1)``,
  ``(x * 255).round()`` to uint8, RGB -> BGR. Done for every rendered frame.

    vae = load_vae("models/sd-vae-ft-mse")
    latents = latents_for_unet(vae, crops_256_bgr)      # (B, 8, 32, 32), the avatar's latents.pt
    faces = decode_latents(vae, unet_output)            # (B, 256, 256, 3) BGR

The weights are the stock HF folder, loaded offline with ``from_pretrained`` (it also converts the
old attention key names of the published ``diffusion_pytorch_model.bin``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from deployments.common.errors import CheckpointError

DEFAULT_VAE_DIR = "models/sd-vae-ft-mse"
VAE_SOURCE = "HF repo stabilityai/sd-vae-ft-mse: config.json + diffusion_pytorch_model.safetensors (or .bin)"
FACE_SIZE = 256  # MuseTalk's crop side; the latents are FACE_SIZE / 8 = 32 wide
LATENT_SIZE = FACE_SIZE // 8
LATENT_CHANNELS = 4
UNET_LATENT_SHAPE = (2 * LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)  # [masked, reference]

# The published `config.json` of stabilityai/sd-vae-ft-mse (scaling_factor is diffusers' default
# 0.18215, which MuseTalk reads back from `vae.config.scaling_factor`).
SD_VAE_FT_MSE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": FACE_SIZE,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def missing_vae_message(vae_dir: str | Path) -> str:
    """What to put where, for every error about a missing or unusable VAE."""
    return (f"MuseTalk needs the Stable Diffusion VAE at {vae_dir}/ ({VAE_SOURCE}); "
            f"see models/README.md")


def load_vae(vae_dir: str | Path = DEFAULT_VAE_DIR, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """The VAE from its local diffusers folder, eval mode, on `device` in `dtype`.

    Raises:
        CheckpointError: The folder is missing, unreadable, or not a 4-channel `AutoencoderKL`.
    """
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise CheckpointError(f"VAE not found: {missing_vae_message(vae_dir)}")
    try:
        vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, torch_dtype=dtype,
                                            low_cpu_mem_usage=False)  # that needs `accelerate`
    except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError variously
        raise CheckpointError(f"cannot load the VAE in {vae_dir}: {exc} ({missing_vae_message(vae_dir)})") from exc
    if vae.config.latent_channels != LATENT_CHANNELS:
        raise CheckpointError(f"{vae_dir} is not sd-vae-ft-mse: latent_channels "
                              f"{vae.config.latent_channels} != {LATENT_CHANNELS} ({missing_vae_message(vae_dir)})")
    return vae.eval().to(device)


def _rgb_unit(crops_bgr: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) float32 RGB in [0, 1] (upstream's `/ 255.`)."""
    x = torch.from_numpy(np.ascontiguousarray(crops_bgr[..., ::-1])).to(device)
    return x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # NCHW: channels-last convs round differently


@torch.inference_mode()
def latents_for_unet(vae: AutoencoderKL, crops_bgr: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """MuseTalk's `get_latents_for_unet` for a batch of 256 x 256 crops -> (B, 8, 32, 32) float32.

    `latent_dist.sample()` draws from the posterior as upstream does; the generator is seeded so
    that building an avatar twice gives the same files.
    """
    if crops_bgr.ndim != 4 or crops_bgr.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(f"crops must be (B, {FACE_SIZE}, {FACE_SIZE}, 3) BGR, got {crops_bgr.shape}")
    x = _rgb_unit(crops_bgr, vae.device)
    masked = x.clone()
    masked[:, :, FACE_SIZE // 2:, :] = 0
    generator = torch.Generator(device=vae.device).manual_seed(seed)
    scale = vae.config.scaling_factor
    halves = []
    for image in (masked, x):
        dist = vae.encode(image.sub(0.5).div_(0.5).to(vae.dtype)).latent_dist  # Normalize(0.5, 0.5)
        halves.append(scale * dist.sample(generator=generator))
    return torch.cat(halves, dim=1).float().cpu().numpy()


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """MuseTalk's `decode_latents`: (B, 4, 32, 32) -> (B, 256, 256, 3) BGR, on the device.

    The values are upstream's uint8 ones (integers in [0, 255]) held as float32.
    """
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    image = (image.float() / 2 + 0.5).clamp(0, 1)
    # Upstream rounds in numpy float32 (half to even); torch.round rounds the same way.
    return image.permute(0, 2, 3, 1).mul(255.0).round().flip(-1)
