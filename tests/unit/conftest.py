"""Unit tests never start Ray, and async unit tests leave no asyncio task running behind them."""

from __future__ import annotations

import pytest

from tests.leak_guard import _fail_on_leaked_tasks, _leaked_task_guard  # noqa: F401  (autouse)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray: move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
