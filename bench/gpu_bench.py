"""The lip-sync networks and `AvatarRenderer` on a GPU: frames/s, share of the FLOP ceiling, fractional replicas.

    .venv/bin/python -m bench.gpu_bench --json gpu_bench.json     # a CUDA machine: the full sweep
    .venv/bin/python -m bench.gpu_bench --models wav2lip256 --dtypes bf16 --batches 16 64 --no-serve
    .venv/bin/python -m bench.gpu_bench --replicas 4 --sessions 64 128 --no-networks
    .venv/bin/python -m bench.gpu_bench --reduced                  # what runs without CUDA (the tests)

Two parts, markdown tables on stdout and, with `--json PATH`, the same numbers as JSON.

**Networks alone.** For each model (`deployments.avatar.models.build_model`, untrained weights:
speed does not depend on their values; inputs per frame as `bench.models_bench.NETS`), dtype
(fp32, fp16, bf16 on CUDA; fp32, bf16 on a CPU) and batch (1, 8, 16, 32, 64, 128): the median
time of `net(*inputs)` under `torch.inference_mode`, timed with CUDA events after warm-up calls
(`torch.backends.cudnn.benchmark` on unless `--no-cudnn-benchmark`: the warm-up picks the
kernels; `--channels-last` converts the network and its 4-D inputs). GFLOP/frame is counted
once by `torch.utils.flop_counter.FlopCounterMode` on the CPU at batch 1. The FLOP ceiling is
measured on the device: the fastest call of an 8192² matmul per dtype (2048² on a CPU; fp32
with TF32 allowed, as cuDNN allows it for the fp32 convs), before and after the sweep, the
better kept (clocks and neighbours vary); beside it, the card's spec-sheet dense bf16/fp16
tensor rate (`SPEC_TFLOPS`, by `torch.cuda.get_device_name()`; none for an unknown card). Peak
memory is `torch.cuda.max_memory_allocated` during the point (weights included). A batch that
runs out of memory ends that dtype's sweep. Sessions = frames/s / 25.

**Serve with fractional replicas.** Ray with one GPU, `AvatarRenderer` alone with
`configs/serve.gpu.yaml`'s settings (wav2lip256, fp16, `max_batch_size: 32`,
`batch_wait_timeout_s: 0.02`, `max_ongoing_requests: 64`, memory capped at 0.88 / N of the GPU),
deployed as N replicas at `num_gpus: 1/N, num_cpus: 0` for N in 1, 2, 4. S simulated sessions
(asyncio tasks in this driver, one Serve handle) each send a chunk (K = 4 frames and its PCM
window, `bench.serve_batching_bench.render_call`) every 160 ms on the wall clock without
awaiting the previous one, as a SessionHost rendering ahead does; a session with 2 chunks
still out (`lead_chunks`) skips the next, as the app shows filler then. The sessions' phases
are spread over the 160 ms. Over the window after a warm-up (the first chunks load the avatar
on each replica): delivered frames/s (frames of chunks completed inside the window, all
sessions and the slowest one), latency p50/p95 of the chunks due in it, the share back within
the 320 ms lead, skips, requests and frames per batch and requests per replica (the replicas'
`stats()`), the driver's CPU (near 1 core, the driver limits the point), and whether 25 fps per
session was sustained (99% back within the lead, 95% of the offered frames delivered). Each
replica also says which GPU Ray gave it (`ray.get_gpu_ids()`, `CUDA_VISIBLE_DEVICES`).

**Reduced mode** (automatic without CUDA, or `--reduced`): wav2lip96, fp32, batches 1 and 2,
~0.5 s a point; Serve with a fake GPU (`ray.init(num_cpus=2, num_gpus=1)`), 2 replicas at
`num_gpus: 0.5` on device "cpu", the weight-free `parametric` model, 2 sessions for 3 s after
1.5 s of warm-up. It checks the plumbing, not a GPU: the numbers are this CPU's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.chunk_overhead_bench import K
from bench.models_bench import FPS, NETS, flops_per_frame, inputs_for
from deployments.avatar.models import build_model
from deployments.common.models import SERVED_MODELS, lipsync_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHUNK_S = K / FPS  # one chunk every 160 ms keeps a session at 25 fps
LEAD_CHUNKS = 2  # configs/serve.gpu.yaml lead_chunks: rendering runs up to 2 chunks ahead of playback
LEAD_S = LEAD_CHUNKS * CHUNK_S  # a chunk back later than this misses its playback
MIN_REPS = 5  # timed calls per point, however short the time budget
APP = "gpubench"

# Dense bf16/fp16 tensor-core rate with FP32 accumulate, TFLOP/s, from the vendors' spec sheets
# (their headline figures with sparsity are twice these). First match of the pattern wins.
SPEC_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*NVL", 835.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"RTX 4090", 165.0),
)


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    device: str
    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    seconds: float  # timed per network point, at least MIN_REPS calls
    warmup_calls: int
    matmul_n: int
    serve_model: str
    replicas: tuple[int, ...]  # replicas per GPU
    sessions: tuple[int, ...]
    serve_seconds: float
    serve_warmup_s: float
    renderer_config: dict[str, Any]  # AvatarRenderer's user_config (the memory cap is set per N)


FULL = Plan(device="cuda", models=("wav2lip96", "wav2lip256", "ultralight_hubert", "musetalk"),
            dtypes=("fp32", "fp16", "bf16"), batches=(1, 8, 16, 32, 64, 128), seconds=2.0, warmup_calls=5,
            matmul_n=8192, serve_model="wav2lip256", replicas=(1, 2, 4), sessions=(16, 64, 128),
            serve_seconds=20.0, serve_warmup_s=5.0,
            renderer_config={"max_batch_size": 32, "batch_wait_timeout_s": 0.02, "fp16": True})
REDUCED = Plan(device="cpu", models=("wav2lip96",), dtypes=("fp32",), batches=(1, 2), seconds=0.5, warmup_calls=1,
               matmul_n=2048, serve_model="parametric", replicas=(2,), sessions=(2,), serve_seconds=3.0,
               serve_warmup_s=1.5, renderer_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.02})


# ---- timing on the device ----------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_times(fn: Callable[[], Any], device: torch.device, budget_s: float, warmup_calls: int) -> list[float]:
    """Seconds of each timed `fn()` after `warmup_calls` calls (cuDNN autotuning, allocator), timed
    with CUDA events on a GPU (its queue drained between calls) and the wall clock on a CPU.
    """
    for _ in range(warmup_calls):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_REPS or time.perf_counter() - start < budget_s:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def cpu_name() -> str:
    """The CPU's model name and the vector extension torch uses on it."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return f"{model.group(1) if model else 'CPU'} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


