"""MuseTalk v1.5: the diffusers UNet with its config, and the audio `PositionalEncoding`.

Reproduces TMElyralab/MuseTalk at commit 0a89dec45a0192b824e3cf4daf96c239440c5ed8
(``musetalk/models/unet.py``): ``UNet`` builds ``diffusers.UNet2DConditionModel(**musetalk.json)``
and strict-loads ``unet.pth`` (a bare state dict, no prefix); ``PositionalEncoding(d_model=384)``
adds a fixed sinusoid to the whisper-tiny audio prompt. The UNet itself is diffusers' class, used
as is (upstream pins diffusers 0.30.2; 0.42.1 gives the same keys and a bit-identical output).

    model = load_model("musetalk", "models/musetalkV15/unet.pth")
    latent = model(masked_and_reference_latent, whisper_prompt)   # (B,8,32,32), (B,50,384) -> (B,4,32,32)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from deployments.common.errors import CheckpointError

__all__ = ["MUSETALK_V15_UNET_CONFIG", "MuseTalkUNet", "PositionalEncoding"]

EXPECTED_CONFIG_FILE = "models/musetalkV15/musetalk.json"

# The constructor arguments in MuseTalk v1.5's `musetalk.json` (keys starting with '_' dropped).
# The file is downloaded with the weights, not in the git repo. It is the Stable Diffusion v1 UNet
# with in_channels 8 (masked-face latent, reference latent), out_channels 4 and
# cross_attention_dim 384 (whisper-tiny width). `attention_head_dim=8` is diffusers' legacy name
# for 8 *heads* (head dims 40/80/160); diffusers' own defaults are not relied on anywhere.
MUSETALK_V15_UNET_CONFIG: Mapping[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}


class PositionalEncoding(nn.Module):
    """MuseTalk's fixed sinusoidal encoding added to the audio prompt.

    ``pe[0, p, 2i] = sin(p * exp(-2i * ln(10000) / d_model))`` and ``pe[0, p, 2i+1] = cos(...)``,
    computed in float32 with the same ops as upstream so the table is bit-identical.

    Args:
        d_model: Feature width of the prompt (384 for whisper-tiny).
        max_len: Longest sequence the table covers.
    """

    pe: torch.Tensor

    def __init__(self, d_model: int = 384, max_len: int = 5000) -> None:
        super().__init__()
        pe = torch.zeros(1, max_len, d_model, dtype=torch.float32)
        position = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe[:, :, 0::2] = torch.sin(position * div_term)
        pe[:, :, 1::2] = torch.cos(position * div_term)
        # Non-persistent: upstream rebuilds it in __init__ and unet.pth never holds it.
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adds the first ``seq_len`` positions.

        Args:
            x: Audio prompt, (B, seq_len, d_model).

        Returns:
            ``x + pe[:, :seq_len]``, same shape as ``x``.
        """
        return x + self.pe[:, : x.shape[1]].to(device=x.device, dtype=x.dtype)


class MuseTalkUNet(nn.Module):
    """MuseTalk v1.5's UNet (``self.unet``) plus the audio positional encoding (``self.pe``).

    The checkpoint addresses only ``self.unet`` (see ``checkpoint_target``), so its keys are the
    bare diffusers names, exactly as in the published ``unet.pth``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel(**{k: list(v) if isinstance(v, tuple) else v
                                            for k, v in MUSETALK_V15_UNET_CONFIG.items()})
        self.pe = PositionalEncoding(d_model=MUSETALK_V15_UNET_CONFIG["cross_attention_dim"])

    @classmethod
    def from_config_file(cls, path: str | Path) -> MuseTalkUNet:
        """Builds the network after checking a user's ``musetalk.json`` matches the v1.5 config.

        Only the v1.5 architecture is supported, so the file is a guard (a wrong json would
        otherwise surface later as a confusing shape mismatch), not a source of parameters.

        Args:
            path: The ``musetalk.json`` shipped with the weights. Keys starting with '_' are
                metadata (``_class_name``, ``_diffusers_version``) and are ignored.

        Returns:
            A freshly built ``MuseTalkUNet``.

        Raises:
            CheckpointError: The file is missing, is not a JSON object, or differs from the
                v1.5 config (the message lists the differing keys).
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"UNet config not found: {path} (expected {EXPECTED_CONFIG_FILE}; "
                                  "see models/README.md)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read UNet config {path} (expected {EXPECTED_CONFIG_FILE}): {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} is not a JSON object (expected {EXPECTED_CONFIG_FILE})")
        given = {k: _as_tuples(v) for k, v in raw.items() if not k.startswith("_")}
        diffs = [f"{k}: {given.get(k, '<missing>')!r} != {v!r}" for k, v in MUSETALK_V15_UNET_CONFIG.items()
                 if given.get(k, _MISSING) != v]
        diffs += [f"{k}: unexpected key" for k in given if k not in MUSETALK_V15_UNET_CONFIG]
        if diffs:
            raise CheckpointError(f"{path} is not the MuseTalk v1.5 UNet config (expected "
                                  f"{EXPECTED_CONFIG_FILE}); differences: " + "; ".join(diffs))
        return cls()

    def checkpoint_target(self) -> nn.Module:
        """The module ``unet.pth`` is a state dict of: the bare diffusers UNet."""
        return self.unet

    def forward(self, latent: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """One denoising step at timestep 0, as MuseTalk's real-time inference runs it.

        Args:
            latent: (B, 8, H/8, W/8): masked-face latent then reference latent (32x32 for a
                256x256 face), VAE latents scaled by 0.18215.
            audio: (B, 50, 384) whisper-tiny prompt, before the positional encoding.

        Returns:
            The predicted face latent, (B, 4, H/8, W/8).
        """
        # Upstream passes torch.tensor([0]) (int64); diffusers broadcasts it over the batch and
        # casts the embedding to the sample dtype, so this also serves fp16.
        timestep = torch.zeros(1, dtype=torch.long, device=latent.device)
        return self.unet(latent, timestep, encoder_hidden_states=self.pe(audio)).sample


_MISSING = object()


def _as_tuples(value: Any) -> Any:
    """JSON lists as tuples, so a file compares equal to the constant."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
