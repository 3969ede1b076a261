"""Per-chunk overhead of a speaking chunk through Serve, as SessionHost sees it; before vs after in one run.

    .venv/bin/python bench/chunk_overhead_bench.py --baseline 681c035  # the last commit with AudioFeatures vs this tree
    .venv/bin/python -m bench.chunk_overhead_bench                    # this tree only
    .venv/bin/python -m bench.chunk_overhead_bench --models parametric --sessions 1 --seconds 4

What is timed: the wall time from sending one speaking chunk's audio (K = 4 frames, 160 ms: a
float32 16 kHz window of 3,200 + K * 640 + 3,200 samples) to having its K rendered crops back.
A `ChunkCaller` replica stands in for SessionHost (a `num_cpus: 0` replica calling the others
through its deployment handles, on its own event loop); each of its N sessions sends chunks back
to back for a warm-up and a window (`WINDOW_S`: 2 + 8 s for parametric, 4 + 16 s for Ultralight)
and the chunks started after the warm-up are kept (at least 3 per session). The
deployments are configured as `configs/serve.yaml`: `AvatarRenderer` with `{max_batch_size: 16,
batch_wait_timeout_s: 0.01}` and, in the old layout, `AudioFeatures` with `{max_batch_size: 16,
batch_wait_timeout_s: 0.005}` (the baseline's config); device "cpu", `ray.init(num_cpus=2)`.

Two layouts, told apart by what this process can import (`two_hop_layout`):

- two hops (the baseline, before `AudioFeatures` was removed): `features.remote(kind, pcm, K)`
  then `render.remote(RenderRequest(avatar_id, indices, features))`;
- one hop (now): `render.remote(RenderRequest(avatar_id, indices, pcm))`, the renderer computing
  the features itself.

The work a chunk carries is measured in the driver before Ray starts: the same chunk's features
(`make_feature_engine(kind).batch`) and render (`make_engine(...).render` on the avatar's frame
inputs), called directly, median of `--reps` calls (50; `--reps / N` for N chunks, at least 5,
at most ~8 s of calls) after one warm-up; for N sessions, one call with N chunks (what one full
batch costs the replica). Overhead = Serve median - that median; with `--baseline` both pool
every round's samples (chunks through Serve, calls in process).

Models: `parametric` (mel, weight-free, the default) and `ultralight_hubert` (HuBERT windows).
Ultralight gets random weights (`build_model("ultralight_hubert").state_dict()`, a bare state
dict as `ultralight.pth` in the avatar folder) and a random HuBERT folder of hubert-large's
width but 2 of its 24 layers, as tests/integration/test_ultralight_pipeline.py builds it (speed,
not values, matters). Avatars: the astronaut (`build_avatar`), 1 s idle loop, Ultralight's at 168 px.

`--baseline REV` adds a git worktree of REV (detached, in a temp dir; removed at the end) and
runs this script in subprocesses, alternating before (REV) and after (this working tree) for
`--rounds` rounds, each child with `PYTHONPATH=<tree>`, its working directory in `<tree>` and
the same in Ray's `runtime_env` so that the driver and every replica import that tree's
`deployments` (each child reports `deployments.__file__` as its `ChunkCaller` replica sees it,
and the renderer's `stats()` keys, which differ between the layouts). The avatars and weights
are built once, by this tree, and shared. One markdown table at the end, latencies pooled over
rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
K = 4  # frames per chunk: configs/serve.yaml chunk_frames
LEFT, RIGHT, SAMPLES_PER_FRAME = 3200, 3200, 640  # common.features (asr.features at the baseline)
PCM_SAMPLES = LEFT + K * SAMPLES_PER_FRAME + RIGHT  # pcm_samples_for(K) = 8960, in both trees
RENDERER_CONFIG = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}  # configs/serve.yaml
FEATURES_CONFIG = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}  # the baseline's serve.yaml
KINDS = {"parametric": "mel", "ultralight_hubert": "hubert"}  # the feature kind each model reads
# Measured seconds and warm-up per point (`--seconds`/`--warmup` override): Ultralight's chunk
# takes ~0.7 s here (~3 s for 4 sessions' batch), so it gets a longer window.
WINDOW_S = {"parametric": (8.0, 2.0), "ultralight_hubert": (16.0, 4.0)}
MIN_CHUNKS = 3  # per session: a session keeps sending past the window until it has this many
WORK_BUDGET_S = 8.0  # in-process calls per point stop after this long (at least MIN_REPS calls)
MIN_REPS = 5
HUBERT_LAYERS = 2  # of hubert-large's 24 (tests/integration/test_ultralight_pipeline.py)
HUBERT_LARGE_WIDTH = {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096,
                      "feat_extract_norm": "layer", "do_stable_layer_norm": True}
APP = "bench"


def two_hop_layout() -> bool:
    """True where `deployments.asr.deployment` (the `AudioFeatures` deployment) exists: a chunk
    is then features + render, two Serve calls; without it the renderer takes the PCM (one call).
    """
    return importlib.util.find_spec("deployments.asr.deployment") is not None


# ---- data: avatars and random weights, built once ---------------------------------------------
def avatar_id(model: str) -> str:
    return f"c_{model}"


def feature_dir(data_dir: Path, model: str) -> str | None:
    return str(data_dir / "hubert") if KINDS[model] == "hubert" else None


def prepare(data_dir: Path, models: list[str]) -> None:
    """The avatars and random weights the models need, under `data_dir`."""
    from deployments.avatar.builder import build_avatar

    for model in models:
        if model == "parametric":
            build_avatar(avatar_id(model), astronaut=True, out_dir=data_dir, idle_seconds=1.0, progress=False)
            continue
        import torch
        from transformers import HubertConfig, HubertForCTC, Wav2Vec2FeatureExtractor

        from deployments.avatar.models import build_model

        folder = build_avatar(avatar_id(model), astronaut=True, out_dir=data_dir, face_size=168,
                              idle_seconds=1.0, model=model, progress=False)
        torch.manual_seed(0)
        torch.save(build_model(model).state_dict(), folder / "ultralight.pth")
        HubertForCTC(HubertConfig(vocab_size=32, num_hidden_layers=HUBERT_LAYERS, **HUBERT_LARGE_WIDTH)
                     ).save_pretrained(data_dir / "hubert")
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(data_dir / "hubert")


def buffers(count: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0.0, 0.1, PCM_SAMPLES).astype(np.float32) for _ in range(count)]


# ---- the work, in this process ----------------------------------------------------------------
def in_process(model: str, data_dir: Path, sessions: list[int], reps: int) -> dict[int, dict[str, float]]:
    """Median seconds of features + render of N chunks called directly (engines as the replicas
    build them, torch on every core for a network), per N in `sessions`.
    """
    from deployments.asr.feature_engines import make_feature_engine
    from deployments.avatar.assets import load_avatar
    from deployments.avatar.lipsync import make_engine

    avatar = load_avatar(data_dir / avatar_id(model), full_frames=False)
    checkpoint = None
    if model != "parametric":
        from deployments.common.threads import set_torch_threads

        set_torch_threads()  # what both layouts' replicas do for a CPU network
        checkpoint = str(data_dir / avatar_id(model) / "ultralight.pth")
    features = make_feature_engine(KINDS[model], feature_dir(data_dir, model), "cpu")
    engine = make_engine(model, face_size=avatar.face_size, mouth_box=avatar.mouth_box,
                         checkpoint=checkpoint, device="cpu")
    inputs, pcms = engine.frame_inputs(avatar), buffers()
    out: dict[int, dict[str, float]] = {}
    for n in sessions:
        index = [(7 * K * s + j) % len(inputs) for s in range(n) for j in range(K)]
        feat_s, render_s, total_s = [], [], []
        t_point = time.perf_counter()
        for rep in range(max(MIN_REPS, reps // n) + 1):  # the first call warms up
            if rep > MIN_REPS and time.perf_counter() - t_point > WORK_BUDGET_S:
                break
            t0 = time.perf_counter()
            feats = features.batch(pcms[:n], [K] * n)
            t1 = time.perf_counter()
            crops = engine.render(inputs[index], np.concatenate(feats))
            t2 = time.perf_counter()
            assert crops.shape[0] == n * K
            if rep:
                feat_s.append(t1 - t0)
                render_s.append(t2 - t1)
                total_s.append(t2 - t0)
        out[n] = {"work_s": statistics.median(total_s), "features_s": statistics.median(feat_s),
                  "render_s": statistics.median(render_s), "work_samples_s": total_s}
        print(f"  {model} N={n} in process: features {out[n]['features_s'] * 1e3:.2f} ms + render "
              f"{out[n]['render_s'] * 1e3:.2f} ms, together {out[n]['work_s'] * 1e3:.2f} ms", flush=True)
    return out


# ---- through Serve ----------------------------------------------------------------------------
def caller_class() -> Any:
    """The `ChunkCaller` deployment: SessionHost's part, sending chunks back to back."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4)
    class ChunkCaller:
        def __init__(self, renderer: Any, features: Any, avatar: str, kind: str, n_frames: int) -> None:
            self._renderer, self._features = renderer, features  # features: None in the one-hop layout
            self._avatar, self._kind, self._n_frames = avatar, kind, n_frames

        def where(self) -> dict[str, Any]:
            """What this replica imported: proof that the tree under test reached the replicas."""
            import deployments
            import deployments.avatar.types

            return {"deployments": deployments.__file__, "two_hop": two_hop_layout(),
                    "render_request_fields": list(deployments.avatar.types.RenderRequest.__dataclass_fields__),
                    "pythonpath": os.environ.get("PYTHONPATH")}

        async def run(self, n_sessions: int, warmup_s: float, seconds: float) -> list[float]:
            """Seconds per chunk, send to crops back, of chunks started after the warm-up (at
            least MIN_CHUNKS per session: a session goes on past the window until it has them).
            """
            from deployments.avatar.types import RenderRequest

            pcms, kept = buffers(), []
            t0 = time.perf_counter()
            measure_from, deadline = t0 + warmup_s, t0 + warmup_s + seconds

            async def session(sid: int) -> None:
                i = mine = 0
                while (start := time.perf_counter()) < deadline or mine < MIN_CHUNKS:
                    indices = tuple((7 * K * sid + i * K + j) % self._n_frames for j in range(K))
                    pcm = pcms[(sid + i) % len(pcms)]
                    if self._features is not None:  # the baseline: two round trips
                        feats = await self._features.features.remote(self._kind, pcm, K)
                        result = await self._renderer.render.remote(RenderRequest(self._avatar, indices, feats))
                    else:
                        result = await self._renderer.render.remote(RenderRequest(self._avatar, indices, pcm))
                    took = time.perf_counter() - start
                    assert result.crops.shape[0] == K
                    if start >= measure_from:
                        kept.append(took)
                        mine += 1
                    i += 1

            await asyncio.gather(*(session(s) for s in range(n_sessions)))
            return kept

    return ChunkCaller


