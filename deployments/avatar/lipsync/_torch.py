"""What the network engines share: checkpoint loading, device and precision, the forward pass.

A subclass says how its network's inputs are built (`prepare`) and how the network's crop goes
back into the avatar's crop (`compose`); everything else is here. The uint8 crops go to the
device as they are and are masked, stacked and scaled there (a quarter of the float32 bytes).
Torch's thread count is the caller's choice: nothing here calls `torch.set_num_threads`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from deployments.avatar.lipsync.base import LipSyncEngine
from deployments.avatar.models import load_model
from deployments.common.errors import CheckpointError
from deployments.common.models import lipsync_model

log = logging.getLogger(__name__)

# Loaded networks by (model, file, file version, device, dtype), alive while an engine uses one:
# engines for several cached avatars share one copy of the weights on the GPU.
_NETWORKS: weakref.WeakValueDictionary[tuple, nn.Module] = weakref.WeakValueDictionary()
_NETWORKS_LOCK = threading.Lock()  # avatars load in worker threads: load each network once


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """(B, H, W, C) uint8 images resized to size x size; the input itself when already that size.

    Bilinear both ways: what the upstream pipelines actually do (LiveTalking's face crops and
    its paste-back use cv2's default; Ultralight's `cv2.resize(img, (168, 168), cv2.INTER_AREA)`
    passes the flag as `dst`, so it is bilinear too), hence what the networks were trained on.
    """
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), images.dtype)
    for i, img in enumerate(images):
        out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def limit_gpu_memory(fraction: float, device: str = "cuda") -> None:
    """Cap this process's CUDA caching allocator at `fraction` of the device's memory.

    Ray's fractional `num_gpus` only schedules: without a cap one replica can take the whole GPU
    from the others sharing it. Call it before the first allocation; a no-op without CUDA.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(fraction, dev)


def shared_network(model: str, checkpoint: str | Path, device: torch.device, dtype: torch.dtype,
                   load: Callable[[], nn.Module] | None = None) -> nn.Module:
    """`load_model(model, checkpoint, device)` in `dtype`, or the copy another engine already holds.

    Args:
        model: The network's name in the model registry (or a key of its own, e.g. "sd-vae").
        checkpoint: Its weights file (or folder): part of the sharing key with its mtime and size.
        device: Torch device.
        dtype: Torch dtype.
        load: Builds the network on `device` in `dtype` instead of `load_model` (e.g. a VAE).

    Raises:
        CheckpointError: The checkpoint is missing or does not fit `model`.
    """
    path = Path(checkpoint).resolve()
    stat = path.stat() if path.exists() else None  # a replaced file is loaded again
    key = (model, str(path), stat and (stat.st_mtime_ns, stat.st_size), str(device), dtype)
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            net = load() if load else load_model(model, checkpoint, device).to(dtype)
            _NETWORKS[key] = net
    return net


class TorchLipSyncEngine(LipSyncEngine):
    """A published lip-sync network, loaded strictly from its real checkpoint layout.

    Args:
        model: The network's name in `deployments.avatar.models` (e.g. "wav2lip256").
        checkpoint: Its weights file.
        model_size: Side of the network's own face crop.
        face_size: Side S of the avatar's crops.
        device: Torch device, e.g. "cpu" or "cuda:0".
        fp16: Half precision (weights and inputs) on CUDA; ignored on other devices.

    Raises:
        CheckpointError: No checkpoint given, or one that is missing or does not fit.
    """

    def __init__(self, model: str, *, checkpoint: str | None, model_size: int, face_size: int,
                 device: str = "cpu", fp16: bool = False) -> None:
        if checkpoint is None:
            raise CheckpointError(f"lip-sync model {model!r} needs a checkpoint: "
                                  f"{lipsync_model(model).checkpoint_layout} (see models/README.md)")
        self.model, self.model_size, self.face_size = model, int(model_size), int(face_size)
        self.device = torch.device(device)
        half = fp16 and self.device.type == "cuda"
        if fp16 and not half:
            log.info("%s: fp16 needs CUDA, running float32 on %s", model, self.device)
        # Whole-network .half() rather than autocast: half the weight memory, no per-op casts;
        # the networks are conv + BatchNorm (eval) + sigmoid, all safe in fp16.
        self.dtype = torch.float16 if half else torch.float32
        self.net = shared_network(model, checkpoint, self.device, self.dtype)

    @abstractmethod
    def prepare(self, crops: np.ndarray, features: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The network's inputs for a checked batch, in its `forward` order, on the device."""

    @abstractmethod
    def compose(self, crops: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """The output crops (B, S, S, 3) uint8 from the inputs and the network's uint8 crops."""

    def face_input(self, faces: np.ndarray, rows: slice, cols: slice, *, masked_first: bool
                   ) -> torch.Tensor:
        """(B, s, s, 3) uint8 faces -> (B, 6, s, s): faces and a copy with [rows, cols] black, /255.

        Args:
            faces: The network-sized crops, BGR.
            rows: Rows of the masked copy set to 0.
            cols: Columns of the masked copy set to 0.
            masked_first: Channel order: [masked, faces] (Wav2Lip) or [faces, masked] (Ultralight).
        """
        x = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device)
        masked = x.clone()
        masked[:, rows, cols] = 0
        pair = (masked, x) if masked_first else (x, masked)
        # float32 x / 255 is bit-identical to upstream's float64 `/ 255.` cast to float32.
        face = torch.cat(pair, dim=3).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        return face.to(self.dtype)

    def as_input(self, features: np.ndarray) -> torch.Tensor:
        """A float32 array (feature windows, MuseTalk's latents) on the device in the network's dtype."""
        arr = np.ascontiguousarray(features, np.float32)
        if not arr.flags.writeable:  # Ray's zero-copy arguments are read-only; torch warns on them
            arr = arr.copy()
        return torch.from_numpy(arr).to(self.device, self.dtype)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The network's output (B, s, s, 3), float32 in [0, 255] (upstream's `pred * 255`)."""
        with torch.inference_mode():
            pred = self.net(*inputs)
            return pred.float().permute(0, 2, 3, 1).mul(255.0)

    def predict(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """`forward` of a checked batch as a float32 numpy array (to compare before rounding)."""
        return self.forward(self.prepare(*self.check_batch(crops, features))).cpu().numpy()

    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """See `LipSyncEngine.render`; upstream's `astype(np.uint8)` (truncation) on the device."""
        crops, features = self.check_batch(crops, features)
        if len(crops) == 0:
            return crops.copy()
        with torch.inference_mode():
            pred = self.forward(self.prepare(crops, features)).clamp_(0, 255).to(torch.uint8)
        return self.compose(crops, pred.cpu().numpy())
