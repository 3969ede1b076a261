"""Cross-session batching through the real `AudioFeatures` deployment, each feature kind, in one run.

    PYTHONPATH=. .venv/bin/python bench/features_bench.py
    PYTHONPATH=. .venv/bin/python bench/features_bench.py --kinds mel whisper --sessions 1 8

For each kind (`KINDS` below) one `AudioFeatures(kinds=(kind,))` replica as deployed (`num_cpus:
0`, torch on all cores for the networks); N concurrent "sessions" (asyncio tasks in this driver,
one Serve handle) each send back-to-back 4-frame (160 ms) `features(kind, pcm, 4)` requests
(random audio with the 200 ms of context on each side) for a fixed time, first with
`max_batch_size: 8` and the kind's batch wait, then reconfigured (same replica) with
`max_batch_size: 1`. Random weights, no download (speed does not depend on their values):
whisper with whisper-tiny's encoder dims as in tests/conftest.py `whisper_dir`, HuBERT with
hubert-large's (24 layers, width 1024), built as tests/unit/test_hubert_features.py does.
`ray.init(num_cpus=2)`; Ray is shut down at the end.

Also printed: one engine call in this process before Ray starts (1 and 8 requests), and the
audio look-ahead each kind needs: the right context the buffer must carry (every request waits
for it) and the part of it the frame windows themselves read (mel: found by zeroing the buffer's
tail until the windows change; the networks are bidirectional, so every output row depends on
all of it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from bench.serve_batching_bench import MIN_REQUESTS, measure, print_serve_table, rate
from deployments.asr import features as mel_features
from deployments.asr import hubert_features, whisper_features
from deployments.asr.deployment import AudioFeatures
from deployments.asr.feature_engines import make_feature_engine
from deployments.common.timing import SAMPLE_RATE

FRAMES = 4  # per request: 160 ms of video, configs/serve.yaml's chunk_frames
UNBATCHED = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
TITLE = "ServeReplica:feats:AudioFeatures"


@dataclass(frozen=True)
class KindBench:
    """How one feature kind is measured (times in seconds)."""

    batch_wait_s: float  # batched: max_batch_size 8 and this wait
    seconds: float  # measured window
    warmup_s: float
    ref_reps: int  # in-process calls at 1 and at 8 requests, after one warm-up call
    module: Any  # its context constants and pcm_samples_for


KINDS: dict[str, KindBench] = {
    # The deployment's default wait: a request costs well under a millisecond.
    "mel": KindBench(0.005, 8.0, 2.0, 200, mel_features),
    "whisper": KindBench(0.02, 20.0, 5.0, 4, whisper_features),
    "hubert": KindBench(0.02, 20.0, 5.0, 4, hubert_features),
}


def make_model_dir(kind: str, root: Path) -> str | None:
    """A random-weight model folder in the published layout; None for mel (no weights)."""
    from transformers import (
        HubertConfig,
        HubertForCTC,
        Wav2Vec2FeatureExtractor,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    path = root / kind
    torch.manual_seed(0)
    if kind == "whisper":  # openai/whisper-tiny's encoder; a tiny vocabulary (the decoder is dropped)
        WhisperForConditionalGeneration(WhisperConfig(
            vocab_size=64, d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
            decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
            max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1)).save_pretrained(path)
        WhisperFeatureExtractor().save_pretrained(path)
    elif kind == "hubert":  # facebook/hubert-large-ls960-ft: 24 layers, width 1024, stable layer norm
        HubertForCTC(HubertConfig(
            vocab_size=32, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(path)
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    else:
        return None
    return str(path)


def buffers(kind: str, count: int = 8) -> list[np.ndarray]:
    """Random 16 kHz requests of FRAMES frames with the kind's left and right context."""
    rng = np.random.default_rng(0)
    n = KINDS[kind].module.pcm_samples_for(FRAMES)
    return [rng.normal(0, 0.1, n).astype(np.float32) for _ in range(count)]


def in_process(kind: str, model_dir: str | None) -> tuple[float, float]:
    """Frames/s of one engine call in this process at 1 and at 8 requests (all cores)."""
    engine, pcms, reps = make_feature_engine(kind, model_dir), buffers(kind), KINDS[kind].ref_reps
    fps = []
    for batch in (1, 8):
        engine.batch(pcms[:batch], [FRAMES] * batch)  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            engine.batch(pcms[:batch], [FRAMES] * batch)
        fps.append(batch * FRAMES * reps / (time.perf_counter() - t))
    return fps[0], fps[1]


