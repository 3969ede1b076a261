"""Per-session events: a small bus that any number of listeners (`GET /sse`) read.

Publishing never blocks and never grows memory: each listener has a bounded queue, and a listener
that falls behind loses its *oldest* events (the `seq` numbers show the gap). Closing the bus (the
session closed) ends every listener's stream.

    session.events.publish({"event": "asr_final", "text": "hello"})

Every event is a JSON object; the bus adds `seq` (1, 2, ... per session) and `t` (the server's
wall-clock time, seconds since the epoch). The shapes, in one place:

- `{"status": "start", "text": str, "turn": int}`: an utterance (one `say(text)`; an upload has
  text "") starts being heard: its first audible 40 ms slot starts playing on the audio track.
  LiveTalking's shape.
- `{"status": "end", "text": str, "turn": int}`: the slot holding its last sample has played.
- `{"status": "end", "text": str, "turn": int, "interrupted": true}`: an utterance that had
  started was cut by an interrupt (published right after the `interrupted` event).
- `{"event": "interrupted", "reason": str, "turn": int}`: speech was cut; reason "api"
  (`/interrupt_talk`, `/human` with `interrupt`) or "barge_in" (the user spoke over the avatar);
  `turn` is the new turn.
- `{"event": "error", "stage": str, "message": str}`: a stage ("tts", "render", ...) failed; the
  session goes on.
- reserved for the conversation loop: `{"event": "asr_partial", "text": str}` (speech being
  recognised), `{"event": "asr_final", "text": str}` (the user's recognised turn),
  `{"event": "llm_delta", "text": str}` (the next piece of the LLM's answer).

Sentence events are cued on the slots the audio track plays; SessionHost publishes the
conductor's events `playout_delay_s` later (`delayed`), the time a receiver's jitter buffer holds
audio before it is heard, so that captions land with the sound.

Every `start` gets exactly one `end`; an utterance that never became audible (cut before it played,
or TTS failed before any audio) gets neither. On the wire (`sse`) each event is one
`data: <json>` message, and a comment (`: ping`) goes out after `HEARTBEAT_S` of quiet so that
proxies keep an idle connection open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from deployments.common.errors import TooManyRequests

Event = dict[str, Any]
Publish = Callable[[Event], None]
MAX_QUEUED = 256  # events a listener may fall behind by before it loses the oldest
MAX_LISTENERS = 4  # per session: each one holds a SessionHost request slot
HEARTBEAT_S = 15.0
HEARTBEAT = ": ping\n\n"
OPENED = ": connected\n\n"  # the stream's first message: the session was found


class Listener:
    """One reader of a bus: a bounded queue, read with `async for` (ends when the bus closes)."""

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self._queue: deque[Event] = deque(maxlen=max_queued)
        self._ready = asyncio.Event()
        self.closed = False
        self.dropped = 0  # events lost because this listener fell behind

    def put(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque drops the oldest itself
        self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None after `timeout` seconds without one.

        Raises:
            StopAsyncIteration: the listener is closed and its queue is empty.
        """
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return None
        return self._queue.popleft()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        assert event is not None  # no timeout: only an event or the end
        return event


class EventBus:
    """Fan-out of one session's events to its listeners."""

    def __init__(self, *, max_queued: int = MAX_QUEUED, max_listeners: int = MAX_LISTENERS,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_queued = max_queued
        self.max_listeners = max_listeners
        self._clock = clock
        self._listeners: set[Listener] = set()
        self._seq = 0
        self.closed = False

    def publish(self, event: Event) -> None:
        """Send `event` (a JSON-able dict) to every listener; never blocks. A no-op once closed."""
        if self.closed:
            return
        self._seq += 1
        stamped = {**event, "seq": self._seq, "t": round(self._clock(), 3)}
        for listener in self._listeners:
            listener.put(stamped)

    @contextmanager
    def listen(self) -> Iterator[Listener]:
        """A new listener for the `with` block: it sees events published from now on.

        Raises:
            TooManyRequests: the bus already has `max_listeners` listeners.
        """
        if len(self._listeners) >= self.max_listeners:
            raise TooManyRequests(f"too many event listeners on this session (max {self.max_listeners})")
        listener = Listener(self.max_queued)
        if self.closed:
            listener.close()
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
            listener.close()

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def close(self) -> None:
        """End every listener's stream (after what it has queued); later publishes are dropped."""
        self.closed = True
        for listener in self._listeners:
            listener.close()


def delayed(publish: Publish, delay_s: float) -> Publish:
    """`publish`, called `delay_s` later on the running loop, in the order the events came.

    Timers, not tasks: nothing to cancel when the session closes (a closed bus drops them).
    """
    if delay_s <= 0:
        return publish
    last_due = float("-inf")

    def publish_later(event: Event) -> None:
        nonlocal last_due
        loop = asyncio.get_running_loop()
        last_due = max(loop.time() + delay_s, last_due + 1e-6)  # strictly later: the timer heap keeps the order
        loop.call_at(last_due, publish, event)

    return publish_later


def sse(event: Event) -> str:
    """One Server-Sent Events message: `data: <json>` and a blank line (JSON has no raw newlines)."""
    return f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def sse_stream(listener: Listener, heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[str]:
    """`listener`'s events as SSE messages, with a heartbeat comment after `heartbeat_s` of quiet."""
    while True:
        try:
            event = await listener.get(timeout=heartbeat_s)
        except StopAsyncIteration:
            return
        yield HEARTBEAT if event is None else sse(event)
