"""How many talking sessions one renderer replica carries at 25 fps, on a simulated GPU.

    scripts/loopback_only.sh .venv/bin/python -m bench.control_plane_bench
    scripts/loopback_only.sh .venv/bin/python -m bench.control_plane_bench --sessions 50 100 --seconds 8
    scripts/loopback_only.sh .venv/bin/python -m bench.control_plane_bench --gpu rtx4090 --model wav2lip96

One `AvatarRenderer` replica with `simulated_gpu` (wav2lip256 on an H100 by default: no network,
each batch sleeps as long as `deployments/avatar/gpu_cost.py` says) is driven by N talking
sessions from `SessionDriver` replicas (`num_cpus: 0`, calling the renderer through a deployment
handle as `SessionHost` does). Each session sends one K = 4 frame chunk (its 8,960-sample PCM
window) every 160 ms on its own schedule, phases spread over the 160 ms, and at most one chunk
in flight, as the conductor does. With `lead_chunks: 2` the conductor asks for the chunk of
slots [s, s + 4) when slot s - 7 starts playing, so a chunk is **on time** when it is back
within `DEADLINE_S` (280 ms) of its scheduled send; a late chunk delays the session's next one.
A session **kept 25 fps** when every chunk of the window was on time.

Each variant (`VARIANTS`) is its own Serve app, deployed side by side; the points alternate
between them per N, so before and after share the box's load of the moment:

- `serve.batch`: the renderer as it batched before (`@serve.batch`: batches close on the timer,
  one at a time, features then network in one thread), `configs/serve.gpu.yaml`'s settings;
- `batcher`: this tree's renderer (`deployments/avatar/batching.py`: a batch is taken when one
  of 2 slots is free, so the next batch's features overlap this one's network), same settings;
- `batcher-512`: the same with `max_ongoing_requests: 512`, `max_batch_size: 128` and a 5 ms wait;
- `coalesced`: the same renderer, each driver holding a chunk up to 10 ms so that the chunks due
  together go in one `render_many` call (one Serve round trip for many sessions). Per point: chunks on time,
sessions that kept 25 fps, chunk latency (send to crops back) p50/p95/p99, requests per batch
(from the renderer's `batch_sizes`), the simulated GPU's busy share (`render_s`), the mel
features' CPU time per batch, per-chunk overhead (p50 latency minus the mean GPU time of the
batch a chunk rode in), and CPU cores of each process (/proc): the renderer, the drivers, Serve's
controller, Ray's raylet and GCS, and the whole box.

`ray.init(num_cpus=2)`; the driver replicas and the renderer share this box's 2 cores, so at
some N the client, not the server, is the limit: the CPU columns tell which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import procstat

K = 4  # frames per chunk (configs/serve.yaml chunk_frames)
CHUNK_S = K * 0.04  # one chunk every 160 ms at 25 fps
DEADLINE_S = (2 * K - 1) * 0.04  # lead_chunks 2: asked for 7 frames before it plays
PROCESSES = ("renderer", "drivers", "controller")


@dataclass(frozen=True)
class Variant:
    """A renderer deployment to compare: its batching, options and user_config."""

    about: str
    serve_batch: bool  # the renderer as it batched before: `@serve.batch`, one batch at a time
    options: dict[str, Any]
    user_config: dict[str, Any]
    coalesce: bool = False  # a driver sends the chunks due together in one `render_many` call


GPU_YAML = {"max_batch_size": 32, "batch_wait_timeout_s": 0.02}  # configs/serve.gpu.yaml's renderer
TUNED = {"max_batch_size": 128, "batch_wait_timeout_s": 0.005}
COALESCE_S = 0.01  # how long a driver holds a chunk for others to share its call
VARIANTS: dict[str, Variant] = {
    "serve.batch": Variant("before: @serve.batch, configs/serve.gpu.yaml (32 a batch, 20 ms, 64 ongoing)",
                           True, {"max_ongoing_requests": 64}, GPU_YAML),
    "batcher": Variant("batches taken when the renderer is free, 2 in flight; same config",
                       False, {"max_ongoing_requests": 64}, GPU_YAML),
    "batcher-512": Variant("the same, 512 ongoing requests, 128 a batch, 5 ms wait", False,
                           {"max_ongoing_requests": 512}, TUNED),
    "coalesced": Variant(f"the same, each driver's chunks due within {COALESCE_S * 1e3:.0f} ms in one render_many call",
                         False, {"max_ongoing_requests": 512}, TUNED, coalesce=True),
}


def serve_batch_renderer() -> Any:
    """`AvatarRenderer` batching as before `deployments/avatar/batching.py`: `@serve.batch`
    (batches close on the timer) and one batch at a time (features, then the network).
    """
    from ray import serve

    from deployments.avatar.deployment import AvatarRenderer

    class SerialServeBatch:
        def __init__(self, run: Any) -> None:
            self._run = run

        def configure(self, *, max_batch_size: int, batch_wait_s: float) -> None:
            self._batch.set_max_batch_size(max_batch_size)
            self._batch.set_batch_wait_timeout_s(batch_wait_s)

        async def submit(self, job: Any) -> Any:
            return await self._batch(job)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def _batch(self, jobs: list[Any]) -> list[Any]:
            return await self._run(jobs)

    class ServeBatchRenderer(AvatarRenderer.func_or_class):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._batcher = SerialServeBatch(self._render_jobs)

    return AvatarRenderer.options(func_or_class=ServeBatchRenderer)


# ---- the sessions, in a driver replica --------------------------------------------------------
def driver_class() -> Any:
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4)
    class SessionDriver:
        """SessionHost's side: N sessions sending one chunk each every 160 ms."""

        def __init__(self, renderer_app: str, avatar_id: str, n_frames: int, coalesce: bool) -> None:
            from deployments.avatar.batching import Batcher

            self._renderer = serve.get_deployment_handle("AvatarRenderer", app_name=renderer_app)
            self._avatar, self._n_frames = avatar_id, n_frames
            # the same batcher as the renderer's, on the calling side: one call per batch of chunks
            self._calls = Batcher(self._render_many, max_batch_size=1024, batch_wait_s=COALESCE_S, slots=4)
            self._render = self._calls.submit if coalesce else self._renderer.render.remote
            rng = np.random.default_rng(0)
            from deployments.common.features import pcm_samples_for

            self._pcms = [rng.normal(0.0, 0.1, pcm_samples_for(K)).astype(np.float32) for _ in range(8)]

        async def run(self, n_sessions: int, first: int, total: int, warmup_s: float, seconds: float
                      ) -> list[tuple[int, float, float, float]]:
            """(session, scheduled, sent, done) of each chunk scheduled after the warm-up, as
            seconds from the start; sessions `first`.. of `total` (their phases). A session that
            has fallen behind stops sending at the end of the window: its unsent chunks are missing.
            """
            from deployments.avatar.types import RenderRequest

            t0 = time.perf_counter() + 0.05
            end = warmup_s + seconds
            kept: list[tuple[int, float, float, float]] = []

            async def session(sid: int) -> None:
                phase = CHUNK_S * sid / total
                i = 0
                while (scheduled := phase + i * CHUNK_S) < end and time.perf_counter() - t0 < end:
                    await asyncio.sleep(max(0.0, t0 + scheduled - time.perf_counter()))
                    sent = time.perf_counter() - t0
                    indices = tuple((sid * 7 + i * K + j) % self._n_frames for j in range(K))
                    req = RenderRequest(self._avatar, indices, self._pcms[(sid + i) % len(self._pcms)])
                    await self._render(req)
                    if scheduled >= warmup_s:
                        kept.append((sid, scheduled, sent, time.perf_counter() - t0))
                    i += 1

            await asyncio.gather(*(session(s) for s in range(first, first + n_sessions)))
            return kept

        async def _render_many(self, reqs: list[Any]) -> list[Any]:
            return await self._renderer.render_many.remote(reqs)

    return SessionDriver


