"""Torch's intra-op thread count for replicas that run a network on the CPU.

Ray sets `OMP_NUM_THREADS=1` in every worker without a CPU request (`num_cpus: 0`, all our
replicas) before torch is imported, so a CPU network would use one core however many are free
(docs/PERFORMANCE.md). The default here is every core this process may run on.

`torch.set_num_threads` reaches the calling thread and threads that have not run torch yet; a
thread that already ran torch keeps its own OpenMP count. So call this in the thread that runs
the network (it costs ~1 µs when nothing changes). Import it freely: torch is imported only when
the function is called.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def set_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (None: `available_cores()`) for the calling thread.

    Returns:
        The count torch now uses in this thread.
    """
    import torch

    want = n or available_cores()
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
        log.info("torch intra-op threads: %d in thread %s (OMP_NUM_THREADS=%s)", want,
                 threading.current_thread().name, os.environ.get("OMP_NUM_THREADS", "unset"))
    return torch.get_num_threads()
