"""Wav2Lip generators: the 96×96 original and LiveTalking's 256×256 variant, key-for-key.

Re-implementations that load the published checkpoints unchanged (strict, same state_dict
names and shapes, same layer order) and reproduce the upstream numerics:

- ``Wav2Lip96``: Rudrabha/Wav2Lip ``models/wav2lip.py`` ``Wav2Lip`` at commit
  5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941 (2025-04-19), building blocks from ``models/conv.py``.
  Weights: ``wav2lip.pth`` / ``wav2lip_gan.pth``.
- ``Wav2Lip256``: lipku/LiveTalking ``avatars/wav2lip/models/wav2lip_v2.py`` ``Wav2Lip`` at commit
  a5a77f4c395c8347789a16da1843cd1b08b48eea (2026-07-19; file unchanged since 2025-02-21).
  Weights: LiveTalking's ``wav2lip256.pth``.

Both take ``forward(audio, face)``: audio (B,1,80,16) mel windows, face (B,6,S,S) = [lower-half
masked crop, reference crop] / 255, giving (B,3,S,S) in [0, 1]. The 256 model has one more
stride-2 level on each side, a 4×4 bottleneck kernel (4×4 → 1×1) and an ``a_alpha`` audio gain.
Checked against ``tests/parity/wav2lip{96,256}.{json,npz}`` by tests/unit/test_wav2lip_parity.py.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv2d", "Conv2dTranspose", "Wav2Lip256", "Wav2Lip96", "Wav2LipBase"]


class Conv2d(nn.Module):
    """Conv (with bias) + BatchNorm + ReLU; ``residual`` adds the input before the ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int],
                 padding: int, residual: bool = False) -> None:
        super().__init__()
        # `conv_block.0` / `conv_block.1` are the checkpoint's key names.
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv (with bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(ch: int, n: int) -> list[nn.Module]:
    """`n` residual 3×3 blocks at `ch` channels."""
    return [Conv2d(ch, ch, 3, 1, 1, residual=True) for _ in range(n)]


def _down(cin: int, cout: int, n_res: int) -> nn.Sequential:
    """A stride-2 encoder level: 3×3 conv halving the size, then `n_res` residual blocks."""
    return nn.Sequential(Conv2d(cin, cout, 3, 2, 1), *_res(cout, n_res))


def _up(cin: int, cout: int, n_res: int) -> nn.Sequential:
    """A stride-2 decoder level: 3×3 transposed conv doubling the size, then residual blocks."""
    return nn.Sequential(Conv2dTranspose(cin, cout, 3, 2, 1, output_padding=1), *_res(cout, n_res))


def _audio_encoder() -> nn.Sequential:
    """(B,1,80,16) mel window → (B,512,1,1); identical in both variants (same keys and weights)."""
    return nn.Sequential(
        Conv2d(1, 32, 3, 1, 1), *_res(32, 2),
        Conv2d(32, 64, 3, (3, 1), 1), *_res(64, 2),
        Conv2d(64, 128, 3, 3, 1), *_res(128, 2),
        Conv2d(128, 256, 3, (3, 2), 1), *_res(256, 1),
        Conv2d(256, 512, 3, 1, 0),
        Conv2d(512, 512, 1, 1, 0),
    )


class Wav2LipBase(nn.Module):
    """The shared U-Net: face encoder, audio encoder, skip-connected decoder, output block.

    Args:
        extra_levels: Stride-2 512-channel levels added at the bottom of the encoder and the
            decoder (0 for the 96 model, 1 for the 256 model: 8×8 → 4×4 and back).
        bottleneck_kernel: Kernel of the last encoder conv (k×k → 1×1) and of the first
            transposed conv (1×1 → k×k): 3 for 96 px, 4 for 256 px.
    """

    def __init__(self, extra_levels: int, bottleneck_kernel: int) -> None:
        super().__init__()
        k = bottleneck_kernel
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(6, 16, 7, 1, 3)),
            _down(16, 32, 2), _down(32, 64, 3), _down(64, 128, 2), _down(128, 256, 2), _down(256, 512, 1),
            *[_down(512, 512, 1) for _ in range(extra_levels)],
            nn.Sequential(Conv2d(512, 512, k, 1, 0), Conv2d(512, 512, 1, 1, 0)),
        ])
        self.audio_encoder = _audio_encoder()
        # Decoder input channels = previous output + the skip feature concatenated after it.
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(512, 512, 1, 1, 0)),
            nn.Sequential(Conv2dTranspose(1024, 512, k, 1, 0), *_res(512, 1)),
            *[_up(1024, 512, 1) for _ in range(extra_levels)],
            _up(1024, 512, 2), _up(768, 384, 2), _up(512, 256, 2), _up(320, 128, 2), _up(160, 64, 2),
        ])
        self.output_block = nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def audio_embedding(self, audio: torch.Tensor) -> torch.Tensor:
        """The audio branch alone: (N,1,80,16) mel windows → (N,512,1,1)."""
        return self.audio_encoder(audio)

    def inference(self, audio_embedding: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """Face encoder + decoder from a precomputed (N,512,1,1) embedding; face is 4-D (N,6,S,S)."""
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = audio_embedding
        for block in self.face_decoder_blocks:
            # Channels first, then the deepest remaining encoder feature (upstream order).
            x = torch.cat((block(x), feats.pop()), dim=1)
        return self.output_block(x)

    def _run(self, audio: torch.Tensor, face: torch.Tensor, a_alpha: float = 1.0) -> torch.Tensor:
        """Upstream ``forward``: 4-D (B,...) inputs, or 5-D audio (B,T,1,80,16) + face (B,6,T,S,S)."""
        folded = face.dim() > 4
        batch, steps = audio.size(0), (audio.size(1) if folded else 1)
        if face.size(0) != batch or (folded and face.size(2) != steps):
            raise ValueError(f"audio {tuple(audio.shape)} and face {tuple(face.shape)} disagree on batch/time")
        if folded:
            # Time-major fold (row t*B + b), the order of upstream's cat over the time axis.
            audio = audio.transpose(0, 1).reshape(steps * batch, *audio.shape[2:])
            face = face.permute(2, 0, 1, 3, 4).reshape(steps * batch, face.size(1), *face.shape[3:])
        embedding = self.audio_encoder(audio)
        if a_alpha != 1.0:
            embedding = embedding * a_alpha  # upstream scales in place; same values
        out = self.inference(embedding, face)
        if folded:
            out = out.reshape(steps, batch, *out.shape[1:]).permute(1, 2, 0, 3, 4).contiguous()  # (B,3,T,S,S)
        return out


class Wav2Lip96(Wav2LipBase):
    """Rudrabha Wav2Lip (96×96 face, 36,298,035 parameters, 352 state_dict entries)."""

    def __init__(self) -> None:
        super().__init__(extra_levels=0, bottleneck_kernel=3)

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        """(B,1,80,16) + (B,6,96,96) → (B,3,96,96); 5-D (B,T,...) / (B,6,T,96,96) → (B,3,T,96,96)."""
        return self._run(audio_sequences, face_sequences)


class Wav2Lip256(Wav2LipBase):
    """LiveTalking ``wav2lip_v2.Wav2Lip`` (256×256 face, 53,605,683 parameters, 380 entries)."""

    def __init__(self) -> None:
        super().__init__(extra_levels=1, bottleneck_kernel=4)

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor,
                a_alpha: float = 1.0) -> torch.Tensor:
        """Like ``Wav2Lip96.forward`` at 256×256; ``a_alpha`` scales the audio embedding."""
        return self._run(audio_sequences, face_sequences, a_alpha)
