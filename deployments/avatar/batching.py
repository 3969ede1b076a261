"""Batches that close when the renderer can take them, not on a timer.

`@serve.batch` closes a batch `batch_wait_timeout_s` after its first request even while the
previous batch is still running; the closed batches then queue for the semaphore, each as small
as one wait's worth of arrivals. On a GPU whose pass takes longer than the wait that means many
small passes, each paying the fixed cost of a pass, and a throughput that stops growing with
load (docs/PERFORMANCE.md, "Control plane at hundreds of sessions"). Here a batch is taken only
when one of `slots` is free, and it takes everything queued (up to `max_batch_size`): the longer
a pass, the bigger the next batch. The wait only applies to a batch whose oldest request is
younger than it (an idle renderer waiting for company), as Triton's `max_queue_delay`.

    batcher = Batcher(run_jobs, max_batch_size=32, batch_wait_s=0.01, slots=2)
    result = await batcher.submit(job)          # run_jobs([job, ...]) -> [result, ...]
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass(eq=False)
class _Waiting(Generic[J, R]):
    job: J
    future: asyncio.Future[R]
    arrived: float = field(default_factory=time.monotonic)


class Batcher(Generic[J, R]):
    """Runs `run(jobs)` on batches of submitted jobs, at most `slots` batches at a time.

    A caller that is cancelled while its job waits leaves the queue (its job is not run); an
    exception from `run` fails every job of that batch. The loop starts with the first
    `submit`, on that event loop.

    Args:
        run: Takes a batch of jobs, returns one result per job in order.
        max_batch_size: The most jobs in one batch.
        batch_wait_s: How long the oldest queued job may wait for company.
        slots: Batches run at once (2: the next batch's CPU work overlaps this one's GPU pass).
    """

    def __init__(self, run: Callable[[list[J]], Awaitable[list[R]]], *, max_batch_size: int,
                 batch_wait_s: float, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._run = run
        self.max_batch_size, self.batch_wait_s, self.slots = max_batch_size, batch_wait_s, slots
        self._queue: deque[_Waiting[J, R]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def configure(self, *, max_batch_size: int, batch_wait_s: float) -> None:
        """New limits, used from the next batch on."""
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s

    async def submit(self, job: J) -> R:
        """The result of `job`, run in the next batch that has room for it."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._batches())
        waiting: _Waiting[J, R] = _Waiting(job, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._arrived.set()
        return await waiting.future

    async def close(self) -> None:
        """Stop taking batches and cancel the running ones (their callers get CancelledError)."""
        tasks = [t for t in (self._loop_task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for waiting in self._queue:
            waiting.future.cancel()
        self._queue.clear()

    async def _batches(self) -> None:
        slots = asyncio.Semaphore(self.slots)
        while True:
            await slots.acquire()
            batch = await self._next_batch()
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(lambda t: (self._running.discard(t), slots.release()))

    async def _next_batch(self) -> list[_Waiting[J, R]]:
        """Wait for a job, then for company until the oldest job has waited `batch_wait_s` or
        the batch is full; the batch, cancelled callers left out (never empty).
        """
        while True:
            self._drop_cancelled()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            left = self._queue[0].arrived + self.batch_wait_s - time.monotonic()
            if len(self._queue) >= self.max_batch_size or left <= 0:
                return [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                pass

    def _drop_cancelled(self) -> None:
        if any(w.future.done() for w in self._queue):
            self._queue = deque(w for w in self._queue if not w.future.done())

    async def _run_batch(self, batch: list[_Waiting[J, R]]) -> None:
        try:
            results = await self._run([w.job for w in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} jobs gave {len(results)} results")
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(result)
        except Exception as exc:  # every caller of the batch hears of it
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:  # cancelled by `close`: no caller waits forever
            for w in batch:
                w.future.cancel()