def deploy(model: str, data_dir: Path) -> Any:
    from ray import serve

    from deployments.avatar.assets import load_avatar
    from deployments.avatar.deployment import AvatarRenderer

    n_frames = load_avatar(data_dir / avatar_id(model), full_frames=False).n_frames
    kind, fdir = KINDS[model], feature_dir(data_dir, model)
    renderer_args: dict[str, Any] = {"data_dir": str(data_dir), "model": model, "device": "cpu"}
    if two_hop_layout():
        from deployments.asr.deployment import AudioFeatures

        features = AudioFeatures.options(user_config=FEATURES_CONFIG).bind(
            kinds=(kind,), model_dirs={kind: fdir} if fdir else None, device="cpu")
    else:
        features = None
        renderer_args["feature_model_dir"] = fdir
    renderer = AvatarRenderer.options(user_config=RENDERER_CONFIG).bind(**renderer_args)
    app = caller_class().bind(renderer, features, avatar_id(model), kind, n_frames)
    handle = serve.run(app, name=APP, route_prefix=None)
    serve.get_deployment_handle("AvatarRenderer", app_name=APP).avatar_info.remote(avatar_id(model)).result()
    return handle


def window(model: str, args: argparse.Namespace) -> tuple[float, float]:
    """(measured seconds, warm-up seconds) of a point of `model`."""
    seconds, warmup = WINDOW_S[model]
    return (seconds if args.seconds is None else args.seconds, warmup if args.warmup is None else args.warmup)


