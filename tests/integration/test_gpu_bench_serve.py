"""`bench.gpu_bench`'s Serve part in reduced mode: Ray with a fake GPU (`num_gpus=1` declared on
this CPU box), `AvatarRenderer` as 2 replicas at `num_gpus: 0.5` (device "cpu", the weight-free
parametric model), 2 paced sessions for 3 s. It checks the placement and the plumbing, not a
GPU's speed. The networks part is tests/unit/test_gpu_bench_networks.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from bench import gpu_bench

pytestmark = pytest.mark.integration


def test_reduced_serve_run_on_a_fake_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu_bench.json"
    result = gpu_bench.main(["--reduced", "--no-networks", "--json", str(out)])

    assert not ray.is_initialized(), "the bench shuts Ray and Serve down"
    assert result["mode"] == "reduced" and "networks" not in result
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    [row] = result["serve"]
    # Both replicas are placed on the one (fake) GPU, half of it each, and Ray told them so.
    assert (row["model"], row["replicas"], row["num_gpus_each"]) == ("parametric", 2, 0.5)
    assert row["gpu_in_use"] == pytest.approx(1.0)
    assert row["replicas_seen"] == 2 and row["gpu_ids"] == ["0"] and row["cuda_visible_devices"] == ["0"]
    # Frames came back, from both replicas, batched and timed.
    assert row["sessions"] == 2 and row["offered_fps"] == 50
    assert row["chunks"] >= 2 * 18 and row["skipped"] < row["chunks"]
    assert row["delivered_fps"] > 0 and row["min_session_fps"] > 0 and row["driver_cores"] > 0
    assert 0 < row["p50_ms"] <= row["p95_ms"]
    assert 0 <= row["on_time"] <= 1 and isinstance(row["sustained"], bool)
    assert row["replicas_counted"] == 2 and row["batches"] > 0
    assert row["requests_per_batch"] >= 1 and row["frames_per_batch"] == pytest.approx(4 * row["requests_per_batch"])
    assert sum(row["requests_by_replica"]) >= row["chunks"]
    assert "| parametric | 2 × 0.5 | 1.00 | 0 | 2 | 50 |" in capsys.readouterr().out
