"""CPU time and memory of the server's processes, read from /proc (Linux only, no psutil)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def find_pids(fragment: str) -> list[int]:
    """Ray processes whose title contains `fragment` (`ray::ServeReplica:<app>:<Deployment>`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::") and fragment in cmdline:
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far; 0 for a process that has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mib(pid: int) -> float:
    """Resident memory in MiB; 0 for a process that has gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0