def spec_tflops(device_name: str) -> float | None:
    """The card's spec-sheet dense bf16 rate, or None for a card not in SPEC_TFLOPS."""
    return next((tflops for pattern, tflops in SPEC_TFLOPS if re.search(pattern, device_name)), None)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, budget_s: float) -> float:
    """The rate of an n×n matmul in `dtype`: the ceiling a network in that dtype could reach here."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.rand(n, n, generator=gen, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    fastest = min(call_times(lambda: torch.mm(a, b, out=out), device, budget_s, warmup_calls=3))
    return 2 * n**3 / fastest / 1e12  # the fastest call: a ceiling, not a typical rate


def device_ceiling(plan: Plan, device: torch.device, before: dict[str, float] | None = None) -> dict[str, Any]:
    """Measured matmul TFLOP/s per dtype (the better of this and `before`: clocks and neighbours
    vary over a run, so it is measured before and after the sweep) and the spec-sheet figure.
    """
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if device.type == "cuda":  # fp32 convs use TF32 where cuDNN allows it (its default): the matmul may too
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    measured = {d: max(matmul_tflops(device, DTYPES[d], plan.matmul_n, min(plan.seconds, 1.0)),
                       (before or {}).get(d, 0.0)) for d in plan.dtypes}
    return {"device": str(device), "device_name": name, "matmul_n": plan.matmul_n, "measured_tflops": measured,
            "spec_tflops": spec_tflops(name) if device.type == "cuda" else None}


# ---- networks alone ----------------------------------------------------------------------------
def on_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = x.to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def network_point(model: nn.Module, name: str, batch: int, device: torch.device, dtype: torch.dtype,
                  plan: Plan, channels_last: bool) -> dict[str, Any]:
    """Frames/s and peak memory of one (model, dtype, batch); {"oom": True} when it does not fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        inputs = tuple(on_device(x, device, dtype, channels_last) for x in inputs_for(NETS[name], batch))
        with torch.inference_mode():
            per_call = statistics.median(call_times(lambda: model(*inputs), device, plan.seconds, plan.warmup_calls))
    except torch.cuda.OutOfMemoryError:
        return {"batch": batch, "oom": True}
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"batch": batch, "oom": False, "fps": batch / per_call, "ms_per_batch": per_call * 1e3, "peak_mib": peak}


