"""Cross-session batching through the real `AvatarRenderer` deployment, on this CPU, in one run.

    .venv/bin/python -m bench.serve_batching_bench
    .venv/bin/python -m bench.serve_batching_bench --models wav2lip96 --sessions 1 4 8
    .venv/bin/python -m bench.serve_batching_bench --models wav2lip96 --malloc-main-arena

Every served model (`MODELS` below: face size, frames per request, measured and warm-up seconds,
the in-process reference's batch sizes and repeats). N concurrent "sessions" (asyncio tasks in
this driver, one Serve handle) each send back-to-back `RenderRequest`s (a chunk's random 16 kHz
PCM window, `common.features.pcm_samples_for(frames)` samples) for a fixed time, first to the
deployment with `max_batch_size: 16, batch_wait_timeout_s: 0.02` and then, reconfigured through
`user_config` (no restart, same replica and cache), with `max_batch_size: 1`. Untrained weights
in each model's published layout (speed does not depend on their values): Wav2Lip's
`{"state_dict": ...}`, Ultralight's `ultralight.pth` inside the avatar folder, MuseTalk's bare
UNet state dict at `models/musetalkV15/unet.pth` with a random `sd-vae-ft-mse` folder beside it.
Avatars are the astronaut at each model's native crop. `ray.init(num_cpus=2)`; Ray is shut down
at the end.

**The served numbers include the audio features.** The renderer computes the features its model
reads inside its batch (one round trip per chunk; the `AudioFeatures` deployment is gone), so
every Serve point is features + render: mel for parametric and Wav2Lip (well under a millisecond
a frame), HuBERT for Ultralight and whisper for MuseTalk, from random-weight folders at the
published sizes (`bench.features_bench.make_model_dir`: hubert-large's 24 layers, whisper-tiny's
encoder), which cost as much as the network or more (`bench.features_bench`). Runs before
2026-11-29 sent ready-made features and measured the render alone.

MuseTalk costs seconds per frame here (UNet step + VAE decode): 1-frame requests, at most 4
sessions, and a window that grows with the sessions so that each completes at least 3 requests.

Also printed: the engine called in this process before Ray starts (`engine.render` on
`engine.frame_inputs(avatar)`, all cores, as the replica runs it; render only, no features),
which bounds what batching the render inside the replica can gain; MuseTalk's per-frame cost
split into UNet and VAE decode; and the CPU the replica (user and kernel) and this driver used
during each run (from /proc).

`--malloc-main-arena` measures every point twice, with the default replica and with one whose
environment has `MALLOC_ARENA_MAX=1` plus the two variables that keep freed memory in the heap
(`MALLOC_ENV`): with a single arena the render's worker thread allocates from the main heap,
which those variables govern (docs/PERFORMANCE.md, "Bigger batches are slower").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from bench.features_bench import make_model_dir
from deployments.avatar.assets import load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.deployment import AvatarRenderer
from deployments.avatar.lipsync import make_engine
from deployments.avatar.models import build_model
from deployments.avatar.types import RenderRequest
from deployments.common.features import pcm_samples_for
from deployments.common.models import lipsync_model

BATCHED = {"max_batch_size": 16, "batch_wait_timeout_s": 0.02}
UNBATCHED = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
MIN_REQUESTS = 3  # per session inside the window, or its rate rests on too few completions
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ModelBench:
    """How one model is measured (all times in seconds)."""

    face_size: int  # the model's native crop: no resize in the way
    chunk: int  # frames per request (configs/serve.yaml's chunk_frames is 4)
    seconds: float  # measured window, at least
    warmup_s: float  # before the window: the first batches load the avatar
    ref_batches: tuple[int, int]  # in-process reference: one request's frames, the largest batch
    ref_reps: tuple[int, int]  # timed calls at each, after one warm-up call
    seconds_per_session: float = 0.0  # window = max(seconds, this x sessions)
    max_sessions: int | None = None  # more would not finish MIN_REQUESTS in a sane time


MODELS: dict[str, ModelBench] = {
    "wav2lip96": ModelBench(96, 4, 24.0, 5.0, (4, 32), (8, 2)),
    "wav2lip256": ModelBench(256, 4, 60.0, 15.0, (4, 32), (2, 1)),
    "ultralight_hubert": ModelBench(168, 4, 30.0, 5.0, (4, 32), (8, 2)),
    # ~10 s a frame: 1-frame requests; 4 sessions batched is a 40 s batch.
    "musetalk": ModelBench(256, 1, 45.0, 30.0, (1, 4), (2, 1), seconds_per_session=45.0, max_sessions=4),
    "parametric": ModelBench(256, 4, 8.0, 2.0, (4, 32), (120, 30)),
}


@dataclass(frozen=True)
class Done:
    session: int
    t: float  # perf_counter at completion
    frames: int
    latency_s: float


async def run_sessions(call: Callable[[int, int], Awaitable[int]], n_sessions: int, warmup_s: float,
                       seconds: float) -> dict[str, float]:
    """N sessions, each awaiting `call(session, i)` (returns the frames served) back to back for
    `warmup_s + seconds`; frames/s, p50 latency and fewest completions of one session in the window.
    """
    log: list[Done] = []
    t0 = time.perf_counter()
    deadline = t0 + warmup_s + seconds

    async def one(sid: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            frames = await call(sid, i)
            done = time.perf_counter()
            log.append(Done(sid, done, frames, done - t))
            i += 1

    await asyncio.gather(*(one(sid) for sid in range(n_sessions)))
    return throughput(log, t0 + warmup_s, deadline)


def throughput(log: list[Done], t_from: float, t_to: float) -> dict[str, float]:
    """Frames/s of all sessions inside [t_from, t_to], the p50 request latency there, and the
    fewest requests one session completed there.

    Each session's rate runs from its first to its last completion in the window, so a long
    batch straddling the window's edges biases nothing (a fixed window would count a 64-frame
    batch or not at all), and the sum does not depend on the order in which one batch's results
    reach their callers (tens of ms apart for 16 requests).
    """
    inside = [d for d in log if t_from <= d.t <= t_to]
    total, fewest = 0.0, len(inside)
    for sid in {d.session for d in log}:
        mine = sorted((d for d in inside if d.session == sid), key=lambda d: d.t)
        fewest = min(fewest, len(mine))
        if len(mine) < 2:
            total = float("nan")  # window shorter than two of this session's requests
            continue
        total += sum(d.frames for d in mine[1:]) / (mine[-1].t - mine[0].t)
    p50 = statistics.median(d.latency_s for d in inside) if inside else float("nan")
    return {"fps": total, "p50_s": p50, "fewest": fewest}


def replica_pid(title: str) -> int | None:
    """The newest Ray process whose title contains `title` (e.g. "ServeReplica:bench:AvatarRenderer")."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if title.encode() in (proc / "cmdline").read_bytes():
                start = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19])
                found.append((start, int(proc.name)))
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
    return max(found)[1] if found else None


