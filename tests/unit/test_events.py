"""The per-session event bus: fan-out, bounded queues that drop the oldest, close, SSE framing."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.common.errors import TooManyRequests
from deployments.rtc.events import HEARTBEAT, EventBus, delayed, sse, sse_stream

pytestmark = pytest.mark.unit


def bus(**kwargs) -> EventBus:
    return EventBus(clock=lambda: 1234.5, **kwargs)


async def drain(listener) -> list[dict]:
    return [event async for event in listener]


async def test_every_listener_gets_every_event_in_order_stamped_with_seq_and_time():
    events = bus()
    with events.listen() as a, events.listen() as b:
        assert events.listeners == 2
        events.publish({"status": "start", "text": "hi"})
        events.publish({"event": "asr_final", "text": "yo"})
        events.close()
        got_a, got_b = await drain(a), await drain(b)
    assert got_a == got_b == [
        {"status": "start", "text": "hi", "seq": 1, "t": 1234.5},
        {"event": "asr_final", "text": "yo", "seq": 2, "t": 1234.5},
    ]
    assert events.listeners == 0, "leaving the block unregisters the listener"


async def test_a_listener_sees_only_what_is_published_after_it_joined():
    events = bus()
    events.publish({"event": "before"})
    with events.listen() as late:
        events.publish({"event": "after"})
        events.close()
        assert [e["event"] for e in await drain(late)] == ["after"]


async def test_a_slow_listener_loses_its_oldest_events_and_never_blocks_the_publisher():
    events = bus(max_queued=3)
    with events.listen() as slow, events.listen() as fast:
        fast_got = []
        for n in range(10):
            events.publish({"n": n})  # synchronous: returns at once whatever the listeners do
            fast_got.append(await fast.get())
        events.close()
        assert [e["n"] for e in fast_got] == list(range(10))
        kept = await drain(slow)
    assert [e["n"] for e in kept] == [7, 8, 9], "the newest 3 are kept"
    assert [e["seq"] for e in kept] == [8, 9, 10], "the gap in seq shows what was lost"
    assert slow.dropped == 7 and fast.dropped == 0


async def test_close_ends_every_listener_after_what_it_had_queued():
    events = bus()
    with events.listen() as a, events.listen() as b:
        waiting = asyncio.create_task(drain(a))
        await asyncio.sleep(0)
        events.publish({"event": "last"})
        events.close()
        events.publish({"event": "after close"})  # dropped
        assert [e["event"] for e in await asyncio.wait_for(waiting, 1.0)] == ["last"]
        assert [e["event"] for e in await drain(b)] == ["last"]
    with events.listen() as after:  # a listener of a closed bus ends at once
        assert await asyncio.wait_for(drain(after), 1.0) == []


async def test_get_times_out_with_none():
    events = bus()
    with events.listen() as listener:
        assert await listener.get(timeout=0.01) is None
        events.publish({"event": "x"})
        assert (await listener.get(timeout=0.01))["event"] == "x"


def test_listeners_are_capped_per_session():
    events = bus(max_listeners=2)
    with events.listen(), events.listen():
        with pytest.raises(TooManyRequests, match="max 2"), events.listen():
            pass
    with events.listen():  # the slots are free again
        assert events.listeners == 1


def test_sse_frames_one_event_as_one_data_line_and_a_blank_line():
    message = sse({"status": "start", "text": "two\nlines, ünïcode"})
    assert message.startswith("data: ") and message.endswith("\n\n")
    assert message.count("\n") == 2, "JSON escapes newlines: one data line"
    assert json.loads(message[len("data: "):]) == {"status": "start", "text": "two\nlines, ünïcode"}
    assert HEARTBEAT.startswith(":") and HEARTBEAT.endswith("\n\n"), "a comment: EventSource ignores it"


async def test_sse_stream_sends_heartbeats_when_quiet_and_ends_when_the_bus_closes():
    events = bus()
    with events.listen() as listener:
        stream = sse_stream(listener, heartbeat_s=0.02)
        assert await anext(stream) == HEARTBEAT
        events.publish({"event": "x"})
        assert json.loads((await anext(stream))[6:])["event"] == "x"
        events.close()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_delayed_publishes_later_and_in_order():
    got: list[tuple[float, int]] = []
    loop = asyncio.get_running_loop()
    publish = delayed(lambda event: got.append((loop.time(), event["n"])), 0.05)
    t0 = loop.time()
    for n in range(20):
        publish({"n": n})
    assert got == [], "nothing at once"
    await asyncio.sleep(0.15)
    assert [n for _, n in got] == list(range(20))
    assert all(t - t0 >= 0.05 for t, _ in got)
    append = got.append
    assert delayed(append, 0) is append, "no delay: the publisher itself"
