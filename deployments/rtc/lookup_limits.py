"""Failed session lookups, limited per client: a client that keeps naming sessions that do not
exist (guessing ids, or replaying old ones) is refused with 429 until its last minute is clean.

Counted per Api replica, in memory bounded by `max_clients` x `limit` timestamps: the client
seen longest ago is forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deployments.common.errors import AvatarError, TooManyRequests

FAILED_LOOKUP_STATUSES = frozenset({404, 410})  # unknown session, session's replica gone
MAX_CLIENTS = 10_000
WINDOW_S = 60.0


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error will be answered with, None for internal errors.

    An error raised inside SessionHost arrives wrapped by Ray; its `cause` is the original.
    """
    cause = getattr(exc, "cause", None)
    error = cause if isinstance(cause, AvatarError) else exc
    return error.status if isinstance(error, AvatarError) else None


class FailedLookups:
    """A sliding window of each client's failed lookups; `limit` of them in `window_s` blocks it."""

    def __init__(self, limit: int, *, window_s: float = WINDOW_S, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # oldest-seen client first

    def blocked(self, client: str) -> bool:
        """Whether `client` has had `limit` failed lookups within the window."""
        times = self._failures.get(client)
        if times is None:
            return False
        cutoff = self._clock() - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
        return len(times) >= self.limit

    def record(self, client: str) -> None:
        """Count one failed lookup of `client`."""
        times = self._failures.pop(client, None)
        if times is None:
            times = deque(maxlen=self.limit)  # only the newest `limit` can decide
        times.append(self._clock())
        self._failures[client] = times
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)

    @contextmanager
    def guard(self, client: str) -> Iterator[None]:
        """Refuse a blocked `client` (429) before the call runs; count the call if it fails with 404/410."""
        if self.blocked(client):
            raise TooManyRequests(f"too many requests for unknown sessions from this client: "
                                  f"try again within {self.window_s:g} s")
        try:
            yield
        except Exception as exc:
            if status_of(exc) in FAILED_LOOKUP_STATUSES:
                self.record(client)
            raise
