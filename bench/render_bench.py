"""Per-frame costs of the CPU pipeline stages, on this machine, in one run.

    .venv/bin/python -m bench.render_bench     # or: make bench

Parametric renderer frames/s at batch 1, 4, 8 and 16 (speaking frames), mel windows per
4-frame chunk, feathered paste-back per frame, and BGR → I420 conversion per frame.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from deployments.asr.mel_stream import mel_frame_windows
from deployments.avatar.assets import load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.parametric import ParametricLipSync
from deployments.avatar.paste import FeatheredPaster
from deployments.common.features import pcm_samples_for

cv2.setNumThreads(1)  # one core: the budget a replica gets on a shared box


def per_call_s(fn, repeats: int) -> float:
    fn()  # warm up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build_avatar("bench", astronaut=True, out_dir=Path(tmp), idle_seconds=1.0, progress=False)
        avatar = load_avatar(Path(tmp) / "bench")
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal(pcm_samples_for(4))).astype(np.float32)
    feats4 = mel_frame_windows(pcm, 4)
    renderer = ParametricLipSync(avatar.face_size, avatar.mouth_box)
    paster = FeatheredPaster(avatar)
    print("| stage | batch | per call (ms) | frames/s |\n|---|---|---|---|")
    for batch in (1, 4, 8, 16):
        crops = avatar.face_crops[np.arange(batch) % avatar.n_frames]
        feats = np.resize(feats4, (batch, 80, 16))
        s = per_call_s(lambda c=crops, f=feats: renderer.render(c, f), max(20, 400 // batch))
        print(f"| parametric render (speaking) | {batch} | {s * 1000:.2f} | {batch / s:.0f} |")
    s = per_call_s(lambda: mel_frame_windows(pcm, 4), 200)
    print(f"| mel windows (4-frame chunk) | 4 | {s * 1000:.2f} | {4 / s:.0f} |")
    crop = renderer.render(avatar.face_crops[:1], feats4[:1])[0]
    s = per_call_s(lambda: paster.paste(avatar.full_frames[0], crop, 0), 500)
    print(f"| feathered paste-back (512²) | 1 | {s * 1000:.3f} | {1 / s:.0f} |")
    s = per_call_s(lambda: cv2.cvtColor(avatar.full_frames[0], cv2.COLOR_BGR2YUV_I420), 500)
    print(f"| BGR → I420 for the encoder (512²) | 1 | {s * 1000:.3f} | {1 / s:.0f} |")


if __name__ == "__main__":
    main()