def sweep_model(name: str, plan: Plan, device: torch.device, channels_last: bool) -> list[dict[str, Any]]:
    """Every (dtype, batch) point of one network."""
    model = build_model(name).eval()
    gflop = flops_per_frame(model, NETS[name]) / 1e9
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    rows = []
    for dtype_name in plan.dtypes:
        model = model.to(device=device, dtype=DTYPES[dtype_name])
        for batch in plan.batches:
            point = network_point(model, name, batch, device, DTYPES[dtype_name], plan, channels_last)
            row = {"model": name, "dtype": dtype_name, "gflop_per_frame": gflop, **point}
            if not point["oom"]:
                row.update(tflops=point["fps"] * gflop / 1e3, sessions=point["fps"] / FPS)
            rows.append(row)
            print(f"  {name} {dtype_name} b{batch}: " + ("out of memory" if point["oom"] else
                  f"{point['fps']:.1f} frames/s, {row['tflops']:.3g} TFLOP/s"), flush=True)
            if point["oom"]:
                break  # a larger batch will not fit either
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def networks_part(plan: Plan, channels_last: bool, cudnn_benchmark: bool) -> dict[str, Any]:
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark  # kernels autotuned in the warm-up calls
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    first = device_ceiling(plan, device)
    print(f"matmul on {first['device_name']}: {first['measured_tflops']} TFLOP/s", flush=True)
    rows = [row for name in plan.models for row in sweep_model(name, plan, device, channels_last)]
    ceiling = device_ceiling(plan, device, before=first["measured_tflops"])
    for row in rows:
        if not row["oom"]:
            spec = ceiling["spec_tflops"] if row["dtype"] != "fp32" else None  # the spec is the bf16/fp16 rate
            row["pct_measured"] = 100 * row["tflops"] / ceiling["measured_tflops"][row["dtype"]]
            row["pct_spec"] = 100 * row["tflops"] / spec if spec else None
    return {"ceiling": ceiling, "points": rows}


