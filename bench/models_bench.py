"""Speed of the bare lip-sync networks on this CPU, their FLOPs, and what a GPU could carry.

    .venv/bin/python -m bench.models_bench
    .venv/bin/python -m bench.models_bench --models wav2lip96 ultralight_hubert --seconds 1

For each network (`deployments.avatar.models.build_model`, untrained weights: speed does not
depend on their values): frames/s of `net(*inputs)` alone at batch 1, 4, 8 and 16 (MuseTalk's
UNet: 1 and 4), float32, `torch.inference_mode`, all cores; FLOPs per frame counted by
`torch.utils.flop_counter.FlopCounterMode`; this CPU's float32 matmul peak (and a large conv's
rate) and the fraction of that peak each network reaches at its best batch; and the frames/s and
25 fps sessions an H100 and an RTX 4090 could give at their dense bf16 tensor rate, at 100% and
at an assumed realistic utilisation. Nothing here runs on a GPU: those columns are arithmetic.
Prints markdown tables.

The "kernel share" column is system CPU time over all CPU time while timing: glibc hands
allocations over 32 MiB straight back to the OS, so big-batch activations are page-faulted in
afresh on every call. `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000` in the
environment keeps freed memory in the heap (compare the two runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from deployments.avatar.models import build_model

FPS = 25  # one talking session
MATMUL_N = 2048  # big enough that the BLAS kernel runs at its peak, small enough to be quick


@dataclass(frozen=True)
class Net:
    """One network's per-frame inputs (forward order), batch sizes, and a label for the table."""

    inputs: tuple[tuple[int, ...], ...]
    batches: tuple[int, ...]
    label: str
    notes_gflop: float | None  # the upstream classes counted with FlopCounterMode, for comparison


NETS: dict[str, Net] = {
    "wav2lip96": Net(((1, 80, 16), (6, 96, 96)), (1, 4, 8, 16), "mel + 96² face", 7.9),
    "wav2lip256": Net(((1, 80, 16), (6, 256, 256)), (1, 4, 8, 16), "mel + 256² face", 55.6),
    "ultralight_hubert": Net(((6, 160, 160), (16, 32, 32)), (1, 4, 8, 16), "160² face + HuBERT", 6.3),
    "ultralight_wenet": Net(((6, 160, 160), (128, 16, 32)), (1, 4, 8, 16), "160² face + WeNet", 6.3),
    # One UNet step on a 256² face's VAE latent; the VAE encode/decode around it is not counted.
    "musetalk": Net(((8, 32, 32), (50, 384)), (1, 4), "UNet, 32² latent + whisper", None),
}


@dataclass(frozen=True)
class Gpu:
    name: str
    tflops: float  # dense bf16 tensor-core rate, FP32 accumulate
    why: str


GPUS = (
    Gpu("H100", 800.0, "measured on large bf16 matmuls by the team; SXM spec sheet 989"),
    Gpu("RTX 4090", 165.0, "Ada spec sheet: bf16/fp16 tensor with FP32 accumulate, dense (GeForce "
        "runs FP32 accumulate at half the FP16-accumulate 330); torch's bf16 GEMMs and convs "
        "accumulate in FP32"),
)
UTILISATION = 0.40  # assumed: conv nets at these sizes rarely hold more than ~40% of tensor peak


def inputs_for(net: Net, batch: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.rand((batch, *shape), generator=gen) for shape in net.inputs)


def flops_per_frame(model: nn.Module, net: Net) -> float:
    """FLOPs of one frame (2 per multiply-add; convs, matmuls and attention only)."""
    counter = FlopCounterMode(display=False)
    # On CPU, SDPA runs `_scaled_dot_product_flash_attention_for_cpu`, which the counter has no
    # formula for; the math backend decomposes attention into counted bmm's.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*inputs_for(net, 1))
    return float(counter.get_total_flops())


def seconds_per_call(model: nn.Module, inputs: tuple[torch.Tensor, ...], min_s: float,
                     min_reps: int) -> tuple[float, float]:
    """Median wall time of one forward after one warm-up call (allocator, oneDNN primitives), and
    the kernel's share of this process's CPU time meanwhile (page faults on fresh allocations).
    """
    with torch.inference_mode():
        model(*inputs)
        times: list[float] = []
        r0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        while len(times) < min_reps or time.perf_counter() - start < min_s:
            t = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    sys_s, user_s = r1.ru_stime - r0.ru_stime, r1.ru_utime - r0.ru_utime
    return statistics.median(times), sys_s / max(sys_s + user_s, 1e-9)


