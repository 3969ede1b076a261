"""Unit tests never start Ray."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray: move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