def mel_lookahead_used() -> int:
    """Samples at the end of a mel request's right context that its windows do read.

    The largest tail that can be zeroed without changing any window is what they do not need;
    binary search (dependence only grows with the tail)."""
    pcm = buffers("mel", 1)[0]
    want = mel_features.mel_frame_windows(pcm, FRAMES)
    lo, hi = 0, mel_features.RIGHT_CONTEXT_SAMPLES  # lo: zeroable, hi: not known to be
    while lo < hi:
        k = (lo + hi + 1) // 2
        cut = pcm.copy()
        cut[-k:] = 0.0
        if np.array_equal(mel_features.mel_frame_windows(cut, FRAMES), want):
            lo = k
        else:
            hi = k - 1
    return mel_features.RIGHT_CONTEXT_SAMPLES - lo


def lookahead() -> dict[str, tuple[int, int]]:
    """(right context the buffer carries, the part the frame windows need) in samples, per kind."""
    return {
        "mel": (mel_features.RIGHT_CONTEXT_SAMPLES, mel_lookahead_used()),
        "whisper": (whisper_features.RIGHT_CONTEXT_SAMPLES, whisper_features.MIN_RIGHT_CONTEXT_SAMPLES),
        "hubert": (hubert_features.RIGHT_CONTEXT_SAMPLES, hubert_features.MIN_RIGHT_CONTEXT_SAMPLES),
    }


def features_call(handle: Any, kind: str, pcms: list[np.ndarray]):
    async def call(sid: int, i: int) -> int:
        out = await handle.features.remote(kind, pcms[(sid + i) % len(pcms)], FRAMES)
        assert len(out) == FRAMES
        return FRAMES

    return call


def serve_runs(kind: str, model_dir: str | None, sessions: list[int], seconds: float | None) -> list[dict]:
    bench, pcms = KINDS[kind], buffers(kind)
    batched = {"max_batch_size": 8, "batch_wait_timeout_s": bench.batch_wait_s}
    rows = []
    for n in sessions:
        row: dict[str, Any] = {"kind": kind, "n": n}
        for key, cfg in (("batched", batched), ("unbatched", UNBATCHED)):  # interleaved per N
            app = AudioFeatures.options(user_config=cfg).bind(
                kinds=(kind,), model_dirs={kind: model_dir} if model_dir else None)
            handle = serve.run(app, name="feats", route_prefix=None)  # user_config only: no restart
            row[key] = measure(handle, TITLE, features_call(handle, kind, pcms), n, bench.warmup_s,
                               seconds or bench.seconds)
            if row[key]["fewest"] < MIN_REQUESTS:
                print(f"WARNING {kind} N={n} {key}: a session completed only {row[key]['fewest']} requests",
                      flush=True)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per point (default: per kind, see KINDS)")
    args = parser.parse_args()
    t_run = time.perf_counter()
    rows, refs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {kind: make_model_dir(kind, Path(tmp)) for kind in args.kinds}
        print(f"model folders: {time.perf_counter() - t_run:.0f} s", flush=True)
        torch.set_num_threads(os.cpu_count() or 1)  # as the replica runs the networks
        for kind in args.kinds:
            refs[kind] = in_process(kind, dirs[kind])
            print(f"{kind} in process: {refs[kind]}", flush=True)
        ahead = lookahead()

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(proxy_location="Disabled")  # no HTTP: the callers hold a handle
        try:
            for kind in args.kinds:
                t = time.perf_counter()
                rows += serve_runs(kind, dirs[kind], args.sessions, args.seconds)
                serve.delete("feats")
                print(f"{kind} through Serve: {time.perf_counter() - t:.0f} s", flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()

    print(f"\nOne engine call in this process ({FRAMES}-frame requests, all cores):\n")
    print("| kind | 1 request frames/s | 8 requests frames/s | 8 / 1 |\n|---|---|---|---|")
    for kind, (f1, f8) in refs.items():
        print(f"| {kind} | {rate(f1)} | {rate(f8)} | {f8 / f1:.2f}× |")
    print(f"\nThrough Serve ({FRAMES}-frame requests, N sessions back to back; batched: max_batch_size 8):\n")
    print_serve_table(["kind", "batch wait ms", "sessions"], "driver cores, unbatched → batched", rows,
                      lambda r: [r["kind"], f"{KINDS[r['kind']].batch_wait_s * 1000:.0f}", str(r["n"])],
                      lambda u, b: f"{u['driver_cores']:.2f} → {b['driver_cores']:.2f}", ms=".1f")
    print("\nAudio look-ahead (right context after a request's last frame):\n")
    print("| kind | the buffer carries | the frame windows read |\n|---|---|---|")
    for kind, (carried, used) in ahead.items():
        print(f"| {kind} | {carried} samples ({carried * 1000 / SAMPLE_RATE:.0f} ms) | "
              f"{used} samples ({used * 1000 / SAMPLE_RATE:.1f} ms) |")
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()}); replica torch threads: "
          + ", ".join(f"{r['kind']} N={r['n']} {r['batched']['torch_threads']}" for r in rows))


if __name__ == "__main__":
    main()
