"""End-to-end fixtures: the real config served by `serve run`, as `make run` does."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:8010"
STARTUP_TIMEOUT_S = 240
TERM_TIMEOUT_S = 30  # SIGTERM, then SIGKILL for whatever of this run's server is still alive
RUN_ENV = "AVATAR_E2E_RUN"  # set to a fresh token in the server's environment: Ray's processes inherit it


def _server_pids(leader: int, token: str) -> set[int]:
    """Every live process of the server started as `leader`: its session (`serve run` starts one
    with start_new_session; Ray's gcs, raylet and dashboard stay in its process group, the worker
    processes make their own groups but stay in the session) or, should one leave it, the run's
    environment token. Other Ray instances on the machine match neither. Zombies are left out:
    they are dead already (and `serve run`'s own zombie keeps its pid and session id from being
    reused until `_stop_server` reaps it)."""
    pids = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    needle = f"{RUN_ENV}={token}".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            ours = os.getsid(pid) == leader or needle in (entry / "environ").read_bytes().split(b"\0")
            if ours and (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                pids.add(pid)
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return pids


def _exit_status(proc: subprocess.Popen) -> int | None:
    """`proc`'s exit status once it has exited, without reaping it (see `_server_pids`)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        res = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()
    if res is None:
        return None
    return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status


def _signal_server(proc: subprocess.Popen, token: str, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for pid in _server_pids(proc.pid, token):  # looked up just before signalling: no stale pids
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(proc: subprocess.Popen, token: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exit_status(proc) is not None and not _server_pids(proc.pid, token):
            return True
        time.sleep(0.2)
    return False


def _stop_server(proc: subprocess.Popen, token: str) -> None:
    """Stop this run's `serve run` and the Ray instance it started, and nothing else (never
    a machine-wide Ray stop, which would take every Ray process on the machine with it)."""
    try:
        _signal_server(proc, token, signal.SIGTERM)
        if _wait_gone(proc, token, TERM_TIMEOUT_S):
            return
        _signal_server(proc, token, signal.SIGKILL)
        if not _wait_gone(proc, token, 10):
            left = sorted(_server_pids(proc.pid, token))
            raise RuntimeError(f"serve run {proc.pid} left processes behind after SIGKILL: {left}")
    finally:
        if _exit_status(proc) is not None:
            proc.wait()  # reap it only now: its pid (the session id) was reserved until here


def _start_server(log_path: Path, token: str) -> subprocess.Popen:
    """`serve run configs/serve.yaml` in a new session, on a Ray instance of its own."""
    env = dict(os.environ, ICE_HOST_ADDRESSES="127.0.0.1", **{RUN_ENV: token})
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)  # as a user runs it: the editable install finds our code
    serve_bin = Path(sys.executable).with_name("serve")
    # --address local: start a new Ray instance, never join one another run started.
    with open(log_path, "w") as log:
        return subprocess.Popen([str(serve_bin), "run", "--address", "local", "configs/serve.yaml"], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if (status := _exit_status(proc)) is not None:  # not reaped: _stop_server still finds its session
            raise RuntimeError(f"serve run exited with {status}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{BASE}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`serve run configs/serve.yaml` with ICE on 127.0.0.1; yields the base URL. The server and
    its Ray instance are stopped at the end, or as soon as startup fails."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    token = uuid.uuid4().hex
    proc = _start_server(log_path, token)
    try:
        _wait_healthy(proc, log_path)
        yield BASE
    finally:
        _stop_server(proc, token)


@pytest.fixture(scope="session")
def mouth_box() -> tuple[int, int, int, int]:
    """The default avatar's mouth box in full-frame pixels (y1, y2, x1, x2), from its metadata."""
    folder = REPO / "data" / "avatars" / "astronaut"
    meta = json.loads((folder / "avatar.json").read_text())
    y1, y2, x1, x2 = pickle.loads((folder / "coords.pkl").read_bytes())[0]
    fx, fy, fw, fh = meta["mouth_box"]
    h, w = y2 - y1, x2 - x1
    return (int(y1 + fy * h), int(y1 + (fy + fh) * h), int(x1 + fx * w), int(x1 + (fx + fw) * w))
