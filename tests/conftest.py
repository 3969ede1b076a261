"""Fixtures shared by every tier."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The parity kit (`../shared/parity` beside the checkout, or `PARITY_DIR`)."""
    path = Path(os.environ.get("PARITY_DIR", REPO.parent / "shared" / "parity"))
    if not (path / "README.md").is_file():
        pytest.fail(f"parity kit not found at {path}: set PARITY_DIR")
    return path


@pytest.fixture(scope="session")
def kit(parity_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The wav2lip_mel arrays and metadata."""
    meta = json.loads((parity_dir / "wav2lip_mel.json").read_text())
    return np.load(parity_dir / "wav2lip_mel.npz"), meta


@pytest.fixture(scope="session")
def weights_rule(parity_dir: Path) -> ModuleType:
    """The kit's `weights_rule.py`, imported by path (the kit is not a package)."""
    spec = importlib.util.spec_from_file_location("parity_weights_rule", parity_dir / "weights_rule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_session_status: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with pytest's own status once every result is reported.

    Native libraries the tests load (Ray's core worker after several init/shutdown cycles, torch,
    onnxruntime, aiortc's codecs) have crashed in interpreter teardown after a fully green run
    (a segfault after the summary line); skipping that teardown keeps CI's verdict the tests'.
    """
    if "code" in _session_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status["code"])
