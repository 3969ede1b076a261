"""`set_torch_threads` and its use by the CPU replicas, each in a fresh interpreter started as Ray
starts a `num_cpus: 0` replica (`OMP_NUM_THREADS=1`), so torch's thread state is real and unshared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> dict:
    """Run `code` (which prints one JSON line last) with OMP_NUM_THREADS=1; its parsed output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_default_is_the_cores_the_process_may_use() -> None:
    out = _run("""
        import json, os, torch
        from deployments.common.threads import available_cores, set_torch_threads
        before = torch.get_num_threads()
        cores = len(os.sched_getaffinity(0))
        default = set_torch_threads(), torch.get_num_threads()
        explicit = set_torch_threads(3), torch.get_num_threads()
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # as a cgroup/taskset would pin it
        pinned = available_cores(), set_torch_threads()
        print(json.dumps({"before": before, "cores": cores, "default": default, "explicit": explicit,
                          "pinned": pinned}))
    """)
    assert out["before"] == 1  # what Ray's OMP_NUM_THREADS=1 gives a replica
    assert out["default"] == [out["cores"]] * 2 and out["cores"] == len(os.sched_getaffinity(0))
    assert out["explicit"] == [3, 3]
    assert out["pinned"] == [1, 1]


def test_a_thread_that_ran_torch_needs_its_own_call() -> None:
    # Why the deployments call it in their worker threads, not only in reconfigure.
    out = _run("""
        import json, torch
        from concurrent.futures import ThreadPoolExecutor
        from deployments.common.threads import set_torch_threads
        pool = ThreadPoolExecutor(1)
        def matmul():
            torch.ones(64, 64) @ torch.ones(64, 64)
            return torch.get_num_threads()
        first = pool.submit(matmul).result()
        main = set_torch_threads(2)
        stale = pool.submit(matmul).result()
        fixed = pool.submit(lambda: (set_torch_threads(2), matmul())[1]).result()
        fresh = ThreadPoolExecutor(1).submit(matmul).result()
        print(json.dumps([first, main, stale, fixed, fresh]))
    """)
    assert out == [1, 2, 1, 2, 2]


def test_replicas_set_threads_only_for_cpu_networks() -> None:
    out = _run("""
        import asyncio, json, sys
        import numpy as np
        from deployments.avatar.deployment import AvatarRenderer
        # The weight-free default: parametric renderer with mel features. It may not import torch.
        parametric = AvatarRenderer.func_or_class(data_dir="/nonexistent", model="parametric")
        parametric.reconfigure({"torch_threads": 2})
        no_torch = "torch" not in sys.modules
        import torch
        net = AvatarRenderer.func_or_class(data_dir="/nonexistent", model="wav2lip96", device="cpu")
        by_default = torch.get_num_threads()
        net.reconfigure({"torch_threads": 3})

        class Probe:  # stands in for the feature engine: reports torch's threads in the render thread
            kind = "probe"

            def batch(self, pcms, n_frames):
                raise RuntimeError(torch.get_num_threads())

        net._features = Probe()
        try:
            net._run_batch([])
        except RuntimeError as exc:
            in_render = exc.args[0]
        stats = asyncio.run(net.stats())["torch_threads"]
        print(json.dumps({"no_torch": no_torch, "parametric": asyncio.run(parametric.stats())["torch_threads"],
                          "by_default": by_default, "in_render": in_render, "stats": stats}))
    """)
    assert out["no_torch"], "the parametric renderer with mel features must not import torch"
    assert out["parametric"] == 0
    assert out["by_default"] == len(os.sched_getaffinity(0))
    assert out["in_render"] == out["stats"] == 3