def matmul_peak_gflops(n: int = MATMUL_N, reps: int = 10, rounds: int = 3) -> float:
    """Best float32 GEMM rate: the ceiling any network on this CPU could reach."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def conv_gflops(reps: int = 5, rounds: int = 3) -> float:
    """A large 3×3 conv (oneDNN, not MKL's GEMM): what the conv nets' kernels can reach."""
    conv, x = nn.Conv2d(512, 512, 3, padding=1).eval(), torch.rand(8, 512, 32, 32)
    flop = 2 * 8 * 512 * 512 * 9 * 32 * 32
    with torch.inference_mode():
        conv(x)
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(reps):
                conv(x)
            best = min(best, (time.perf_counter() - t) / reps)
    return flop / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per point")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # all cores: the best this box can do
    t_run = time.perf_counter()

    peak, conv = matmul_peak_gflops(), conv_gflops()
    print(f"| this CPU | threads | float32 matmul {MATMUL_N}² × {MATMUL_N}² (the peak below) | "
          "float32 conv 3×3, 512 ch, 32², batch 8 |\n|---|---|---|---|")
    print(f"| {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} | "
          f"{peak:.0f} GFLOP/s | {conv:.0f} GFLOP/s |\n")

    rows = []
    all_batches = sorted({b for name in args.models for b in NETS[name].batches})
    head = " | ".join(f"b{b}" for b in all_batches)
    print(f"| model | input | params (M) | GFLOP/frame | NOTES | {head} | best frames/s | "
          f"% of CPU peak | kernel share of CPU, b1 → largest | s |")
    print("|---|---|---|---|---|" + "---|" * len(all_batches) + "---|---|---|---|")
    for name in args.models:
        net, t_model = NETS[name], time.perf_counter()
        model = build_model(name).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflop = flops_per_frame(model, net) / 1e9
        # MuseTalk's UNet takes ~a second a frame here: fewer repeats keep the run short.
        min_s, min_reps = (0.0, 2) if name == "musetalk" else (args.seconds, 3)
        fps, sys_share = {}, {}
        for b in net.batches:
            per_call, sys_share[b] = seconds_per_call(model, inputs_for(net, b), min_s, min_reps)
            fps[b] = b / per_call
        best = max(fps.values())
        cells = " | ".join(f"{fps[b]:.1f}" if b in fps else "–" for b in all_batches)
        notes = f"{net.notes_gflop}" if net.notes_gflop else "–"
        print(f"| {name} | {net.label} | {params:.1f} | {gflop:.1f} | {notes} | {cells} | {best:.1f} | "
              f"{100 * gflop * best / peak:.0f}% | "
              f"{sys_share[net.batches[0]]:.0%} → {sys_share[net.batches[-1]]:.0%} | "
              f"{time.perf_counter() - t_model:.0f} |", flush=True)
        rows.append((name, gflop))
        del model

    print("\nCeilings from FLOPs alone (frames/s, and 25 fps sessions in brackets):\n")
    cols = " | ".join(f"{g.name} {g.tflops:.0f} TFLOP/s @100% | @{UTILISATION:.0%}" for g in GPUS)
    print(f"| model | GFLOP/frame | {cols} |\n|---|---|" + "---|---|" * len(GPUS))
    for name, gflop in rows:
        cells = []
        for gpu in GPUS:
            for util in (1.0, UTILISATION):
                f = gpu.tflops * 1e3 * util / gflop
                cells.append(f"{f:,.0f} ({f / FPS:,.0f})")
        print(f"| {name} | {gflop:.1f} | " + " | ".join(cells) + " |")
    print()
    for gpu in GPUS:
        print(f"- {gpu.name}: {gpu.tflops:.0f} TFLOP/s, {gpu.why}.")
    print(f"\ntotal {time.perf_counter() - t_run:.0f} s")


if __name__ == "__main__":
    main()