# ---- Serve with fractional replicas ------------------------------------------------------------
def probed_renderer() -> Any:
    """`AvatarRenderer` plus `replica()`: its stats, which replica answered and the GPU Ray gave it
    (the plain `stats()` cannot say which of N replicas a handle reached).
    """
    from deployments.avatar.deployment import AvatarRenderer

    class ProbedRenderer(AvatarRenderer.func_or_class):
        async def replica(self) -> dict[str, Any]:
            import ray
            from ray import serve

            return {**await self.stats(), "replica": serve.get_replica_context().replica_id.unique_id,
                    "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    return AvatarRenderer.options(func_or_class=ProbedRenderer)


def deploy(plan: Plan, n_replicas: int, data_dir: Path) -> Any:
    from ray import serve

    from bench.serve_batching_bench import checkpoint_for, feature_dir

    config = dict(plan.renderer_config)
    if plan.device.startswith("cuda"):
        config["gpu_memory_fraction"] = round(0.88 / n_replicas, 4)  # room for N CUDA contexts (serve.gpu.yaml)
    elif lipsync_model(plan.serve_model).needs_torch:
        config["torch_threads"] = max(1, (os.cpu_count() or 1) // n_replicas)  # replicas share the cores
    app = probed_renderer().options(
        num_replicas=n_replicas, max_ongoing_requests=64, user_config=config,
        ray_actor_options={"num_gpus": 1 / n_replicas, "num_cpus": 0},
    ).bind(data_dir=str(data_dir), model=plan.serve_model, checkpoint=checkpoint_for(plan.serve_model, data_dir),
           device=plan.device, feature_model_dir=feature_dir(plan.serve_model, data_dir))
    return serve.run(app, name=APP, route_prefix=None)


def replica_stats(handle: Any, n_replicas: int, tries: int = 60) -> dict[str, dict[str, Any]]:
    """`replica()` of every replica, by replica id: the router picks one at random per idle call."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        info = handle.replica.remote().result()
        seen[info["replica"]] = info
        if len(seen) == n_replicas:
            break
    return seen


@dataclass(frozen=True)
class Chunk:
    session: int
    due: float  # perf_counter time it was due (the session's 160 ms clock), and sent unless skipped
    done: float | None  # None: skipped, its session already LEAD_CHUNKS behind
    frames: int


async def paced_sessions(call: Callable[[int, int], Awaitable[int]], n_sessions: int, warmup_s: float,
                         seconds: float) -> tuple[list[Chunk], float, float]:
    """N sessions each sending chunk i at its phase + i × 160 ms without awaiting the previous
    one, unless LEAD_CHUNKS of its chunks are still out (a SessionHost renders at most that far
    ahead; its video shows filler meanwhile): every chunk due before the window's end, and the
    window (from, to) in perf_counter time.
    """
    log: list[Chunk] = []
    t0 = time.perf_counter()
    until = t0 + warmup_s + seconds

    async def send(sid: int, i: int, due: float) -> None:
        frames = await call(sid, i)
        log.append(Chunk(sid, due, time.perf_counter(), frames))

    async def session(sid: int) -> None:
        phase, sent = CHUNK_S * sid / n_sessions, []  # clients start independently: spread them
        i = 0
        while (due := t0 + phase + i * CHUNK_S) < until:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if sum(not task.done() for task in sent) >= LEAD_CHUNKS:
                log.append(Chunk(sid, due, None, 0))
            else:
                sent.append(asyncio.create_task(send(sid, i, due)))
            i += 1
        await asyncio.gather(*sent)

    await asyncio.gather(*(session(s) for s in range(n_sessions)))
    return log, t0 + warmup_s, until


def delivery(log: list[Chunk], t_from: float, t_to: float, n_sessions: int) -> dict[str, Any]:
    """Delivered frames/s inside the window; latency, on-time share and skips of the chunks due in it."""
    seconds = t_to - t_from
    due = [c for c in log if t_from <= c.due < t_to]
    latency = np.array([c.done - c.due for c in due if c.done is not None] or [np.nan])
    per_session = [sum(c.frames for c in log if c.session == s and c.done is not None and t_from <= c.done < t_to)
                   / seconds for s in range(n_sessions)]
    delivered = sum(per_session)
    on_time = sum(c.done is not None and c.done - c.due <= LEAD_S for c in due) / max(1, len(due))
    return {"offered_fps": n_sessions * FPS, "delivered_fps": delivered, "min_session_fps": min(per_session),
            "p50_ms": float(np.percentile(latency, 50) * 1e3), "p95_ms": float(np.percentile(latency, 95) * 1e3),
            "chunks": len(due), "skipped": sum(c.done is None for c in due), "on_time": on_time,
            "sustained": on_time >= 0.99 and delivered >= 0.95 * n_sessions * FPS}


def batching(before: dict[str, dict], after: dict[str, dict]) -> dict[str, Any]:
    """Requests and frames per batch over a run, summed over the replicas seen both times."""
    common = before.keys() & after.keys()
    delta = {k: sum(after[r][k] - before[r][k] for r in common) for k in ("batches", "requests", "frames")}
    batches = max(1, delta["batches"])
    return {"requests_per_batch": delta["requests"] / batches, "frames_per_batch": delta["frames"] / batches,
            "batches": delta["batches"], "largest_batch": max((after[r]["largest_batch"] for r in common), default=0),
            "requests_by_replica": sorted(after[r]["requests"] - before[r]["requests"] for r in common),
            "replicas_counted": len(common)}


def serve_point(handle: Any, plan: Plan, n_replicas: int, n_sessions: int, call: Callable) -> dict[str, Any]:
    before = replica_stats(handle, n_replicas)
    seconds = max(1, round(plan.serve_seconds / CHUNK_S)) * CHUNK_S  # whole chunks: every session offers as many
    cpu, wall = time.process_time(), time.perf_counter()
    log, t_from, t_to = asyncio.run(paced_sessions(call, n_sessions, plan.serve_warmup_s, seconds))
    # Near 1 core, this one-loop driver (the sessions, the crops coming back) limits the point.
    driver_cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
    after = replica_stats(handle, n_replicas)
    return {"sessions": n_sessions, **delivery(log, t_from, t_to, n_sessions), **batching(before, after),
            "driver_cores": driver_cores}


def gpu_in_use(expected: float, timeout_s: float = 5.0) -> float:
    """GPUs Ray has handed out, once they reach `expected` (its view of resources lags a little)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        used = ray.cluster_resources().get("GPU", 0.0) - ray.available_resources().get("GPU", 0.0)
        if used >= expected - 1e-3 or time.monotonic() > deadline:  # Ray keeps 4 decimals: 3 × 0.3333
            return used
        time.sleep(0.2)


@contextmanager
def ray_with_one_gpu(device: str) -> Iterator[None]:
    """Ray and Serve (no HTTP proxy: the sessions hold a handle) with one GPU, shut down after.

    On a CPU the GPU is only declared (`num_gpus=1`): Ray schedules fractional replicas on it as on
    a real one. Address "local": a Ray of its own, even where another cluster on this machine left
    its address in /tmp/ray (plain `ray.init` would join that one).
    """
    import ray
    from ray import serve

    cpus = {"num_cpus": 2} if device == "cpu" else {}  # this 2-core box; a GPU node: all its cores
    ray.init(address="local", num_gpus=1, include_dashboard=False, log_to_driver=False, **cpus)
    try:
        serve.start(proxy_location="Disabled")
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def serve_part(plan: Plan, data_dir: Path) -> list[dict[str, Any]]:
    """Every (replicas, sessions) point; Ray with one GPU (a declared, fake one on a CPU)."""
    from ray import serve

    from bench.serve_batching_bench import prepare, render_call
    from deployments.avatar.assets import load_avatar
    from deployments.common.features import pcm_samples_for

    avatar_id = prepare(plan.serve_model, data_dir)
    n_frames = load_avatar(data_dir / avatar_id, full_frames=False).n_frames
    rng = np.random.default_rng(0)  # speech-level noise: the features' cost does not depend on it
    pcms = [rng.normal(0.0, 0.1, pcm_samples_for(K)).astype(np.float32) for _ in range(8)]
    rows = []
    with ray_with_one_gpu(plan.device):
        for n in plan.replicas:
            handle = deploy(plan, n, data_dir)
            replicas = replica_stats(handle, n)
            placement = {"model": plan.serve_model, "replicas": n, "num_gpus_each": 1 / n,
                         "gpu_in_use": gpu_in_use(1.0), "replicas_seen": len(replicas),
                         "gpu_ids": sorted({",".join(r["gpu_ids"]) for r in replicas.values()}),
                         "cuda_visible_devices": sorted({str(r["cuda_visible_devices"]) for r in replicas.values()})}
            call = render_call(handle, avatar_id, n_frames, K, pcms)
            for s in plan.sessions:
                row = {**placement, **serve_point(handle, plan, n, s, call)}
                rows.append(row)
                print(f"  {n} replicas, {s} sessions: {row['delivered_fps']:.1f} of {row['offered_fps']} frames/s, "
                      f"p95 {row['p95_ms']:.0f} ms", flush=True)
            serve.delete(APP)
    return rows


# ---- tables ------------------------------------------------------------------------------------
def cell(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else f"{value:{fmt}}"


def print_networks(result: dict[str, Any]) -> None:
    c = result["ceiling"]
    print(f"\nFLOP ceiling on {c['device_name']} ({c['device']}): {c['matmul_n']}² matmul, measured; "
          f"spec sheet dense bf16/fp16: {cell(c['spec_tflops'], '.0f')} TFLOP/s\n")
    print("| dtype | measured TFLOP/s |\n|---|---|")
    for dtype, tflops in c["measured_tflops"].items():
        print(f"| {dtype} | {tflops:.3g} |")
    print("\n| model | GFLOP/frame | dtype | batch | frames/s | ms/batch | peak MiB | TFLOP/s | % of measured | "
          "% of spec | sessions @25 fps |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["points"]:
        if r["oom"]:
            print(f"| {r['model']} | {r['gflop_per_frame']:.1f} | {r['dtype']} | {r['batch']} | out of memory |"
                  + " |" * 6)
            continue
        print(f"| {r['model']} | {r['gflop_per_frame']:.1f} | {r['dtype']} | {r['batch']} | {r['fps']:.1f} | "
              f"{r['ms_per_batch']:.2f} | {cell(r['peak_mib'], '.0f')} | {r['tflops']:.3g} | "
              f"{r['pct_measured']:.1f} | {cell(r['pct_spec'])} | {r['sessions']:.1f} |")
    print("\nBest batch per model and dtype:\n")
    print("| model | dtype | batch | frames/s | % of measured | % of spec | sessions @25 fps |\n" + "|---" * 7 + "|")
    for key, best in best_points(result["points"]).items():
        print(f"| {key[0]} | {key[1]} | {best['batch']} | {best['fps']:.1f} | {best['pct_measured']:.1f} | "
              f"{cell(best['pct_spec'])} | {best['sessions']:.1f} |")


def best_points(points: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in points:
        key = (r["model"], r["dtype"])
        if not r["oom"] and (key not in best or r["fps"] > best[key]["fps"]):
            best[key] = r
    return best


def print_serve(rows: list[dict[str, Any]]) -> None:
    print(f"\nAvatarRenderer through Serve, one chunk of {K} frames per session every {CHUNK_S * 1e3:.0f} ms:\n")
    print(f"| model | replicas × num_gpus | GPU in use | GPU ids | sessions | offered frames/s | delivered frames/s | "
          f"slowest session fps | chunk p50 / p95 ms | back within {LEAD_S * 1e3:.0f} ms | "
          "skipped | requests / frames per batch | requests by replica | driver cores | 25 fps sustained |\n"
          + "|---" * 15 + "|")
    for r in rows:
        print(f"| {r['model']} | {r['replicas']} × {r['num_gpus_each']:.3g} | {r['gpu_in_use']:.2f} | "
              f"{' '.join(r['gpu_ids'])} | {r['sessions']} | {r['offered_fps']} | {r['delivered_fps']:.1f} | "
              f"{r['min_session_fps']:.1f} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {r['on_time']:.0%} | "
              f"{r['skipped']} | {r['requests_per_batch']:.1f} / {r['frames_per_batch']:.1f} | "
              f"{' '.join(map(str, r['requests_by_replica']))} | {r['driver_cores']:.2f} | "
              f"{'yes' if r['sustained'] else 'no'} |")


# ---- command line ------------------------------------------------------------------------------
def parse_plan(argv: list[str] | None) -> tuple[Plan, argparse.Namespace, bool]:
    """The plan (FULL or REDUCED with the command line's overrides), the arguments, and whether reduced."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reduced", action="store_true", help="the CPU's tiny run (automatic without CUDA)")
    parser.add_argument("--device", help="torch device (default: cuda; cpu in reduced mode, even on a GPU machine)")
    parser.add_argument("--models", nargs="+", choices=list(NETS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES))
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--seconds", type=float, help="timed seconds per network point")
    parser.add_argument("--channels-last", action="store_true", help="networks and 4-D inputs in channels_last")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="cuDNN's default kernels, untuned")
    parser.add_argument("--serve-model", choices=SERVED_MODELS, help="the renderer's model in the Serve part")
    parser.add_argument("--replicas", nargs="+", type=int, help="renderer replicas per GPU (num_gpus 1/N each)")
    parser.add_argument("--sessions", nargs="+", type=int, help="simulated sessions per Serve point")
    parser.add_argument("--serve-seconds", type=float, help="measured seconds per Serve point")
    parser.add_argument("--no-networks", action="store_true", help="skip the networks-alone part")
    parser.add_argument("--no-serve", action="store_true", help="skip the Serve part")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    reduced = args.reduced or not torch.cuda.is_available()
    names = {f.name for f in fields(Plan)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
                 if k in names and v is not None}
    plan = replace(REDUCED if reduced else FULL, **overrides)
    if torch.device(plan.device).type != "cuda" and "fp16" in plan.dtypes:
        parser.error("fp16 needs CUDA: on a CPU use fp32 and bf16")
    return plan, args, reduced


def main(argv: list[str] | None = None) -> dict[str, Any]:
    plan, args, reduced = parse_plan(argv)
    t_run = time.perf_counter()
    mode = "reduced" if reduced else "full"
    result: dict[str, Any] = {"mode": mode, "plan": asdict(plan), "torch": torch.__version__,
                              "channels_last": args.channels_last, "cudnn_benchmark": not args.no_cudnn_benchmark}
    print(f"gpu_bench, {mode} mode on {plan.device}", flush=True)
    if not args.no_networks:
        result["networks"] = networks_part(plan, args.channels_last, not args.no_cudnn_benchmark)
    if not args.no_serve:
        with tempfile.TemporaryDirectory(prefix="gpubench-") as tmp:
            result["serve"] = serve_part(plan, Path(tmp))
    result["seconds"] = time.perf_counter() - t_run
    if "networks" in result:
        print_networks(result["networks"])
    if "serve" in result:
        print_serve(result["serve"])
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
