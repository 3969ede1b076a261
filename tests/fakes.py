"""Fake pipeline stages for tests without Ray: speech, rendering and audio features.

Each fake has the signature of the stage it replaces (the conductor's `speech` and `render`
callables, a `FeatureEngine`), records what it was asked, and has knobs for latency, failure
and hanging, so a test can break any stage on purpose. Injected failures raise
`FakeStageError` unless a test passes its own exception.

    speech = FakeSpeech(pieces=3, fail_after=2)      # 2 pieces, then FakeStageError
    render = FakeRenderer(face_size=32, hang=True)   # blocks until render.release()
    await eventually(lambda: render.in_flight == 1)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import numpy as np

from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.features import FEATURE_SHAPES, check_pcm, check_pcm_batch
from deployments.common.timing import SAMPLE_RATE

Sleep = Callable[[float], Awaitable[None]]


class FakeStageError(RuntimeError):
    """What a fake raises when told to fail."""


def _failure(fail: bool | BaseException | type[BaseException], what: str) -> BaseException:
    if isinstance(fail, BaseException):
        return fail
    if isinstance(fail, type) and issubclass(fail, BaseException):
        return fail(what)
    return FakeStageError(what)


def tone(seconds: float, freq: float = 220.0, amplitude: float = 0.3, phase_s: float = 0.0) -> np.ndarray:
    """A float32 16 kHz sine: speech that is loud enough to render (not silence)."""
    t = phase_s + np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0, step: float = 0.002) -> None:
    """Poll `predicate` until it holds (real time); AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


class _Gate:
    """`hang`: wait until `release()` or cancellation."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def wait(self) -> None:
        await self._open.wait()

    def release(self) -> None:
        self._open.set()


class FakeSpeech:
    """The conductor's `speech`: an async-generator callable, text -> float32 16 kHz pieces.

    Knobs:
        pieces: pieces yielded per text.
        piece_s: seconds of audio per piece (a `tone`, continuous across pieces).
        first_delay_s: sleep before the first piece (time to first audio).
        piece_delay_s: sleep before each later piece (slower than real time if > `piece_s`).
        fail_after: raise after this many pieces (0: before any audio); None never fails.
        error: what to raise on failure (an exception or class; default `FakeStageError`).
        hang: yield nothing and wait until `release()` (then continue normally) or cancellation.
        sleep: the sleep function (default `asyncio.sleep`; inject a virtual one if needed).

    Records: `calls` (texts in order), `pieces_sent`, `cancelled` (generators cancelled while
    waiting), `closed` (generators closed early by the consumer), `finished` (ran to the end),
    `failed`, and `active` (generators now running).
    """

    def __init__(
        self,
        *,
        pieces: int = 3,
        piece_s: float = 0.2,
        first_delay_s: float = 0.0,
        piece_delay_s: float = 0.0,
        fail_after: int | None = None,
        error: BaseException | type[BaseException] | None = None,
        hang: bool = False,
        freq: float = 220.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pieces, self.piece_s = pieces, piece_s
        self.first_delay_s, self.piece_delay_s = first_delay_s, piece_delay_s
        self.fail_after, self.error, self.hang = fail_after, error, hang
        self.freq = freq
        self._sleep = sleep
        self._gate = _Gate()
        self.calls: list[str] = []
        self.pieces_sent = 0
        self.cancelled = 0
        self.closed = 0
        self.finished = 0
        self.failed = 0
        self.active = 0

    def release(self) -> None:
        """Let hanging generators go on."""
        self._gate.release()

    def audio_for(self, n_pieces: int) -> np.ndarray:
        """The samples of the first `n_pieces` pieces of any text, concatenated."""
        return tone(n_pieces * self.piece_s, self.freq)

    async def __call__(self, text: str) -> AsyncIterator[np.ndarray]:
        self.calls.append(text)
        self.active += 1
        try:
            if self.hang:
                await self._gate.wait()
            for i in range(self.pieces):
                if self.fail_after is not None and i >= self.fail_after:
                    self.failed += 1
                    raise _failure(self.error or True, f"fake tts failed after {i} pieces")
                delay = self.first_delay_s if i == 0 else self.piece_delay_s
                if delay > 0:
                    await self._sleep(delay)
                yield tone(self.piece_s, self.freq, phase_s=i * self.piece_s)
                self.pieces_sent += 1
            self.finished += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except GeneratorExit:
            self.closed += 1
            raise
        finally:
            self.active -= 1


class FakeRenderer:
    """The conductor's `render`: `await render(req) -> RenderResult` of K crops.

    Every request is checked like the real renderer checks it (`check_pcm(req.pcm, K)`, so a
    wrong buffer length raises ValueError). Call n (1-based) returns crops filled with
    `colour(n)`, so a test can tell which call produced a pasted frame.

    Knobs:
        face_size: S of the (K, S, S, 3) uint8 crops.
        delay_s: sleep before answering.
        fail: raise on every call (True, or the exception / class to raise).
        fail_every: raise on every n-th call only (n, 2n, ...); the others succeed.
        hang: wait until `release()` (then answer) or cancellation.
        sleep: the sleep function (default `asyncio.sleep`).

    Records: `requests` (every request received, failing ones too), `results`, `failures`,
    `cancelled`, and `in_flight` (calls now running).
    """

    def __init__(
        self,
        *,
        face_size: int = 32,
        delay_s: float = 0.0,
        fail: bool | BaseException | type[BaseException] = False,
        fail_every: int | None = None,
        hang: bool = False,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.face_size = face_size
        self.delay_s, self.fail, self.fail_every, self.hang = delay_s, fail, fail_every, hang
        self._sleep = sleep
        self._gate = _Gate()
        self.requests: list[RenderRequest] = []
        self.results: list[RenderResult] = []
        self.failures = 0
        self.cancelled = 0
        self.in_flight = 0

    @staticmethod
    def colour(call: int) -> tuple[int, int, int]:
        """The BGR colour of call `call`'s crops (1-based)."""
        return (call % 200 + 50, 255 - call % 200, 7)

    def release(self) -> None:
        """Let hanging calls answer."""
        self._gate.release()

    async def __call__(self, req: RenderRequest) -> RenderResult:
        self.requests.append(req)
        call = len(self.requests)
        self.in_flight += 1
        try:
            k = len(req.frame_indices)
            check_pcm(req.pcm, k)
            if self.hang:
                await self._gate.wait()
            if self.delay_s > 0:
                await self._sleep(self.delay_s)
            if self.fail or (self.fail_every and call % self.fail_every == 0):
                self.failures += 1
                raise _failure(self.fail or True, f"fake render failed on call {call}")
            crops = np.empty((k, self.face_size, self.face_size, 3), np.uint8)
            crops[...] = self.colour(call)
            result = RenderResult(crops)
            self.results.append(result)
            return result
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


