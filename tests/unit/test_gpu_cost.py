"""The simulated GPU: its cost model (pure arithmetic), its engine's contract, its config, and the
renderer's `Batcher` (batches taken when a slot is free, not on a timer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.avatar.batching import Batcher
from deployments.avatar.gpu_cost import GPU_PROFILES, GpuCostModel, SimulatedGpu, bytes_per_frame
from deployments.avatar.lipsync.simulated import SimulatedGpuEngine, ZeroFeatures
from deployments.common.features import FEATURE_SHAPES, pcm_samples_for
from deployments.common.models import SERVED_MODELS, lipsync_model
from serve_app import AppArgs

pytestmark = pytest.mark.unit

H100 = GpuCostModel(gflops_per_frame=55.6, bytes_per_frame=400_000, peak_tflops=800.0, link_gbps=50.0,
                    launch_ms=1.5, half_fill_gflop=400.0, max_utilisation=0.4)


def test_batch_time_is_launch_plus_transfers_plus_compute() -> None:
    frames = 64
    work = frames * 55.6
    utilisation = 0.4 * work / (work + 400.0)
    want = 1.5e-3 + frames * 400_000 / 50e9 + work / (800e3 * utilisation)
    assert H100.utilisation(frames) == pytest.approx(utilisation)
    assert H100.batch_s(frames) == pytest.approx(want)
    # the utilisation curve is the same as paying half_fill GFLOP of idle time once a batch
    assert H100.compute_s(frames) == pytest.approx((work + 400.0) / (800e3 * 0.4))
    assert H100.batch_s(0) == 0.0 and H100.utilisation(0) == 0.0


def test_bigger_batches_cost_less_per_frame_and_approach_the_ceiling() -> None:
    per_frame = [H100.batch_s(b) / b for b in (4, 16, 64, 256, 1024)]
    assert per_frame == sorted(per_frame, reverse=True)
    assert H100.utilisation(4) < H100.utilisation(1024) < 0.4
    # docs/PERFORMANCE.md: wav2lip256 on an H100 at 40% of 800 TFLOP/s is 5,758 frames/s
    assert 0.95 * 5758 < H100.frames_per_s(100_000) < 5758


def test_every_network_has_a_gpu_cost_and_parametric_none() -> None:
    sim = SimulatedGpu(gpu="h100")
    for name in SERVED_MODELS:
        spec = lipsync_model(name)
        if spec.needs_torch:
            assert spec.gflops_per_frame and sim.cost_model(spec, 256).batch_s(4) > 0
    with pytest.raises(ValueError, match="'parametric' has none"):
        sim.cost_model(lipsync_model("parametric"), 256)


def test_bytes_per_frame_are_the_networks_crop_both_ways_and_the_features() -> None:
    mel = 80 * 16 * 4
    assert bytes_per_frame(lipsync_model("wav2lip96"), face_size=256) == 2 * 96 * 96 * 3 + mel
    assert bytes_per_frame(lipsync_model("wav2lip256"), face_size=128) == 2 * 256 * 256 * 3 + mel


def test_config_takes_a_name_or_a_mapping_and_names_the_profiles_when_wrong() -> None:
    assert SimulatedGpu.model_validate("h100").gpu == "h100"
    assert SimulatedGpu.model_validate({"gpu": "4090", "max_utilisation": 0.3}).gpu == "rtx4090"
    with pytest.raises(ValidationError, match="unknown GPU profile 'tpu': choose one of h100"):
        SimulatedGpu.model_validate("tpu")
    with pytest.raises(ValidationError, match="Extra inputs"):
        SimulatedGpu.model_validate({"gpu": "h100", "speed": 2})
    with pytest.raises(ValidationError):
        SimulatedGpu.model_validate({"gpu": "h100", "max_utilisation": 0})
    overridden = SimulatedGpu(gpu="h100", launch_ms=0.0, half_fill_gflop=0.0).cost_model(lipsync_model("wav2lip256"), 256)
    assert overridden.launch_ms == 0.0 and overridden.half_fill_gflop == 0.0
    assert GPU_PROFILES.get("h100").peak_tflops == 800.0


def test_features_auto_computes_mel_only() -> None:
    auto = SimulatedGpu(gpu="h100")
    assert auto.computes_features("mel") and not auto.computes_features("hubert")
    assert not SimulatedGpu(gpu="h100", features="zeros").computes_features("mel")
    assert SimulatedGpu(gpu="h100", features="compute").computes_features("whisper")


def test_app_args_accept_simulated_gpu_for_a_network_only() -> None:
    assert AppArgs(model="wav2lip", simulated_gpu="h100").simulated_gpu.gpu == "h100"
    assert AppArgs().simulated_gpu is None
    with pytest.raises(ValidationError, match="unknown GPU profile"):
        AppArgs(model="wav2lip", simulated_gpu={"gpu": "v100"})
    with pytest.raises(ValidationError, match="'parametric' has none"):
        AppArgs(simulated_gpu="h100")


def test_simulated_engine_keeps_the_contract_and_takes_the_stated_time() -> None:
    cost = SimulatedGpu(gpu="l4").cost_model(lipsync_model("wav2lip256"), 64)
    engine = SimulatedGpuEngine("wav2lip256", face_size=64, cost=cost)
    assert engine.feature_kind == "mel" and engine.feature_shape == FEATURE_SHAPES["mel"]
    crops = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    crops.flags.writeable = False  # as Ray hands them over
    t0 = time.perf_counter()
    out = engine.render(crops, np.zeros((8, 80, 16), np.float32))
    took = time.perf_counter() - t0
    assert out.shape == crops.shape and out.dtype == np.uint8 and np.array_equal(out, crops)
    assert out is not crops and out.flags.writeable
    assert cost.batch_s(8) <= took < cost.batch_s(8) + 0.2
    with pytest.raises(ValueError, match="mel features must be"):
        engine.render(crops, np.zeros((8, 50, 384), np.float32))


def test_zero_features_have_the_kinds_shape_and_check_the_pcm() -> None:
    engine = ZeroFeatures("hubert")
    (out,) = engine.batch([np.zeros(pcm_samples_for(3), np.float32)], [3])
    assert out.shape == (3, *FEATURE_SHAPES["hubert"]) and out.dtype == np.float32 and not out.any()
    with pytest.raises(ValueError, match="must hold"):
        engine.batch([np.zeros(100, np.float32)], [3])


# ---- Batcher -----------------------------------------------------------------------------------
class Recorder:
    """A `run` that records its batches and takes `seconds` each."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds

    async def __call__(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        await asyncio.sleep(self.seconds)
        return [job * 10 for job in jobs]


@asynccontextmanager
async def running(run: Callable[[list[int]], Awaitable[list[int]]], *, max_batch_size: int, batch_wait_s: float,
                  slots: int = 1) -> AsyncIterator[Batcher[int, int]]:
    """A `Batcher` closed at the end (no task outlives the test)."""
    batcher = Batcher(run, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, slots=slots)
    try:
        yield batcher
    finally:
        await batcher.close()


async def test_batches_grow_while_the_slot_is_busy() -> None:
    run = Recorder(seconds=0.05)
    async with running(run, max_batch_size=100, batch_wait_s=0.0, slots=1) as batcher:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the first batch is running: the next ones queue behind it
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 8)]
        assert await asyncio.gather(first, *rest) == [i * 10 for i in range(8)]
        assert run.batches == [[0], list(range(1, 8))]


