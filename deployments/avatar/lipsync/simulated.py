"""A lip-sync engine with no network: each batch takes the time a GPU cost model states.

`AvatarRenderer(simulated_gpu=...)` uses it to drive the control plane (handles, batching, the
renderer's threads) at hundreds of sessions on a machine without a GPU. It keeps the configured
model's contract (its feature kind and window shape, the avatar's crop size) and returns the
avatar's own crops: correct shape, no lip motion. No weights, no torch.

    engine = SimulatedGpuEngine("wav2lip256", face_size=256, cost=SimulatedGpu(gpu="h100").cost_model(...))
    out = engine.render(crops, features)    # a copy of `crops`, after cost.batch_s(len(crops)) seconds
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from deployments.avatar.gpu_cost import GpuCostModel
from deployments.avatar.lipsync.base import LipSyncEngine
from deployments.common.features import FEATURE_SHAPES, FeatureKind, check_pcm_batch


class SimulatedGpuEngine(LipSyncEngine):
    """`model`'s contract, `cost`'s timing.

    `render` blocks its calling thread for `cost.batch_s(B)` from the moment it is called, the
    copy of the crops included, and releases the GIL meanwhile (`time.sleep`), as a synchronous
    GPU forward pass does. Engines of one replica (one per cached avatar) share its one simulated
    GPU: the renderer's device lock runs their passes one at a time, as it does for real networks.

    Args:
        model: The simulated model's registry name (it says which features it reads).
        face_size: Side S of the avatar's crops.
        cost: Seconds per forward pass.
    """

    def __init__(self, model: str, face_size: int, cost: GpuCostModel) -> None:
        self.model, self.face_size, self.cost = model, int(face_size), cost

    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """See `LipSyncEngine.render`: a copy of the crops, `cost.batch_s(B)` seconds after the call."""
        start = time.perf_counter()
        crops, features = self.check_batch(crops, features)
        out = crops.copy()
        time.sleep(max(0.0, self.cost.batch_s(len(crops)) - (time.perf_counter() - start)))
        return out


class ZeroFeatures:
    """A feature engine of `kind` that returns windows of zeros: the simulation without feature cost.

    It validates each buffer as the real engines do, so a bad request fails the same way.
    """

    def __init__(self, kind: FeatureKind) -> None:
        self.kind = kind

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        """One (n, *FEATURE_SHAPES[kind]) float32 array of zeros per buffer."""
        check_pcm_batch(pcms, n_frames)
        return [np.zeros((n, *FEATURE_SHAPES[self.kind]), np.float32) for n in n_frames]
