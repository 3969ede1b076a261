"""Cross-session batching through the real `AvatarRenderer` deployment, on this CPU, in one run.

    PYTHONPATH=. .venv/bin/python bench/serve_batching_bench.py
    PYTHONPATH=. .venv/bin/python bench/serve_batching_bench.py --models wav2lip96 --sessions 1 4 8

N = 1, 4, 8 and 16 concurrent "sessions" (asyncio tasks in this driver, one Serve handle) each
send back-to-back 4-frame `RenderRequest`s (random features of the model's shape) for a fixed
time, first to the deployment with `max_batch_size: 16, batch_wait_timeout_s: 0.02` and then,
reconfigured through `user_config` (no restart, same replica and cache), with `max_batch_size: 1`.
wav2lip96 (random weights in Wav2Lip's checkpoint layout, astronaut avatar built at its native 96²
crop) and the parametric renderer (256² crop) for reference. `ray.init(num_cpus=2)`; Ray is shut
down at the end.

Also printed: the engine called in this process before Ray starts (1 thread and all cores, batch
4 and 32), which bounds what batching inside the replica can gain, and the CPU the replica and
this driver used during each run (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from ray import serve

from deployments.avatar.assets import load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.deployment import AvatarRenderer
from deployments.avatar.lipsync import make_engine
from deployments.avatar.models import build_model
from deployments.avatar.types import RenderRequest

CHUNK = 4  # frames per request, as configs/serve.yaml's chunk_frames
BATCHED = {"max_batch_size": 16, "batch_wait_timeout_s": 0.02}
UNBATCHED = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
FACE_SIZE = {"wav2lip96": 96, "parametric": 256}  # each model's native crop: no resize in the way


@dataclass(frozen=True)
class Done:
    session: int
    t: float  # perf_counter at completion
    frames: int
    latency_s: float


async def session(handle, sid: int, avatar_id: str, n_frames: int, feats: list[np.ndarray],
                  deadline: float, log: list[Done]) -> None:
    """One session: back-to-back chunks over the avatar's frames until `deadline`."""
    i = 7 * CHUNK * sid  # sessions at different places in the idle loop
    while time.perf_counter() < deadline:
        req = RenderRequest(avatar_id, tuple((i + j) % n_frames for j in range(CHUNK)),
                            feats[(i // CHUNK) % len(feats)])
        t = time.perf_counter()
        res = await handle.render.remote(req)
        done = time.perf_counter()
        assert res.crops.shape[0] == CHUNK
        log.append(Done(sid, done, CHUNK, done - t))
        i += CHUNK


def throughput(log: list[Done], t_from: float, t_to: float) -> tuple[float, float]:
    """Frames/s of all sessions inside [t_from, t_to], and the p50 request latency there.

    Each session's rate runs from its first to its last completion in the window, so a long
    batch straddling the window's edges biases nothing (a fixed window would count a 64-frame
    batch or not at all), and the sum does not depend on the order in which one batch's results
    reach their callers (tens of ms apart for 16 requests).
    """
    inside = [d for d in log if t_from <= d.t <= t_to]
    total = 0.0
    for sid in {d.session for d in log}:
        mine = sorted((d for d in inside if d.session == sid), key=lambda d: d.t)
        if len(mine) < 2:
            return float("nan"), float("nan")  # window shorter than two of this session's requests
        total += sum(d.frames for d in mine[1:]) / (mine[-1].t - mine[0].t)
    return total, statistics.median(d.latency_s for d in inside)


async def load(handle, avatar_id: str, n_frames: int, n_sessions: int, feat_shape: tuple[int, ...],
               warmup_s: float, seconds: float) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((CHUNK, *feat_shape)).astype(np.float32) for _ in range(8)]
    log: list[Done] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(session(handle, sid, avatar_id, n_frames, feats, t0 + warmup_s + seconds, log)
                           for sid in range(n_sessions)))
    return throughput(log, t0 + warmup_s, t0 + warmup_s + seconds)


def deploy(model: str, data_dir: Path, checkpoint: str | None, cfg: dict):
    app = AvatarRenderer.options(user_config=cfg).bind(data_dir=str(data_dir), model=model,
                                                       checkpoint=checkpoint, device="cpu")
    return serve.run(app, name="bench", route_prefix=None)


def replica_pid() -> int | None:
    """The newest AvatarRenderer replica process, found by its title (no dashboard, no state API)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if b"ServeReplica:bench:AvatarRenderer" in (proc / "cmdline").read_bytes():
                start = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19])
                found.append((start, int(proc.name)))
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
    return max(found)[1] if found else None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def in_process_fps(model: str, data_dir: Path, avatar_id: str, checkpoint: str | None,
                   batch: int, reps: int) -> float:
    """The engine alone in this process, at the thread count set by the caller."""
    avatar = load_avatar(data_dir / avatar_id, full_frames=False)
    engine = make_engine(model, face_size=avatar.face_size, checkpoint=checkpoint)
    crops = avatar.face_crops[np.arange(batch) % avatar.n_frames]
    feats = np.random.default_rng(0).standard_normal((batch, *engine.feature_shape)).astype(np.float32)
    engine.render(crops, feats)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        engine.render(crops, feats)
    return batch * reps / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["wav2lip96", "parametric"], choices=list(FACE_SIZE))
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per point (default: wav2lip96 24, parametric 8)")
    args = parser.parse_args()
    t_run = time.perf_counter()
    results, refs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        checkpoint = data_dir / "wav2lip96.pth"
        # Speed does not depend on the weights: the untrained network in Wav2Lip's layout.
        torch.save({"state_dict": build_model("wav2lip96").state_dict()}, checkpoint)
        for model in args.models:
            build_avatar(f"b{FACE_SIZE[model]}", astronaut=True, out_dir=data_dir,
                         face_size=FACE_SIZE[model], idle_seconds=1, progress=False)
        # The engine alone, before Ray starts: what batching inside one process can gain at all.
        cores = torch.get_num_threads()
        for model in args.models:
            ckpt = str(checkpoint) if model != "parametric" else None
            reps = 2 if model == "wav2lip96" else 30
            for threads in sorted({1, cores}):
                torch.set_num_threads(threads)
                refs.append((model, threads,
                             in_process_fps(model, data_dir, f"b{FACE_SIZE[model]}", ckpt, CHUNK, reps * 4),
                             in_process_fps(model, data_dir, f"b{FACE_SIZE[model]}", ckpt, 8 * CHUNK, reps)))
        torch.set_num_threads(cores)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(proxy_location="Disabled")  # no HTTP: the callers hold a handle
        try:
            for model in args.models:
                ckpt = str(checkpoint) if model != "parametric" else None
                avatar_id = f"b{FACE_SIZE[model]}"
                n_frames = load_avatar(data_dir / avatar_id, full_frames=False).n_frames
                feat_shape = tuple(make_engine(model, face_size=FACE_SIZE[model], checkpoint=ckpt).feature_shape)
                seconds = args.seconds or (24.0 if model == "wav2lip96" else 8.0)
                warmup_s = 5.0 if model == "wav2lip96" else 2.0  # first batches load the avatar
                for n in args.sessions:
                    row = {"model": model, "n": n}
                    # Interleaved per N, so slow drift on a shared box hits both alike.
                    for key, cfg in (("batched", BATCHED), ("unbatched", UNBATCHED)):
                        handle = deploy(model, data_dir, ckpt, cfg)  # user_config only: no restart
                        pid = replica_pid()
                        before, cpu0, own0 = handle.stats.remote().result(), cpu_seconds(pid), time.process_time()
                        t = time.perf_counter()
                        fps, p50 = asyncio.run(load(handle, avatar_id, n_frames, n, feat_shape,
                                                    warmup_s, seconds))
                        wall = time.perf_counter() - t
                        after = handle.stats.remote().result()
                        batches = max(1, after["batches"] - before["batches"])
                        row[key] = {"fps": fps, "p50_s": p50,
                                    "per_batch": (after["requests"] - before["requests"]) / batches,
                                    "replica_cores": (cpu_seconds(pid) - cpu0) / wall,
                                    "driver_cores": (time.process_time() - own0) / wall}
                    results.append(row)
                    print(row, flush=True)
                serve.delete("bench")
        finally:
            serve.shutdown()
            ray.shutdown()

    print("\nThe engine alone in this process (`engine.render`), before Ray starts:\n")
    print("| model | torch threads | batch 4 frames/s | batch 32 frames/s | 32 / 4 |\n|---|---|---|---|---|")
    for model, threads, f4, f32 in refs:
        print(f"| {model} | {threads} | {f4:.1f} | {f32:.1f} | {f32 / f4:.2f}× |")
    print("\nThrough Serve (4-frame requests, N sessions back to back):\n")
    print("| model | sessions | unbatched frames/s | batched frames/s | batched / unbatched | "
          "requests per batch | p50 request ms, unbatched → batched | replica cores, unbatched → batched |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        u, b = r["unbatched"], r["batched"]
        print(f"| {r['model']} | {r['n']} | {u['fps']:.1f} | {b['fps']:.1f} | {b['fps'] / u['fps']:.2f}× | "
              f"{b['per_batch']:.1f} | {u['p50_s'] * 1000:.0f} → {b['p50_s'] * 1000:.0f} | "
              f"{u['replica_cores']:.2f} → {b['replica_cores']:.2f} |")
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()}); driver (callers) cores: "
          + ", ".join(f"{r['model']} N={r['n']} {r['unbatched']['driver_cores']:.2f}/{r['batched']['driver_cores']:.2f}"
                      for r in results))


if __name__ == "__main__":
    main()