def cpu_times(pid: int | None) -> tuple[float, float]:
    """User and system CPU seconds of a process (all its threads); NaN without one."""
    if pid is None:
        return float("nan"), float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def environ(pid: int | None) -> dict[str, str]:
    """The environment a process started with."""
    if pid is None:
        return {}
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def measure(handle: Any, title: str, call: Callable[[int, int], Awaitable[int]], n_sessions: int,
            warmup_s: float, seconds: float) -> dict[str, float]:
    """`run_sessions` plus the replica's and this driver's CPU over the run and the batches it made."""
    pid = replica_pid(title)
    before = handle.stats.remote().result()
    (u0, s0), own0, t = cpu_times(pid), time.process_time(), time.perf_counter()
    row = asyncio.run(run_sessions(call, n_sessions, warmup_s, seconds))
    wall = time.perf_counter() - t
    (u1, s1), after = cpu_times(pid), handle.stats.remote().result()
    user, system = u1 - u0, s1 - s0
    row.update(per_batch=(after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"]),
               replica_cores=(user + system) / wall, kernel_share=system / max(user + system, 1e-9),
               driver_cores=(time.process_time() - own0) / wall, wall_s=wall,
               torch_threads=after.get("torch_threads", 0))
    return row


def checkpoint_for(model: str, data_dir: Path) -> str | None:
    """What `AvatarRenderer` gets as `checkpoint` (Ultralight: None, it reads the avatar's file)."""
    if model == "parametric" or model.startswith("ultralight"):
        return None
    if model == "musetalk":
        return str(data_dir / "models" / "musetalkV15" / "unet.pth")
    return str(data_dir / "models" / f"{model}.pth")


def prepare(model: str, data_dir: Path) -> str:
    """Untrained weights in the model's published layout and an astronaut avatar; its id."""
    bench, avatar_id = MODELS[model], f"b_{model}"
    models = data_dir / "models"
    kwargs: dict[str, Any] = {}
    if model.startswith("wav2lip"):
        models.mkdir(exist_ok=True)
        torch.save({"state_dict": build_model(model).state_dict()}, models / f"{model}.pth")
    elif model == "musetalk":
        from diffusers import AutoencoderKL

        from deployments.avatar.models.musetalk import MuseTalkUNet
        from deployments.avatar.models.vae import SD_VAE_FT_MSE_CONFIG

        (models / "musetalkV15").mkdir(parents=True, exist_ok=True)
        torch.save(MuseTalkUNet().unet.state_dict(), models / "musetalkV15" / "unet.pth")
        AutoencoderKL(**SD_VAE_FT_MSE_CONFIG).save_pretrained(models / "sd-vae-ft-mse")
        kwargs = {"model": "musetalk", "vae_dir": models / "sd-vae-ft-mse"}
    elif model.startswith("ultralight"):
        kwargs = {"model": model}
    # A short idle loop: 4 frames for MuseTalk (the builder VAE-encodes each), 25 for the rest.
    folder = build_avatar(avatar_id, astronaut=True, out_dir=data_dir, face_size=bench.face_size,
                          idle_seconds=0.16 if model == "musetalk" else 1.0, progress=False, **kwargs)
    if model.startswith("ultralight"):
        torch.save(build_model(model).state_dict(), folder / lipsync_model(model).avatar_checkpoint)
    feature_dir(model, data_dir)  # the feature network's folder, built now rather than at deploy time
    return avatar_id


def feature_dir(model: str, data_dir: Path) -> str | None:
    """The random-weight folder of the model's feature network (built once per kind); None for mel."""
    kind = lipsync_model(model).feature_kind
    if kind == "mel":
        return None
    path = data_dir / "features" / kind
    return str(path) if path.exists() else make_model_dir(kind, data_dir / "features")


def engine_and_inputs(model: str, data_dir: Path, avatar_id: str) -> tuple[Any, np.ndarray]:
    """The engine as the replica builds it, and the avatar's frame inputs (crops or latents)."""
    spec = lipsync_model(model)
    avatar = load_avatar(data_dir / avatar_id, full_frames=False, latents=spec.needs_latents)
    checkpoint = checkpoint_for(model, data_dir)
    if checkpoint is None and spec.avatar_checkpoint is not None:
        checkpoint = str(data_dir / avatar_id / spec.avatar_checkpoint)
    engine = make_engine(model, face_size=avatar.face_size, mouth_box=avatar.mouth_box, checkpoint=checkpoint)
    return engine, engine.frame_inputs(avatar)


def in_process_fps(engine: Any, inputs: np.ndarray, batch: int, reps: int) -> tuple[float, float]:
    """`engine.render` alone in this process at `batch` frames: frames/s after one warm-up call,
    and the kernel's share of this process's CPU time meanwhile.
    """
    frames = inputs[np.arange(batch) % len(inputs)]
    feats = np.random.default_rng(0).standard_normal((batch, *engine.feature_shape)).astype(np.float32)
    engine.render(frames, feats)  # warm-up
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(reps):
        engine.render(frames, feats)
    wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return batch * reps / wall, system / max(user + system, 1e-9)


def musetalk_split(engine: Any, inputs: np.ndarray, reps: int = 2) -> tuple[float, float]:
    """Seconds per frame of MuseTalk's UNet step and of its VAE decode, at batch 1."""
    from deployments.avatar.models.vae import decode_latents

    feats = np.random.default_rng(0).standard_normal((1, *engine.feature_shape)).astype(np.float32)
    latents, prompts = engine.prepare(inputs[:1], feats)
    unet, vae = [], []
    with torch.inference_mode():
        for _ in range(reps + 1):  # the first round warms up
            t = time.perf_counter()
            pred = engine.net(latents, prompts)
            t1 = time.perf_counter()
            decode_latents(engine.vae, pred)
            unet.append(t1 - t)
            vae.append(time.perf_counter() - t1)
    return statistics.median(unet[1:]), statistics.median(vae[1:])


def deploy(model: str, data_dir: Path, cfg: dict, main_arena: bool) -> Any:
    options: dict[str, Any] = {"user_config": cfg}
    if main_arena:  # replaces the decorator's ray_actor_options: keep num_cpus 0
        options["ray_actor_options"] = {"num_cpus": 0, "runtime_env": {"env_vars": MALLOC_ENV}}
    app = AvatarRenderer.options(**options).bind(data_dir=str(data_dir), model=model,
                                                 checkpoint=checkpoint_for(model, data_dir), device="cpu",
                                                 feature_model_dir=feature_dir(model, data_dir))
    return serve.run(app, name="bench", route_prefix=None)


def render_call(handle: Any, avatar_id: str, n_frames: int, chunk: int, pcms: list[np.ndarray]
                ) -> Callable[[int, int], Awaitable[int]]:
    """Request i of session sid: `chunk` consecutive frames, sessions apart in the idle loop."""
    async def call(sid: int, i: int) -> int:
        first = 7 * chunk * sid + i * chunk
        req = RenderRequest(avatar_id, tuple((first + j) % n_frames for j in range(chunk)),
                            pcms[(sid + i) % len(pcms)])
        res = await handle.render.remote(req)
        assert res.crops.shape[0] == chunk
        return chunk

    return call


def sessions_for(model: str, wanted: list[int]) -> list[int]:
    cap = MODELS[model].max_sessions
    return [n for n in wanted if cap is None or n <= cap]


def serve_runs(model: str, data_dir: Path, avatar_id: str, sessions: list[int], seconds: float | None,
               variants: tuple[bool, ...]) -> list[dict]:
    """Every (sessions, variant, batching) point of one model; one row per sessions count."""
    bench = MODELS[model]
    n_frames = load_avatar(data_dir / avatar_id, full_frames=False).n_frames
    rng = np.random.default_rng(0)  # random speech-level audio: the features' cost does not depend on it
    pcms = [rng.normal(0.0, 0.1, pcm_samples_for(bench.chunk)).astype(np.float32) for _ in range(8)]
    rows = []
    for n in sessions:
        window = seconds or max(bench.seconds, bench.seconds_per_session * n)
        row: dict[str, Any] = {"model": model, "n": n, "window_s": window}
        # Interleaved per N, so slow drift on a shared box hits all alike.
        for main_arena in variants:
            for key, cfg in (("batched", BATCHED), ("unbatched", UNBATCHED)):
                handle = deploy(model, data_dir, cfg, main_arena)  # user_config only: no restart
                title = "ServeReplica:bench:AvatarRenderer"
                env_ok = all(environ(replica_pid(title)).get(k) == v for k, v in MALLOC_ENV.items())
                point = measure(handle, title, render_call(handle, avatar_id, n_frames, bench.chunk, pcms),
                                n, bench.warmup_s, window)
                point["malloc_env"] = env_ok
                row[("arena " if main_arena else "") + key] = point
                if point["fewest"] < MIN_REQUESTS:
                    print(f"WARNING {model} N={n} {key}: a session completed only {point['fewest']} "
                          f"requests in the window", flush=True)
        rows.append(row)
        print(row, flush=True)
    return rows


def rate(fps: float) -> str:
    """Frames/s with enough decimals for MuseTalk's fifths of a frame."""
    return f"{fps:.1f}" if fps >= 10 else f"{fps:.2f}" if fps >= 1 else f"{fps:.3f}"


SERVE_COLUMNS = ("unbatched frames/s | batched frames/s | batched / unbatched | requests per batch | "
                 "p50 request ms, unbatched → batched | replica cores, unbatched → batched")


def print_serve_table(lead: list[str], tail: str, rows: list[dict], lead_cells: Callable[[dict], list[str]],
                      tail_cells: Callable[[dict, dict], str], ms: str = ".0f") -> None:
    """Unbatched vs batched points of `measure`, one row each: `lead` columns, SERVE_COLUMNS, `tail`."""
    print(f"| {' | '.join(lead)} | {SERVE_COLUMNS} | {tail} |")
    print("|---" * (len(lead) + 7) + "|")
    for r in rows:
        u, b = r["unbatched"], r["batched"]
        print(f"| {' | '.join(lead_cells(r))} | {rate(u['fps'])} | {rate(b['fps'])} | {b['fps'] / u['fps']:.2f}× | "
              f"{b['per_batch']:.1f} | {u['p50_s'] * 1000:{ms}} → {b['p50_s'] * 1000:{ms}} | "
              f"{u['replica_cores']:.2f} → {b['replica_cores']:.2f} | {tail_cells(u, b)} |")


def print_tables(refs: list[tuple], splits: dict[str, tuple[float, float]], rows: list[dict],
                 arena: bool) -> None:
    print("\nThe engine alone in this process (`engine.render`), before Ray starts:\n")
    print("| model | face | torch threads | small batch | frames/s | large batch | frames/s | large / small | "
          "kernel share, small → large |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, threads, (b_small, b_large), (f_small, k_small), (f_large, k_large) in refs:
        print(f"| {model} | {MODELS[model].face_size}² | {threads} | {b_small} | {rate(f_small)} | {b_large} | "
              f"{rate(f_large)} | {f_large / f_small:.2f}× | {k_small:.0%} → {k_large:.0%} |")
    for model, (unet, vae) in splits.items():
        print(f"\n{model} at batch 1: UNet step {unet:.2f} s + VAE decode {vae:.2f} s = {unet + vae:.2f} s a frame")
    print("\nThrough Serve (N sessions back to back; features + render in the replica):\n")
    print_serve_table(["model", "frames per request", "sessions", "window s"], "kernel share, unbatched → batched",
                      rows, lambda r: [r["model"], str(MODELS[r["model"]].chunk), str(r["n"]), f"{r['window_s']:.0f}"],
                      lambda u, b: f"{u['kernel_share']:.0%} → {b['kernel_share']:.0%}")
    if arena:
        print("\nWith MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11 in the replica "
              "(arena) vs without (default), same run:\n")
        print("| model | sessions | batching | default frames/s | arena frames/s | arena / default | "
              "replica cores, default → arena | kernel share, default → arena | env reached the replica |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            for key in ("unbatched", "batched"):
                d, a = r[key], r["arena " + key]
                print(f"| {r['model']} | {r['n']} | {key} | {rate(d['fps'])} | {rate(a['fps'])} | "
                      f"{a['fps'] / d['fps']:.2f}× | {d['replica_cores']:.2f} → {a['replica_cores']:.2f} | "
                      f"{d['kernel_share']:.0%} → {a['kernel_share']:.0%} | {a['malloc_env']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 8],
                        help="concurrent sessions (MuseTalk: those up to 4)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per point (default: per model, see MODELS)")
    parser.add_argument("--malloc-main-arena", action="store_true",
                        help="also measure a replica with MALLOC_ENV, interleaved with the default one")
    args = parser.parse_args()
    t_run = time.perf_counter()
    variants = (False, True) if args.malloc_main_arena else (False,)
    rows: list[dict] = []
    refs: list[tuple] = []
    splits: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        avatars = {model: prepare(model, data_dir) for model in args.models}
        print(f"weights and avatars: {time.perf_counter() - t_run:.0f} s", flush=True)
        # The engine alone, before Ray starts, at the replica's thread count (all cores).
        torch.set_num_threads(os.cpu_count() or 1)
        for model in args.models:
            bench, t = MODELS[model], time.perf_counter()
            engine, inputs = engine_and_inputs(model, data_dir, avatars[model])
            fps = [in_process_fps(engine, inputs, b, r) for b, r in zip(bench.ref_batches, bench.ref_reps, strict=True)]
            refs.append((model, torch.get_num_threads(), bench.ref_batches, *fps))
            if model == "musetalk":
                splits[model] = musetalk_split(engine, inputs)
            print(f"{model} in process: {fps} ({time.perf_counter() - t:.0f} s)", flush=True)
            del engine, inputs

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(proxy_location="Disabled")  # no HTTP: the callers hold a handle
        try:
            for model in args.models:
                t = time.perf_counter()
                rows += serve_runs(model, data_dir, avatars[model], sessions_for(model, args.sessions),
                                   args.seconds, variants)
                serve.delete("bench")
                print(f"{model} through Serve: {time.perf_counter() - t:.0f} s", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()

    print_tables(refs, splits, rows, args.malloc_main_arena)
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()}); replica torch threads: "
          + ", ".join(f"{r['model']} N={r['n']} {r['batched']['torch_threads']}" for r in rows)
          + "; driver (callers) cores, unbatched/batched: "
          + ", ".join(f"{r['model']} N={r['n']} {r['unbatched']['driver_cores']:.2f}/{r['batched']['driver_cores']:.2f}"
                      for r in rows))


if __name__ == "__main__":
    main()