# ---- deployment --------------------------------------------------------------------------------
def deploy(name: str, variant: Variant, args: argparse.Namespace, data_dir: Path, n_frames: int) -> list[Any]:
    """The app `name` (a simulated-GPU renderer) and `args.drivers` apps `name-d<i>` of one
    `SessionDriver` each (apps, so that each driver gets its own handle and its own sessions);
    returns the drivers' handles.
    """
    from ray import serve

    from deployments.avatar.deployment import AvatarRenderer

    simulated = {"gpu": args.gpu, "features": args.features}
    deployment = serve_batch_renderer() if variant.serve_batch else AvatarRenderer
    renderer = deployment.options(**variant.options, user_config=variant.user_config).bind(
        data_dir=str(data_dir), model=args.model, device="cpu", simulated_gpu=simulated)
    serve.run(renderer, name=name, route_prefix=None).avatar_info.remote("bench").result()  # loaded
    return [serve.run(driver_class().bind(name, "bench", n_frames, variant.coalesce), name=f"{name}-d{d}",
                      route_prefix=None)
            for d in range(args.drivers)]


def box_busy_s() -> float:
    """CPU seconds the whole box has spent not idle (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / procstat.CLK_TCK


def my_processes() -> dict[int, str]:
    """Command line by pid of this process's descendants (its Ray instance: GCS, raylet,
    workers), not of other Ray instances on the machine.
    """
    parent, cmdline = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                pid = int(entry.name)
                parent[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    mine, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, ppid in parent.items() if ppid in mine} - mine
        mine |= found
        grew = bool(found)
    return {pid: cmdline.get(pid, "") for pid in mine - {os.getpid()}}


def point_pids(app: str) -> dict[str, list[int]]:
    """This run's processes by role, for the point of app `app`."""
    roles = {"renderer": f"ServeReplica:{app}:AvatarRenderer", "drivers": f"ServeReplica:{app}-d",
             "controller": "ServeController", "raylet": "/raylet ", "gcs": "/gcs_server "}
    procs = my_processes()
    return {role: [pid for pid, cmd in procs.items() if fragment in cmd] for role, fragment in roles.items()}


