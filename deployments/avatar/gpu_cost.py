"""A stated cost model of one lip-sync forward pass on a GPU, for the simulated renderer.

Nothing here ran on a GPU: the times are arithmetic from counted FLOPs (the model registry's
`gflops_per_frame`, docs/PERFORMANCE.md "The networks alone") and the rates of `GPU_PROFILES`.
A batch of B frames of a model of G GFLOP a frame takes

    batch_s(B) = launch + B * bytes_per_frame / link + (B * G + half_fill) / (peak * max_utilisation)

- launch: a fixed cost per forward pass (eager torch launches a few hundred kernels, ~5 us each);
- link: the host link; bytes per frame are the network-sized uint8 crop in and out plus the
  float32 feature window in (what `TorchLipSyncEngine` moves; the masking happens on the device);
- compute: the share of tensor peak reached grows with the work of the batch W = B * G as
  `max_utilisation * W / (W + half_fill)` (small batches leave SMs idle), which is the same as
  paying `half_fill` GFLOP of idle time once per batch.

The defaults (40% of peak at large batches, half of that at 400 GFLOP a batch for an H100, i.e.
about 7 frames of wav2lip256) are assumptions, not measurements; a config may override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.common.features import FEATURE_SHAPES
from deployments.common.models import LipSyncModel
from deployments.common.registry import Registry

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class GpuProfile:
    """One GPU's rates.

    Attributes:
        name: Its key in `GPU_PROFILES`.
        peak_tflops: bf16/fp16 dense tensor rate with FP32 accumulate (what torch's convs use).
        link_gbps: Host-to-device (and back) rate of pinned copies, GB/s.
        launch_ms: Fixed cost of one forward pass (kernel launches, synchronisation).
        half_fill_gflop: Work per batch at which it reaches half its `max_utilisation`.
        source: Where `peak_tflops` comes from.
    """

    name: str
    peak_tflops: float
    link_gbps: float
    launch_ms: float
    half_fill_gflop: float
    source: str


# half_fill scales with the peak (the same ~1.25 ms of idle SMs per batch at 40%).
GPU_PROFILES: Registry[GpuProfile] = Registry("GPU profile", {
    "h100": GpuProfile("h100", 800.0, 50.0, 1.5, 400.0, "measured by the team, bf16 large matmuls (spec 989)"),
    "h200": GpuProfile("h200", 800.0, 50.0, 1.5, 400.0, "the H100's measured rate (same GH100 compute)"),
    "a100": GpuProfile("a100", 312.0, 25.0, 1.5, 156.0, "spec sheet, bf16 dense"),
    "l4": GpuProfile("l4", 121.0, 25.0, 1.5, 60.0, "spec sheet, bf16 dense"),
    "rtx4090": GpuProfile("rtx4090", 165.0, 25.0, 1.5, 82.0, "spec sheet, bf16 dense with FP32 accumulate"),
}, aliases={"4090": "rtx4090"})

DEFAULT_MAX_UTILISATION = 0.4  # docs/PERFORMANCE.md "What a GPU could carry": assumed, not measured


@dataclass(frozen=True)
class GpuCostModel:
    """Seconds one forward pass of `frames` frames takes on a simulated GPU (module docstring).

    Attributes:
        gflops_per_frame: The network's work per frame.
        bytes_per_frame: Host <-> device bytes per frame, both ways together.
        peak_tflops, link_gbps, launch_ms, half_fill_gflop: The GPU's (`GpuProfile`).
        max_utilisation: Share of the peak reached by large batches.
    """

    gflops_per_frame: float
    bytes_per_frame: int
    peak_tflops: float
    link_gbps: float
    launch_ms: float
    half_fill_gflop: float
    max_utilisation: float = DEFAULT_MAX_UTILISATION

    def utilisation(self, frames: int) -> float:
        """Share of the peak a batch of `frames` reaches: max * W / (W + half_fill), W its GFLOP."""
        work = frames * self.gflops_per_frame
        return self.max_utilisation * work / (work + self.half_fill_gflop) if work > 0 else 0.0

    def compute_s(self, frames: int) -> float:
        if frames <= 0:
            return 0.0
        return frames * self.gflops_per_frame / (self.peak_tflops * 1e3 * self.utilisation(frames))

    def transfer_s(self, frames: int) -> float:
        return frames * self.bytes_per_frame / (self.link_gbps * 1e9)

    def batch_s(self, frames: int) -> float:
        """Launch + transfers + compute of one forward pass; 0 for an empty batch."""
        if frames <= 0:
            return 0.0
        return self.launch_ms / 1e3 + self.transfer_s(frames) + self.compute_s(frames)

    def frames_per_s(self, frames: int) -> float:
        """Throughput when every forward pass has `frames` frames."""
        return frames / self.batch_s(frames)


def bytes_per_frame(model: LipSyncModel, face_size: int) -> int:
    """The uint8 crop at the network's size in and out, and the float32 feature window in."""
    side = model.native_face_size or face_size
    window = 1
    for dim in FEATURE_SHAPES.get(model.feature_kind, ()):
        window *= dim
    return 2 * side * side * 3 + window * FLOAT32_BYTES


class SimulatedGpu(BaseModel):
    """`args.simulated_gpu`: replace the lip-sync network with a sleep of the cost model's length.

    Written as a profile name (`simulated_gpu: h100`) or a mapping overriding its numbers
    (`{gpu: h100, max_utilisation: 0.3}`). One renderer replica is one whole simulated GPU: replicas
    sharing a GPU (fractional `num_gpus`) would contend, which this does not model.

    Attributes:
        gpu: A `GPU_PROFILES` name.
        max_utilisation: Share of the peak reached by large batches.
        launch_ms: Overrides the profile's fixed cost per forward pass.
        half_fill_gflop: Overrides the profile's work per batch at half utilisation.
        features: "compute": the model's real feature engine (mel is CPU work the real replica
            does too; HuBERT and whisper need their weights and run on this CPU); "zeros": windows
            of zeros, no feature cost; "auto": compute mel, zeros for the network kinds (their GPU
            cost is not modelled).
    """

    model_config = ConfigDict(extra="forbid")

    gpu: str
    max_utilisation: float = Field(DEFAULT_MAX_UTILISATION, gt=0.0, le=1.0)
    launch_ms: float | None = Field(None, ge=0.0, le=1000.0)
    half_fill_gflop: float | None = Field(None, ge=0.0)
    features: Literal["auto", "compute", "zeros"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"gpu": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_gpu(self) -> SimulatedGpu:
        self.gpu = GPU_PROFILES.canonical(self.gpu)  # ValueError listing the profiles
        return self

    def computes_features(self, feature_kind: str) -> bool:
        """Whether the replica runs the real feature engine of `feature_kind` (else zeros)."""
        if self.features == "auto":
            return feature_kind == "mel"
        return self.features == "compute"

    def cost_model(self, model: LipSyncModel, face_size: int) -> GpuCostModel:
        """The cost of `model` on this GPU for avatars of `face_size`.

        Raises:
            ValueError: `model` has no `gflops_per_frame` (the weight-free parametric model).
        """
        if model.gflops_per_frame is None:
            raise ValueError(f"simulated_gpu needs a network model with a GPU cost; {model.name!r} has none "
                             "(gflops_per_frame in deployments/common/models.py)")
        gpu = GPU_PROFILES.get(self.gpu)
        return GpuCostModel(
            gflops_per_frame=model.gflops_per_frame, bytes_per_frame=bytes_per_frame(model, face_size),
            peak_tflops=gpu.peak_tflops, link_gbps=gpu.link_gbps,
            launch_ms=gpu.launch_ms if self.launch_ms is None else self.launch_ms,
            half_fill_gflop=gpu.half_fill_gflop if self.half_fill_gflop is None else self.half_fill_gflop,
            max_utilisation=self.max_utilisation)
