"""A guard for async tests: fail a test that leaves asyncio tasks running on its loop.

Import both fixtures into a tier's conftest (`from tests.leak_guard import ...`) to apply it there.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator

import pytest


def _on_a_function_scoped_loop(item: pytest.Item) -> bool:
    """An async test on its own event loop (the default here); tests on a shared loop are skipped."""
    marker = item.get_closest_marker("asyncio")
    if marker is None and not inspect.iscoroutinefunction(getattr(item, "obj", None)):
        return False  # a sync test: no loop
    return marker is None or marker.kwargs.get("loop_scope", "function") == "function"


def _describe(task: asyncio.Task) -> str:
    coro = task.get_coro()
    where = ""
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        where = f" at {frame.f_code.co_filename}:{frame.f_lineno}"
    return f"{task.get_name()}: {getattr(coro, '__qualname__', repr(coro))}{where}"


@pytest.fixture(autouse=True)
def _fail_on_leaked_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Async tests only (sync tests have no loop): see `_leaked_task_guard`."""
    if _on_a_function_scoped_loop(request.node):
        request.getfixturevalue("_leaked_task_guard")
    yield


@pytest.fixture
async def _leaked_task_guard() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on its event loop (livekit/agents'
    `fail_on_leaked_tasks` idea): the tasks alive at the end that were not alive at the start,
    after one loop iteration for tasks that were just cancelled or just finished. The leaked
    tasks are cancelled and awaited, so they do not spill into the next test's report."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if not leaked:
        return
    described = [_describe(t) for t in leaked]
    for task in leaked:
        task.cancel()
    await asyncio.wait(leaked, timeout=1.0)
    pytest.fail(f"{len(leaked)} asyncio task(s) still running after the test:\n  " + "\n  ".join(described),
                pytrace=False)
