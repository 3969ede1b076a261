"""Fixtures shared by every tier."""

from __future__ import annotations

import json
import os
from pathlib import Path
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