def windows(args: argparse.Namespace) -> str:
    return "; ".join(f"{m} {window(m, args)[0]:g} s a point after {window(m, args)[1]:g} s of warm-up"
                     for m in args.models)


def summary(lat: list[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(lat), "p90_s": float(np.percentile(lat, 90)), "count": len(lat)}


def measure(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Every (model, sessions) point of this process's layout: in process first, then Serve."""
    import deployments

    two_hop = two_hop_layout()
    result: dict[str, Any] = {"layout": "two hops" if two_hop else "one hop",
                              "driver_deployments": deployments.__file__, "points": {}, "replicas": {}}
    print(f"layout: {result['layout']}; driver imports {deployments.__file__}", flush=True)
    work = {model: in_process(model, data_dir, args.sessions, args.reps) for model in args.models}

    import ray
    from ray import serve

    tree = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    runtime_env = {"env_vars": {"PYTHONPATH": tree}} if tree else None
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    serve.start(proxy_location="Disabled")
    try:
        for model in args.models:
            handle = deploy(model, data_dir)
            result["replicas"][model] = handle.where.remote().result()
            print(f"  {model}: ChunkCaller replica imports {result['replicas'][model]['deployments']}", flush=True)
            renderer = serve.get_deployment_handle("AvatarRenderer", app_name=APP)
            for n in args.sessions:
                before = renderer.stats.remote().result()
                seconds, warmup = window(model, args)
                lat = handle.run.remote(n, warmup, seconds).result(timeout_s=warmup + seconds + 300)
                after = renderer.stats.remote().result()
                batches = max(1, after["batches"] - before["batches"])
                point = {**summary(lat), **work[model][n], "latencies_s": lat,
                         "per_batch": (after["requests"] - before["requests"]) / batches,
                         "renderer_stats_keys": sorted(after), "torch_threads": after.get("torch_threads", 0)}
                result["points"][f"{model}/{n}"] = point
                print(f"  {model} N={n} through Serve: p50 {point['p50_s'] * 1e3:.2f} ms, p90 "
                      f"{point['p90_s'] * 1e3:.2f} ms, {point['count']} chunks, "
                      f"{point['per_batch']:.2f} requests per render batch", flush=True)
            serve.delete(APP)
    finally:
        serve.shutdown()
        ray.shutdown()
    return result


# ---- before vs after --------------------------------------------------------------------------
def child(tree: Path, data_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This script in a subprocess that imports `tree`'s `deployments` (driver and replicas)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--data-dir", str(data_dir), "--json", str(out),
           "--models", *args.models, "--sessions", *map(str, args.sessions), "--reps", str(args.reps)]
    cmd += ["--renderer-batch", str(args.renderer_batch)]
    cmd += ["--seconds", str(args.seconds)] if args.seconds is not None else []
    cmd += ["--warmup", str(args.warmup)] if args.warmup is not None else []
    # PYTHONPATH comes before the editable install's finder (a meta-path finder appended after
    # the path-based one); the working directory too, because Ray puts the driver's cwd on its
    # workers' sys.path.
    subprocess.run(cmd, check=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.read_text())


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def print_table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def pooled(label: str, key: str) -> dict[str, float]:
        lat = [x for run in runs[label] for x in run["points"][key]["latencies_s"]]
        work = statistics.median(x for run in runs[label] for x in run["points"][key]["work_samples_s"])
        per_batch = statistics.mean(run["points"][key]["per_batch"] for run in runs[label])
        return {**summary(lat), "work_s": work, "per_batch": per_batch}

    print(f"\nK = {K} frames a chunk; Serve p50/p90 over all rounds' chunks ({len(runs['before'])} rounds each, "
          f"{windows(args)}); work = features + render of the same chunk(s) called in the driver "
          "(median over all rounds' calls); overhead = Serve p50 - work.\n")
    print("| model | sessions | before p50 / p90 ms | after p50 / p90 ms | after / before p50 | "
          "work ms, before / after | overhead ms, before → after | after / before overhead | "
          "overhead / work, before → after | requests per render batch, before → after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for n in args.sessions:
            key = f"{model}/{n}"
            b, a = pooled("before", key), pooled("after", key)
            ob, oa = b["p50_s"] - b["work_s"], a["p50_s"] - a["work_s"]
            print(f"| {model} | {n} | {ms(b['p50_s'])} / {ms(b['p90_s'])} | {ms(a['p50_s'])} / {ms(a['p90_s'])} | "
                  f"{a['p50_s'] / b['p50_s']:.2f}× | {ms(b['work_s'])} / {ms(a['work_s'])} | {ms(ob)} → {ms(oa)} | "
                  f"{oa / ob:.2f}× | {ob / b['work_s']:.2f} → {oa / a['work_s']:.2f} | "
                  f"{b['per_batch']:.1f} → {a['per_batch']:.1f} |")
    print("\nSpread: each round's Serve p50 and in-process work median (ms), in run order\n")
    print("| model | sessions | Serve p50, before | Serve p50, after | work, before | work, after |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for n in args.sessions:
            key = f"{model}/{n}"
            cells = [", ".join(ms(run["points"][key][field]) for run in runs[label])
                     for field in ("p50_s", "work_s") for label in ("before", "after")]
            print(f"| {model} | {n} | {' | '.join(cells)} |")


def baseline(args: argparse.Namespace) -> None:
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chunkbench-") as tmp:
        tree, data_dir = Path(tmp) / "baseline", Path(tmp) / "data"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline], check=True)
        try:
            if not (tree / "deployments" / "asr" / "deployment.py").exists():  # fail now, not after the runs
                raise SystemExit(f"{args.baseline} has no AudioFeatures (deployments/asr/deployment.py): it is not "
                                 "the two-hop baseline. The last commit with it: `git log -1 --format=%h "
                                 "-- deployments/asr/deployment.py` gives the one that removed it; use its parent (^).")
            prepare(data_dir, args.models)
            print(f"avatars and weights: {time.perf_counter() - t_run:.0f} s", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for label, where in (("before", tree), ("after", REPO)):
                    t = time.perf_counter()
                    print(f"\n== round {r + 1}, {label} ({where})", flush=True)
                    runs[label].append(child(where, data_dir, Path(tmp) / f"{label}{r}.json", args))
                    print(f"== {time.perf_counter() - t:.0f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    for label, want in (("before", "two hops"), ("after", "one hop")):
        for run in runs[label]:
            assert run["layout"] == want, (label, run["layout"])
            seen = {run["driver_deployments"], *(rep["deployments"] for rep in run["replicas"].values())}
            print(f"{label}: {run['layout']}, driver and ChunkCaller replicas import {sorted(seen)}")
    print_table(runs, args)
    print(f"\nbaseline {args.baseline}; total {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also run REV's tree (git worktree), alternating")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: before/after rounds")
    parser.add_argument("--models", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default: WINDOW_S)")
    parser.add_argument("--warmup", type=float, help="seconds per point before measuring (default: WINDOW_S)")
    parser.add_argument("--reps", type=int, default=50, help="in-process calls at one session (fewer at N)")
    parser.add_argument("--renderer-batch", type=int, default=RENDERER_CONFIG["max_batch_size"],
                        help="the renderer's max_batch_size, both layouts (configs/serve.yaml: 16)")
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)  # avatars and weights, prepared
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # a child's results
    args = parser.parse_args()
    RENDERER_CONFIG["max_batch_size"] = args.renderer_batch
    if args.baseline:
        baseline(args)
        return
    if args.data_dir is not None:
        result = measure(args, args.data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="chunkbench-") as tmp:
            prepare(Path(tmp), args.models)
            result = measure(args, Path(tmp))
    if args.json is not None:
        args.json.write_text(json.dumps(result))
        return
    print(f"\n{result['layout']}; K = {K}; work = features + render in the driver; overhead = Serve p50 - work\n")
    print("| model | sessions | Serve p50 / p90 ms | work ms | overhead ms | overhead / work | requests per batch |")
    print("|---|---|---|---|---|---|---|")
    for key, p in result["points"].items():
        model, n = key.split("/")
        over = p["p50_s"] - p["work_s"]
        print(f"| {model} | {n} | {ms(p['p50_s'])} / {ms(p['p90_s'])} | {ms(p['work_s'])} | {ms(over)} | "
              f"{over / p['work_s']:.2f} | {p['per_batch']:.1f} |")


if __name__ == "__main__":
    main()