def fake_paste(frame: np.ndarray, crop: np.ndarray, index: int) -> np.ndarray:
    """A `PasteFn`: a copy of `frame` with `crop` in its top-left corner (`FakeRenderer.colour`
    shows through at pixel (0, 0))."""
    out = frame.copy()
    s = min(crop.shape[0], out.shape[0], out.shape[1])
    out[:s, :s] = crop[:s, :s]
    return out


class FakeFeatures:
    """A `FeatureEngine` (deployments.common.features) that returns zeros of the right shape.

    `batch(pcms, n_frames)` validates like the real engines (`check_pcm_batch`) and returns, per
    request, float32 zeros of shape `(n, *FEATURE_SHAPES[kind])`.

    Knobs:
        kind: "mel", "hubert" or "whisper".
        delay_s: blocking sleep per batch (engines are synchronous; `sleep` is injectable).
        fail: raise on every batch (True, or the exception / class to raise).
        fail_every: raise on every n-th batch only.

    Records: `batches` (the `n_frames` of each call, failing ones too) and `failures`.
    """

    def __init__(
        self,
        kind: str = "mel",
        *,
        delay_s: float = 0.0,
        fail: bool | BaseException | type[BaseException] = False,
        fail_every: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if kind not in FEATURE_SHAPES:
            raise ValueError(f"unknown feature kind {kind!r}")
        self.kind = kind
        self.delay_s, self.fail, self.fail_every = delay_s, fail, fail_every
        self._sleep = sleep
        self.batches: list[list[int]] = []
        self.failures = 0

    def batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        self.batches.append(list(n_frames))
        call = len(self.batches)
        check_pcm_batch(pcms, n_frames)
        if self.delay_s > 0:
            self._sleep(self.delay_s)
        if self.fail or (self.fail_every and call % self.fail_every == 0):
            self.failures += 1
            raise _failure(self.fail or True, f"fake {self.kind} features failed on batch {call}")
        return [np.zeros((int(n), *FEATURE_SHAPES[self.kind]), np.float32) for n in n_frames]
