"""`bench.gpu_bench` without Ray: the networks part in reduced mode (what a CPU runs), the card
table, the session pacing arithmetic and the command line's guard against fp16 on a CPU.

The Serve part (Ray with a fake GPU) is tests/integration/test_gpu_bench_serve.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import gpu_bench
from bench.gpu_bench import CHUNK_S, LEAD_S, Chunk, delivery, spec_tflops

pytestmark = pytest.mark.unit

WAV2LIP96_GFLOP = 7.9  # NOTES.md: the upstream class counted with FlopCounterMode


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """The bench sets torch's thread count for its run: give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_reduced_networks_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], torch_threads: None) -> None:
    out = tmp_path / "gpu_bench.json"
    result = gpu_bench.main(["--reduced", "--no-serve", "--json", str(out)])

    assert result["mode"] == "reduced" and "serve" not in result
    assert json.loads(out.read_text()) == json.loads(json.dumps(result)), "--json holds the printed numbers"
    ceiling = result["networks"]["ceiling"]
    assert ceiling["device"] == "cpu" and ceiling["spec_tflops"] is None  # no spec sheet for a CPU
    assert set(ceiling["measured_tflops"]) == {"fp32"} and ceiling["measured_tflops"]["fp32"] > 0
    points = result["networks"]["points"]
    assert [(p["model"], p["dtype"], p["batch"]) for p in points] == [("wav2lip96", "fp32", 1), ("wav2lip96", "fp32", 2)]
    for p in points:
        assert not p["oom"] and p["fps"] > 0
        assert p["gflop_per_frame"] == pytest.approx(WAV2LIP96_GFLOP, rel=0.03)
        assert 0 < p["pct_measured"] <= 100, p
        assert p["pct_spec"] is None and p["peak_mib"] is None  # CUDA-only columns
        assert p["sessions"] == pytest.approx(p["fps"] / 25)
        assert p["ms_per_batch"] == pytest.approx(1e3 * p["batch"] / p["fps"])
    printed = capsys.readouterr().out
    assert "| model | GFLOP/frame | dtype | batch | frames/s |" in printed
    assert "| wav2lip96 | 7.9 | fp32 | 1 |" in printed


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA GeForce RTX 4090", 165.0),
    ("NVIDIA L40S", None),  # not an L4
    ("NVIDIA A10G", None),  # not an A10
    ("Tesla T4", None),
])
def test_spec_sheet_by_device_name(name: str, tflops: float | None) -> None:
    assert spec_tflops(name) == tflops


def test_delivery_counts_frames_done_inside_the_window() -> None:
    # Two sessions over a 10-chunk window: session 0 on time, session 1 always 0.5 s late.
    log = [Chunk(s, due=i * CHUNK_S, done=i * CHUNK_S + (0.05 if s == 0 else 0.5), frames=4)
           for s in range(2) for i in range(-3, 10)]
    row = delivery(log, 0.0, 10 * CHUNK_S, n_sessions=2)

    assert row["offered_fps"] == 50 and row["chunks"] == 20 and row["skipped"] == 0
    assert 0.5 > LEAD_S and row["on_time"] == pytest.approx(0.5)  # session 1 misses its playback every time
    assert row["min_session_fps"] == pytest.approx(25.0)  # late by a constant: still 25 fps delivered
    assert row["delivered_fps"] == pytest.approx(50.0)
    assert row["p50_ms"] == pytest.approx(275.0) and row["p95_ms"] == pytest.approx(500.0)
    assert not row["sustained"]


def test_skipped_chunks_count_as_missed_and_deliver_nothing() -> None:
    # One session: every other chunk skipped (its session too far behind), the rest on time.
    log = [Chunk(0, due=i * CHUNK_S, done=None if i % 2 else i * CHUNK_S + 0.1, frames=0 if i % 2 else 4)
           for i in range(10)]
    row = delivery(log, 0.0, 10 * CHUNK_S, n_sessions=1)

    assert row["chunks"] == 10 and row["skipped"] == 5 and row["on_time"] == pytest.approx(0.5)
    assert row["delivered_fps"] == pytest.approx(12.5)
    assert row["p50_ms"] == pytest.approx(100.0)  # latency of the chunks sent
    assert not row["sustained"]


def test_a_session_keeping_up_is_sustained() -> None:
    log = [Chunk(s, due=i * CHUNK_S + s * 0.08, done=i * CHUNK_S + s * 0.08 + 0.03, frames=4)
           for s in range(2) for i in range(-1, 20)]
    row = delivery(log, 0.0, 20 * CHUNK_S, n_sessions=2)

    assert row["on_time"] == 1.0 and row["delivered_fps"] >= 0.95 * 50 and row["sustained"]


def test_fp16_on_a_cpu_is_refused() -> None:
    with pytest.raises(SystemExit):
        gpu_bench.main(["--reduced", "--dtypes", "fp16", "--no-serve"])