async def test_an_idle_batcher_waits_for_company_and_stops_at_max() -> None:
    run = Recorder()
    async with running(run, max_batch_size=3, batch_wait_s=0.2, slots=1) as batcher:
        t0 = time.monotonic()
        full = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        assert full == [0, 10, 20] and time.monotonic() - t0 < 0.15  # full: no wait
        t0 = time.monotonic()
        assert await batcher.submit(5) == 50
        assert time.monotonic() - t0 >= 0.19  # alone: the whole wait
        batcher.configure(max_batch_size=3, batch_wait_s=0.0)
        t0 = time.monotonic()
        await batcher.submit(6)
        assert time.monotonic() - t0 < 0.1
        assert run.batches == [[0, 1, 2], [5], [6]]


async def test_two_slots_overlap_batches() -> None:
    run = Recorder(seconds=0.1)
    async with running(run, max_batch_size=1, batch_wait_s=0.0, slots=2) as batcher:
        t0 = time.monotonic()
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
        assert time.monotonic() - t0 < 0.18


async def test_cancelled_callers_leave_the_queue_and_errors_reach_the_whole_batch() -> None:
    run = Recorder(seconds=0.05)
    async with running(run, max_batch_size=10, batch_wait_s=0.0, slots=1) as batcher:
        busy = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        assert await busy == 0 and await kept == 20
        assert run.batches == [[0], [2]]

    async def fails(jobs: list[int]) -> list[int]:
        raise RuntimeError("device lost")

    async with running(fails, max_batch_size=10, batch_wait_s=0.05, slots=1) as failing:
        results = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
        assert [str(r) for r in results] == ["device lost", "device lost"]


@pytest.mark.parametrize(("model", "simulated", "message"), [
    ("wav2lip256", "tpu", "unknown GPU profile 'tpu'"),
    ("parametric", "h100", "'parametric' has none"),
])
def test_the_renderer_refuses_a_bad_simulated_gpu(tmp_path, model: str, simulated: str, message: str) -> None:
    from deployments.avatar.deployment import AvatarRenderer
    from deployments.common.errors import NotConfigured

    with pytest.raises(NotConfigured, match=message):
        AvatarRenderer.func_or_class(data_dir=str(tmp_path), model=model, simulated_gpu=simulated)
