"""End-to-end fixtures: the real config served by `serve run`, as `make run` does."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:8010"
STARTUP_TIMEOUT_S = 240


def _wait_healthy(proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve run exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{BASE}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`serve run configs/serve.yaml` with ICE on 127.0.0.1; yields the base URL."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, ICE_HOST_ADDRESSES="127.0.0.1", PYTHONPATH=str(REPO))
    serve_bin = Path(sys.executable).with_name("serve")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(serve_bin), "run", "configs/serve.yaml"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, log_path)
        yield BASE
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)


@pytest.fixture(scope="session")
def mouth_box() -> tuple[int, int, int, int]:
    """The default avatar's mouth box in full-frame pixels (y1, y2, x1, x2), from its metadata."""
    folder = REPO / "data" / "avatars" / "astronaut"
    meta = json.loads((folder / "avatar.json").read_text())
    y1, y2, x1, x2 = pickle.loads((folder / "coords.pkl").read_bytes())[0]
    fx, fy, fw, fh = meta["mouth_box"]
    h, w = y2 - y1, x2 - x1
    return (int(y1 + fy * h), int(y1 + (fy + fh) * h), int(x1 + fx * w), int(x1 + (fx + fw) * w))
