"""The per-frame feature extractors in this process, each kind, and the audio look-ahead they need.

    .venv/bin/python -m bench.features_bench
    .venv/bin/python -m bench.features_bench --kinds mel hubert

For each kind (`KINDS` below) one engine as the renderer builds it
(`deployments.asr.make_feature_engine`, torch on all cores for the networks), called directly
with 1 and with 8 requests of 4 frames (160 ms: random audio with the 200 ms of context on each
side, `common.features.pcm_samples_for(4)` samples). Random weights, no download (speed does not
depend on their values): whisper with whisper-tiny's encoder dims as in tests/conftest.py
`whisper_dir`, HuBERT with hubert-large's (24 layers, width 1024), built as
tests/unit/test_hubert_features.py does (`make_model_dir`, also used by
`bench.serve_batching_bench` for the renderer's feature networks).

Also printed: the audio look-ahead each kind needs: the right context the buffer must carry
(every request waits for it) and the part of it the frame windows themselves read (mel: found by
zeroing the buffer's tail until the windows change; the networks are bidirectional, so every
output row depends on all of it).

No Serve part any more: the `AudioFeatures` deployment this bench used to measure is gone (the
renderer computes the features inside its batch); its last results are in docs/PERFORMANCE.md,
"Audio features through Serve" (2026-11-25). Serve points with the features included:
`bench.serve_batching_bench` and `bench.chunk_overhead_bench`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deployments.asr import hubert_features, whisper_features
from deployments.asr.feature_engines import make_feature_engine
from deployments.asr.mel_stream import mel_frame_windows
from deployments.common.features import RIGHT_CONTEXT_SAMPLES, pcm_samples_for
from deployments.common.timing import SAMPLE_RATE

FRAMES = 4  # per request: 160 ms of video, configs/serve.yaml's chunk_frames
KINDS: dict[str, int] = {"mel": 200, "whisper": 4, "hubert": 4}  # in-process calls at 1 and at 8 requests


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


def buffers(count: int = 8) -> list[np.ndarray]:
    """Random 16 kHz requests of FRAMES frames with the left and right context."""
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, pcm_samples_for(FRAMES)).astype(np.float32) for _ in range(count)]


def rate(fps: float) -> str:
    return f"{fps:.1f}" if fps >= 10 else f"{fps:.2f}" if fps >= 1 else f"{fps:.3f}"


def in_process(kind: str, model_dir: str | None) -> tuple[float, float]:
    """Frames/s of one engine call in this process at 1 and at 8 requests (all cores)."""
    engine, pcms, reps = make_feature_engine(kind, model_dir), buffers(), KINDS[kind]
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
    binary search (dependence only grows with the tail).
    """
    pcm = buffers(1)[0]
    want = mel_frame_windows(pcm, FRAMES)
    lo, hi = 0, RIGHT_CONTEXT_SAMPLES  # lo: zeroable, hi: not known to be
    while lo < hi:
        k = (lo + hi + 1) // 2
        cut = pcm.copy()
        cut[-k:] = 0.0
        if np.array_equal(mel_frame_windows(cut, FRAMES), want):
            lo = k
        else:
            hi = k - 1
    return RIGHT_CONTEXT_SAMPLES - lo


def lookahead() -> dict[str, tuple[int, int]]:
    """(right context the buffer carries, the part the frame windows need) in samples, per kind."""
    return {
        "mel": (RIGHT_CONTEXT_SAMPLES, mel_lookahead_used()),
        "whisper": (RIGHT_CONTEXT_SAMPLES, whisper_features.MIN_RIGHT_CONTEXT_SAMPLES),
        "hubert": (RIGHT_CONTEXT_SAMPLES, hubert_features.MIN_RIGHT_CONTEXT_SAMPLES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    args = parser.parse_args()
    t_run = time.perf_counter()
    refs = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {kind: make_model_dir(kind, Path(tmp)) for kind in args.kinds}
        print(f"model folders: {time.perf_counter() - t_run:.0f} s", flush=True)
        torch.set_num_threads(os.cpu_count() or 1)  # as the renderer replica runs the networks
        for kind in args.kinds:
            refs[kind] = in_process(kind, dirs[kind])
            print(f"{kind} in process: {refs[kind]}", flush=True)
    ahead = lookahead()

    print(f"\nOne engine call in this process ({FRAMES}-frame requests, all cores):\n")
    print("| kind | 1 request frames/s | 8 requests frames/s | 8 / 1 |\n|---|---|---|---|")
    for kind, (f1, f8) in refs.items():
        print(f"| {kind} | {rate(f1)} | {rate(f8)} | {f8 / f1:.2f}× |")
    print("\nAudio look-ahead (right context after a request's last frame):\n")
    print("| kind | the buffer carries | the frame windows read |\n|---|---|---|")
    for kind, (carried, used) in ahead.items():
        print(f"| {kind} | {carried} samples ({carried * 1000 / SAMPLE_RATE:.0f} ms) | "
              f"{used} samples ({used * 1000 / SAMPLE_RATE:.1f} ms) |")
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s (cores: {os.cpu_count()}, torch threads: "
          f"{torch.get_num_threads()})")


if __name__ == "__main__":
    main()