def cpu_now(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {role: sum(procstat.cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    out["box"] = box_busy_s()
    return out


# ---- one point ---------------------------------------------------------------------------------
def sessions_of(n: int, drivers: int) -> Iterator[tuple[int, int]]:
    """(first session, count) of each driver replica."""
    base, extra = divmod(n, drivers)
    first = 0
    for d in range(drivers):
        count = base + (d < extra)
        yield first, count
        first += count


def run_point(app: str, handles: list[Any], n: int, args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    renderer = serve.get_deployment_handle("AvatarRenderer", app_name=app)
    pids = point_pids(app)
    before, cpu0, t0 = renderer.stats.remote().result(), cpu_now(pids), time.perf_counter()
    calls = [h.run.remote(count, first, n, args.warmup, args.seconds)
             for h, (first, count) in zip(handles, sessions_of(n, args.drivers), strict=True) if count]
    chunks = [c for call in calls for c in call.result(timeout_s=args.warmup + args.seconds + 600)]
    wall = time.perf_counter() - t0
    after, cpu1 = renderer.stats.remote().result(), cpu_now(pids)
    cores = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
    cores["others"] = cores["box"] - sum(v for k, v in cores.items() if k != "box")  # not this run's
    return summarise(n, chunks, before, after, cores, args)


def summarise(n: int, chunks: list[tuple[int, float, float, float]], before: dict[str, Any],
              after: dict[str, Any], cores: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    from deployments.avatar.gpu_cost import SimulatedGpu
    from deployments.common.models import lipsync_model

    cost = SimulatedGpu(gpu=args.gpu).cost_model(lipsync_model(args.model), args.face_size)
    sizes = {int(b): c - before["batch_sizes"].get(b, 0) for b, c in after["batch_sizes"].items()}
    sizes = {b: c for b, c in sizes.items() if c > 0}
    batches = max(1, after["batches"] - before["batches"])
    requests = sum(b * c for b, c in sizes.items()) or 1
    # the GPU time of the batch a request rode in, averaged over requests (big batches weigh more)
    own_batch_s = sum(c * b * cost.batch_s(b * K) for b, c in sizes.items()) / requests
    latency = [done - sent for _, _, sent, done in chunks] or [float("nan")]
    window = args.warmup + args.seconds
    # every chunk scheduled in the window counts: one never sent (its session fell behind) is late
    expected = {sid: sum(1 for i in range(int(window / CHUNK_S) + 1)
                         if args.warmup <= CHUNK_S * (sid / n + i) < window) for sid in range(n)}
    on_time: dict[int, int] = dict.fromkeys(range(n), 0)
    for sid, scheduled, _, done in chunks:
        on_time[sid] += done <= scheduled + DEADLINE_S
    return {
        "sessions": n, "chunks": len(chunks), "on_time": sum(on_time.values()) / max(1, sum(expected.values())),
        "kept_25fps": sum(on_time[sid] == expected[sid] for sid in range(n)), "load": os.getloadavg()[0],
        "p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
        "p99": float(np.percentile(latency, 99)),
        "per_batch": requests / batches, "largest": max(sizes, default=0),
        "median_batch": weighted_median(sizes),
        "gpu_busy": (after["render_s"] - before["render_s"]) / window,
        "features_ms": (after["features_s"] - before["features_s"]) / batches * 1e3,
        "own_batch_ms": own_batch_s * 1e3,
        "overhead_ms": (float(np.percentile(latency, 50)) - own_batch_s) * 1e3,
        "cores": cores,
    }


def weighted_median(sizes: dict[int, int]) -> int:
    """The batch size the median request rode in."""
    ordered = sorted(sizes.items())
    half, seen = sum(b * c for b, c in ordered) / 2, 0
    for b, c in ordered:
        seen += b * c
        if seen >= half:
            return b
    return 0


# ---- report ------------------------------------------------------------------------------------
def print_tables(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\n{args.model} on a simulated {args.gpu}, features {args.features}, {args.face_size} px crops, "
          f"{args.drivers} driver replica(s), "
          f"{args.seconds:g} s a point after {args.warmup:g} s; on time: back within {DEADLINE_S * 1e3:.0f} ms "
          "of the scheduled send\n")
    print("| variant | sessions | chunks on time | sessions at 25 fps | latency p50 / p95 / p99 ms | "
          "requests per batch: mean / median request's / largest | GPU busy | features ms a batch | "
          "own batch GPU ms | overhead ms (p50 - own batch) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, points in results.items():
        for n, p in points.items():
            print(f"| {name} | {n} | {p['on_time']:.1%} | {p['kept_25fps']}/{n} | {p['p50'] * 1e3:.0f} / "
                  f"{p['p95'] * 1e3:.0f} / {p['p99'] * 1e3:.0f} | {p['per_batch']:.1f} / {p['median_batch']} / "
                  f"{p['largest']} | {p['gpu_busy']:.0%} | {p['features_ms']:.1f} | {p['own_batch_ms']:.1f} | "
                  f"{p['overhead_ms']:.1f} |")
    print("\nCPU cores per process (CPU seconds / wall seconds of the point)\n")
    keys = [*PROCESSES, "raylet", "gcs", "others", "box"]
    print(f"| variant | sessions | {' | '.join(keys)} | load average |")
    print(f"|---|---|{'---|' * (len(keys) + 1)}")
    for name, points in results.items():
        for n, p in points.items():
            cells = " | ".join(f"{p['cores'][k]:.2f}" for k in keys)
            print(f"| {name} | {n} | {cells} | {p['load']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", nargs="+", type=int, default=[25, 50, 100, 200, 400])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default="wav2lip256")
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--features", default="auto", choices=["auto", "compute", "zeros"])
    parser.add_argument("--drivers", type=int, default=1, help="SessionDriver replicas sharing the sessions")
    parser.add_argument("--face-size", type=int, help="the avatar's crop side, what travels back (default: the "
                        "model's native size; the simulated GPU's transfers stay at the native size)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.avatar.builder import build_avatar
    from deployments.common.models import lipsync_model

    args.face_size = args.face_size or lipsync_model(args.model).native_face_size or 256
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cpbench-") as tmp:
        data_dir = Path(tmp)
        build_avatar("bench", astronaut=True, out_dir=data_dir, face_size=args.face_size, idle_seconds=1.0,
                     progress=False)
        # "local": a new instance, never a cluster someone started on this machine with `ray start`
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        try:
            handles = {name: deploy(name, VARIANTS[name], args, data_dir, 25) for name in args.variants}
            results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in args.variants}
            for n in args.sessions:
                for name in args.variants:
                    p = results[name][n] = run_point(name, handles[name], n, args)
                    print(f"  {name} N={n}: {p['on_time']:.1%} on time, {p['kept_25fps']}/{n} at 25 fps, p50 "
                          f"{p['p50'] * 1e3:.0f} ms, {p['per_batch']:.1f} requests a batch, GPU {p['gpu_busy']:.0%}, "
                          f"renderer {p['cores']['renderer']:.2f} / drivers {p['cores']['drivers']:.2f} / box "
                          f"{p['cores']['box']:.2f} cores", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    print_tables(results, args)
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
