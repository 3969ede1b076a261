"""Ultralight-Digital-Human's lip-sync UNet, ``unet.py`` ``Model(n_channels=6, mode)``.

Reproduces anliyuan/Ultralight-Digital-Human at commit
5aa8b5a8aae4b003b7de5750abeac5343a7b38e0 (the 8-video-frame audio window introduced in
2025-06), in both audio modes:

- ``"hubert"``: audio (B,16,32,32) = 8 frames x 2 x 1024 HuBERT-large features (25 fps);
- ``"wenet"``: audio (B,128,16,32) = 8 frames x 8192 WeNet encoder values (20 fps).

``forward(x, audio_feat)`` takes the 6-channel face first (channels 0-2 the unmasked
reference, 3-5 the masked copy, BGR/255, 160x160) and returns a sigmoid (B,3,160,160).

The module's own state_dict uses the *head* key names (upstream since 2026-05-23).
``checkpoint_key`` maps the *legacy* names (earlier upstream and LiveTalking's
``avatars/ultralight/unet.py``, which wrap ``inc.inconv`` and ``downN.maxpool_conv`` in an extra
``nn.Sequential``) onto them, so both kinds of checkpoint load strictly through
``deployments.avatar.models.load_model``. The maths of the two layouts is identical.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AudioConvHubert", "AudioConvWenet", "Ultralight"]

Mode = Literal["hubert", "wenet"]
CHANNELS = (32, 64, 128, 256, 512)  # upstream `ch`
EXPAND = 2  # every InvertedResidual in this network uses expand_ratio=2
# Legacy -> head key renames (README §4.3); each is a no-op on head names.
LEGACY_RENAMES = (("inc.inconv.0.", "inc.inconv."), ("maxpool_conv.0.", "maxpool_conv."))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (carries the stride), 1x1 project.

    Keys ``conv.{0,1,3,4,6,7}``: the ReLUs sit at indices 2 and 5, no ReLU after the projection.
    Plain ReLU as upstream, not MobileNet's ReLU6 (the kit's activations stay below 6, so only
    the upstream source tells the two apart).
    """

    def __init__(self, inp: int, oup: int, stride: int = 1, residual: bool = False) -> None:
        super().__init__()
        hidden = inp * EXPAND
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class DoubleConvDW(nn.Module):
    """Two inverted residuals; the first changes channels (and stride), the second is residual."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            InvertedResidual(cin, cout, stride), InvertedResidual(cout, cout, 1, residual=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class InConvDw(nn.Module):
    """Stem: one non-residual inverted residual at full resolution (head layout, no wrapper)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.inconv = InvertedResidual(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inconv(x)


class Down(nn.Module):
    """Halves the resolution with the stride of the depthwise conv (no actual max-pool)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = DoubleConvDW(cin, cout, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear x2 (align_corners=True), pad to the skip's size, concat [upsampled, skip], convs."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConvDW(cin, cout, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])  # zero for 160x160 inputs
        return self.conv(torch.cat([x, skip], dim=1))


class OutConv(nn.Module):
    """1x1 conv (with bias) to 3 channels; the sigmoid is applied by the model."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _AudioConv(nn.Module):
    """The shared audio trunk; only the entry widths and conv3's stride differ per mode.

    conv1 and conv2 are inverted residuals ``cin -> c1 -> c2``, residual where the width is kept
    (as every later block). conv3/conv5 bring both modes to the image's 10x10 bottleneck.

    Args:
        cin: Audio feature channels.
        c1: conv1 output channels.
        c2: conv2 output channels.
        conv3_stride: Stride of conv3, chosen so that both modes reach 16x16 there.
    """

    def __init__(self, cin: int, c1: int, c2: int, conv3_stride: tuple[int, int]) -> None:
        super().__init__()
        c3, c4 = CHANNELS[3], CHANNELS[4]
        self.conv1 = InvertedResidual(cin, c1, 1, residual=cin == c1)
        self.conv2 = InvertedResidual(c1, c2, 1, residual=c1 == c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, conv3_stride, 1)
        self.bn3 = nn.BatchNorm2d(c3)
        self.conv4 = InvertedResidual(c3, c3, 1, residual=True)
        self.conv5 = nn.Conv2d(c3, c4, 3, 2, 3)  # padding 3: 16x16 -> 10x10, the image bottleneck
        self.bn5 = nn.BatchNorm2d(c4)
        self.relu = nn.ReLU()
        self.conv6 = InvertedResidual(c4, c4, 1, residual=True)
        self.conv7 = InvertedResidual(c4, c4, 1, residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.conv4(x)
        x = self.relu(self.bn5(self.conv5(x)))
        return self.conv7(self.conv6(x))


class AudioConvHubert(_AudioConv):
    """(B,16,32,32) HuBERT window -> (B,512,10,10)."""

    def __init__(self) -> None:
        super().__init__(16, CHANNELS[1], CHANNELS[2], conv3_stride=(2, 2))


class AudioConvWenet(_AudioConv):
    """(B,128,16,32) WeNet window -> (B,512,10,10); conv3 halves only the width."""

    def __init__(self) -> None:
        super().__init__(128, CHANNELS[3], CHANNELS[3], conv3_stride=(1, 2))


AUDIO_BRANCHES: dict[str, type[_AudioConv]] = {"hubert": AudioConvHubert, "wenet": AudioConvWenet}


class Ultralight(nn.Module):
    """``unet.Model(n_channels=6, mode)``: image UNet with the audio fused at the 10x10 bottleneck.

    Args:
        mode: ``"hubert"`` or ``"wenet"``, the audio feature extractor the model was trained on.
        n_channels: Face input channels (6: reference + masked copy).
    """

    def __init__(self, mode: Mode = "hubert", n_channels: int = 6) -> None:
        super().__init__()
        if mode not in AUDIO_BRANCHES:
            raise ValueError(f"unknown Ultralight mode {mode!r}: choose 'hubert' or 'wenet'")
        self.mode = mode
        ch = CHANNELS
        # Registration order = upstream state_dict order (audio_model first).
        self.audio_model = AUDIO_BRANCHES[mode]()
        self.fuse_conv = nn.Sequential(DoubleConvDW(ch[4] * 2, ch[4], 1), DoubleConvDW(ch[4], ch[3], 1))
        self.inc = InConvDw(n_channels, ch[0])
        self.down1 = Down(ch[0], ch[1])
        self.down2 = Down(ch[1], ch[2])
        self.down3 = Down(ch[2], ch[3])
        self.down4 = Down(ch[3], ch[4])
        self.up1 = Up(ch[4], ch[3] // 2)
        self.up2 = Up(ch[3], ch[2] // 2)
        self.up3 = Up(ch[2], ch[1] // 2)
        self.up4 = Up(ch[1], ch[0])
        self.outc = OutConv(ch[0], 3)

    def audio_branch(self, audio: torch.Tensor) -> torch.Tensor:
        """The audio model alone: (B,16,32,32) or (B,128,16,32) -> (B,512,10,10)."""
        return self.audio_model(audio)

    def forward(self, x: torch.Tensor, audio_feat: torch.Tensor) -> torch.Tensor:
        """(B,6,160,160) face, then audio features -> (B,3,160,160) in [0, 1]."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x5 = self.fuse_conv(torch.cat([x5, self.audio_model(audio_feat)], dim=1))  # image first
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return torch.sigmoid(self.outc(x))

    @staticmethod
    def checkpoint_key(key: str) -> str:
        """Map a legacy (LiveTalking / pre-2026-05) key to the head name; head keys pass unchanged."""
        for old, new in LEGACY_RENAMES:
            key = key.replace(old, new)
        return key
