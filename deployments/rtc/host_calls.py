"""Api → SessionHost calls that never hang on a dead host replica.

Two things make such a call wait today. A request in flight on a replica that dies fails with
Ray's actor errors (raw, or wrapped in a RayTaskError). And while SessionHost has no live replica
(its only one died), Serve queues every request until the controller has noticed the death (its
health probe) and started a replacement: seconds. So a call that no replica has taken within
ROUTE_TIMEOUT_S is given up (its routing cancelled) and answered from the host registry; only the
routing is bounded, not the call's own work (an offer negotiates for a while).

- session calls: owner died → 410, tag never known → 404, owner alive but not taking it → 503
  (streams too: `first_of_stream` answers before the first item is relayed)
- offers: a replica that died under the offer → once more on another replica, else 503 "retry"
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError

from deployments.common.errors import Overloaded, SessionGone, SessionNotFound
from deployments.rtc import host_registry
from deployments.rtc.host_registry import Owner
from deployments.rtc.session_ids import tag_of

ROUTE_TIMEOUT_S = 0.8  # a live replica takes a request in milliseconds
NO_HOST = "no session host available: retry"


def is_replica_death(exc: BaseException) -> bool:
    """Whether `exc` is, or wraps, the death (or loss) of the actor that ran the call."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RayActorError):  # ActorDiedError, ActorUnavailableError
            return True
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__  # RayTaskError, Serve's wrappers
    return False


async def taken_within(response: Any, timeout: float) -> bool:
    """Wait until a replica has taken `response`'s request; False (routing cancelled) after `timeout`.

    Serve has no public hook for "assigned"; `_fetch_future_result_async` is what `await response`
    itself awaits first. Should it go away, the call is simply not bounded here. (SessionHost may
    use it too: a render no replica takes at once can fail fast and play over idle frames.)
    """
    fetch = getattr(response, "_fetch_future_result_async", None)
    if fetch is None:
        return True
    try:
        await asyncio.wait_for(fetch(), timeout)
    except TimeoutError:
        response.cancel()
        return False
    return True


async def _owner_error(session_id: str) -> Exception:
    owner = await asyncio.to_thread(host_registry.for_this_app().owner, tag_of(session_id))
    if owner is Owner.DEAD:
        return SessionGone(f"session {session_id} is gone: its host replica died")
    if owner is Owner.UNKNOWN:
        return SessionNotFound(f"unknown session {session_id}")
    return Overloaded(f"the host of session {session_id} is not answering: retry")


async def session_call(session_id: str, response: Any) -> Any:
    """`await response` (a call routed to `session_id`'s owner), with its host's death answered."""
    try:
        if not await taken_within(response, ROUTE_TIMEOUT_S):
            raise await _owner_error(session_id)
        return await response
    except Exception as exc:
        if is_replica_death(exc):  # the replica that held the call died: the session with it
            raise SessionGone(f"session {session_id} is gone: its host replica died") from None
        raise


async def first_of_stream(session_id: str, stream: Any) -> Any:
    """The first item of a streaming call to `session_id`'s owner (`handle.options(stream=True)`),
    with its host's death answered like `session_call`: errors come before any item is relayed.
    The stream is cancelled if this fails.
    """
    try:
        if not await taken_within(stream, ROUTE_TIMEOUT_S):
            raise await _owner_error(session_id)
        return await anext(stream)
    except BaseException as exc:
        stream.cancel()
        if isinstance(exc, Exception) and is_replica_death(exc):
            raise SessionGone(f"session {session_id} is gone: its host replica died") from None
        raise


async def offer_call(call: Callable[[], Any]) -> Any:
    """`await call()` (a new offer); once more if its replica died under it, else 503."""
    for attempt in range(2):
        response = call()
        try:
            if not await taken_within(response, ROUTE_TIMEOUT_S):
                raise Overloaded(NO_HOST)
            return await response
        except Exception as exc:
            if not is_replica_death(exc):
                raise
            if attempt == 1:  # Serve has dropped the dead replica: the retry went elsewhere
                raise Overloaded(NO_HOST) from None
    raise AssertionError("unreachable")
