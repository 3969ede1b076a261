"""A reader of a session's `GET /sse`: every event with its arrival time, as a test or tool needs.

    stream = EventStream(http, sessionid, token)
    response = await stream.open()          # 200: reading in the background; else the JSON error
    await stream.wait_for(lambda e: e.get("status") == "end")
    await stream.close()

Arrival times are `time.monotonic()`, the clock `AvatarClient` stamps audio and video with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

Event = dict[str, Any]


class EventStream:
    """One `GET /sse` connection; `events` holds (time.monotonic() at arrival, event)."""

    def __init__(self, http: httpx.AsyncClient, sessionid: str, token: str | None = None) -> None:
        self._http = http
        self.params = {"sessionid": sessionid, **({"token": token} if token else {})}
        self.events: list[tuple[float, Event]] = []
        self.comments: list[str] = []
        self.ended = asyncio.Event()  # the server ended the stream (or the connection broke)
        self._response: httpx.Response | None = None
        self._task: asyncio.Task | None = None
        self._arrived = asyncio.Event()

    async def open(self) -> httpx.Response:
        """Connect. A 200 starts reading in the background; any other answer is read and returned."""
        request = self._http.build_request("GET", "/sse", params=self.params,
                                           timeout=httpx.Timeout(10.0, read=None))  # the stream idles
        response = await self._http.send(request, stream=True)
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            return response
        self._response = response
        self._task = asyncio.create_task(self._read(response), name="sse-reader")
        return response

    async def _read(self, response: httpx.Response) -> None:
        try:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    self.events.append((time.monotonic(), json.loads(line[5:].strip())))
                    self._arrived.set()
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
        except httpx.HTTPError:
            pass  # a broken connection ends the stream like a closed one
        finally:
            self.ended.set()
            self._arrived.set()

    def matching(self, predicate: Callable[[Event], bool]) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.events if predicate(e)]

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> tuple[float, Event]:
        """The first (arrival time, event) matching `predicate`, waiting up to `timeout` seconds for it."""
        async with asyncio.timeout(timeout):
            while True:
                found = self.matching(predicate)
                if found:
                    return found[0]
                if self.ended.is_set():
                    raise EOFError("the event stream ended")
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        """Hang up (the server's relay and its listener go away)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._response is not None:
            await self._response.aclose()
