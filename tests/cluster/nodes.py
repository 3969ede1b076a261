"""Losing a node of the local cluster the way a machine is lost."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from ray.cluster_utils import Cluster


def lose_node(cluster: Cluster, node: Any) -> None:
    """The node's machine dies: SIGKILL to every process of it at once (its raylet, agents and
    every worker the raylet started), then the cluster forgets it. `Cluster.remove_node` alone
    kills the raylet and leaves the workers to notice and shut down, work a dead machine does
    not do on the survivors' CPUs."""
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    pids = set(roots) | {pid for root in roots for pid in descendants(root)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
