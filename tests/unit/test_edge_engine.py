"""Unit tests of `EdgeTTSEngine` that never reach the internet.

Construction sends nothing. The offline-failure test contacts the network, so it runs only in a
loopback-only namespace, e.g.:
`unshare -n bash -c 'ip link set lo up && python -m pytest tests/unit/test_edge_engine.py'`.
"""

from __future__ import annotations

import socket
import time

import pytest

from deployments.common.errors import EngineError
from deployments.tts import make_engine
from deployments.tts.edge_engine import EdgeTTSEngine

pytestmark = pytest.mark.unit

MAX_FAILURE_S = 5.0  # the offline error must surface this fast


def loopback_only() -> bool:
    """True when the only network interface is `lo`: nothing can leave this machine."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def test_construct_sends_nothing() -> None:
    engine = EdgeTTSEngine()
    assert engine.voice == "en-US-AriaNeural" and engine.sample_rate == 16_000
    engine = make_engine("edge", {"voice": "zh-CN-XiaoxiaoNeural", "rate": "-10%"})
    assert isinstance(engine, EdgeTTSEngine) and engine.rate == "-10%"


@pytest.mark.parametrize("options", [{"voice": "not a voice"}, {"rate": "fast"}])
def test_bad_settings_fail_at_construction(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="bad edge-tts settings"):
        EdgeTTSEngine(**options)


@pytest.mark.asyncio
async def test_blank_text_yields_nothing_without_network() -> None:
    assert [pcm async for pcm in EdgeTTSEngine().stream("  ")] == []


@pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace")
@pytest.mark.asyncio
async def test_offline_stream_fails_fast_with_a_clear_error() -> None:
    engine = EdgeTTSEngine()
    start = time.perf_counter()
    with pytest.raises(EngineError, match="could not reach its service") as info:
        async for _ in engine.stream("Hello there, this needs the network."):
            pass
    assert time.perf_counter() - start < MAX_FAILURE_S
    assert info.value.retryable
    assert "choose tts engine 'piper'" in str(info.value)
    await engine.aclose()
