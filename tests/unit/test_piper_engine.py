"""Unit tests of `PiperEngine` with the real bundled voice (no mocks), and of `make_engine`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from deployments.common.errors import EngineError
from deployments.common.timing import SAMPLE_RATE
from deployments.tts import make_engine
from deployments.tts.piper_engine import PiperEngine
from deployments.tts.splitter import split_text

pytestmark = pytest.mark.unit

TWENTY_WORDS = (
    "The quick brown fox jumps over the lazy dog, and then it runs back home "
    "to sleep under the tree."
)
LONG_TEXT = " ".join(
    f"This is sentence number {i}, which is long enough to take a while to say." for i in range(12)
)
MIN_RMS = 0.02  # speech from the bundled voice measures ~0.08; silence or noise-floor is < 0.01


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine()


async def collect(stream: AsyncIterator[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """All pieces and the time each one arrived (seconds since the call)."""
    start = time.perf_counter()
    pieces, times = [], []
    async for pcm in stream:
        pieces.append(pcm)
        times.append(time.perf_counter() - start)
    return pieces, times


@pytest.mark.asyncio
async def test_stream_twenty_words(engine: PiperEngine) -> None:
    assert len(TWENTY_WORDS.split()) == 20
    pieces, times = await collect(engine.stream(TWENTY_WORDS))
    assert len(pieces) >= 2
    assert engine.sample_rate == SAMPLE_RATE
    assert all(p.dtype == np.float32 and p.ndim == 1 and p.size > 0 for p in pieces)
    audio = np.concatenate(pieces)
    seconds = audio.size / SAMPLE_RATE
    assert 1.5 * 20 * 0.1 <= seconds <= 15 * 20 * 0.1
    assert np.sqrt(np.mean(audio**2)) > MIN_RMS
    assert np.abs(audio).max() <= 1.0
    # the short first clause arrives well before the rest is synthesised
    assert times[0] < 0.6 * times[-1]


@pytest.mark.asyncio
async def test_event_loop_keeps_ticking(engine: PiperEngine) -> None:
    gaps = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await collect(engine.stream(TWENTY_WORDS))
    task.cancel()
    assert max(gaps) < 0.15  # synthesis runs in a worker thread, never on the loop (slack for a busy box)


@pytest.mark.asyncio
async def test_closing_the_stream_stops_synthesis(engine: PiperEngine) -> None:
    engine.pieces_synthesized = 0
    stream = engine.stream(LONG_TEXT)
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(0.5)  # a piece already in onnxruntime would finish by now
    assert engine.pieces_synthesized <= 2  # the first piece and at most one ahead


@pytest.mark.asyncio
async def test_cancelling_the_consumer_stops_synthesis(engine: PiperEngine) -> None:
    engine.pieces_synthesized = 0
    got = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(LONG_TEXT):
            got.set()

    task = asyncio.create_task(consume())
    await got.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    seen = engine.pieces_synthesized
    await asyncio.sleep(0.5)
    assert engine.pieces_synthesized == seen <= 2  # nothing new started after the cancel
    assert len(split_text(LONG_TEXT)) > 10


@pytest.mark.asyncio
async def test_blank_text_yields_nothing(engine: PiperEngine) -> None:
    assert (await collect(engine.stream("   ")))[0] == []


def test_missing_voice_fails_fast(tmp_path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(EngineError, match="voice model not found: .*nope.onnx"):
        PiperEngine(voice_path=str(missing))
    missing.write_bytes(b"")
    with pytest.raises(EngineError, match="voice config not found: .*nope.onnx.json"):
        PiperEngine(voice_path=str(missing))


def test_make_engine_names_and_options() -> None:
    with pytest.raises(ValueError, match=r"'espeak': choose one of piper, edge, edgetts \(= edge\)"):
        make_engine("espeak", None)
    with pytest.raises(ValueError, match="bad options for tts engine 'piper'"):
        make_engine("piper", {"voice": "x"})
