"""Failed session lookups limited per client (deployments/rtc/lookup_limits.py), on a fake clock."""

from __future__ import annotations

import pytest

from deployments.common.errors import BadRequest, SessionGone, SessionNotFound, TooManyRequests
from deployments.rtc.lookup_limits import FailedLookups, status_of

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wrapped(Exception):
    """Like Ray's RayTaskError: the original error as `cause`."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("Traceback ...")
        self.cause = cause


def fail(limits: FailedLookups, client: str, error: Exception) -> None:
    with pytest.raises(type(error)), limits.guard(client):
        raise error


def test_status_of_unwraps_errors_from_other_replicas():
    assert status_of(SessionNotFound("x")) == 404
    assert status_of(Wrapped(SessionGone("x"))) == 410
    assert status_of(ValueError("x")) is None
    assert status_of(Wrapped(ValueError("x"))) is None


def test_a_client_is_blocked_after_the_limit_of_404s_and_410s_in_a_minute():
    clock = Clock()
    limits = FailedLookups(3, clock=clock)
    for error in (SessionNotFound("a"), SessionGone("b"), SessionNotFound("c")):
        assert not limits.blocked("1.2.3.4")
        fail(limits, "1.2.3.4", error)
    ran = []
    with pytest.raises(TooManyRequests) as info, limits.guard("1.2.3.4"):
        ran.append(True)
    assert info.value.status == 429 and not ran, "refused before the call ran"
    with limits.guard("5.6.7.8"):  # other clients are not affected
        ran.append(True)
    assert ran == [True]


def test_other_errors_and_successes_do_not_count():
    limits = FailedLookups(2, clock=Clock())
    for _ in range(5):
        fail(limits, "c", BadRequest("x"))
        fail(limits, "c", Wrapped(ValueError("x")))
        with limits.guard("c"):
            pass
    assert not limits.blocked("c") and len(limits) == 0


def test_the_block_lifts_as_failures_leave_the_window():
    clock = Clock()
    limits = FailedLookups(2, window_s=60, clock=clock)
    fail(limits, "c", SessionNotFound("x"))
    clock.now += 30
    fail(limits, "c", SessionNotFound("x"))
    assert limits.blocked("c")
    clock.now += 30.5  # the first failure is out of the window
    assert not limits.blocked("c")
    clock.now += 30  # both are: the client is forgotten
    assert not limits.blocked("c") and len(limits) == 0


def test_memory_is_bounded_oldest_client_dropped_first():
    clock = Clock()
    limits = FailedLookups(2, max_clients=100, clock=clock)
    for i in range(1000):
        for _ in range(5):
            limits.record(f"10.0.{i // 256}.{i % 256}")
    assert len(limits) == 100
    assert all(len(times) <= 2 for times in limits._failures.values()), "at most `limit` timestamps each"
    assert limits.blocked("10.0.3.231") and not limits.blocked("10.0.0.0")  # newest kept, oldest gone
