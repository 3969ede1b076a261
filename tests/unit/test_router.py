"""SessionAffinityRouter.choose_replicas on fake replicas and requests (no Ray cluster).

The router reads only `replica.replica_id.unique_id`, `replica.routing_stats`,
`request.metadata.session_id` and `request.routing_context.should_backoff`, so plain namespaces
stand in for Serve's RunningReplica and PendingRequest.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID

from deployments.rtc.router import SessionAffinityRouter
from deployments.rtc.session_ids import new_session_id, owner_tag

pytestmark = pytest.mark.unit


def replica(unique_id: str, sessions: int | None = 0, stats: dict | None = None) -> SimpleNamespace:
    if stats is None:
        stats = {} if sessions is None else {"sessions": sessions}
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=unique_id), routing_stats=stats)


def request(session_id: str | None = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session_id),
                           routing_context=SimpleNamespace(should_backoff=False))


def ids(ranks: list[list[SimpleNamespace]]) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


@pytest.fixture
def router() -> SessionAffinityRouter:
    return SessionAffinityRouter(DeploymentID(name="SessionHost", app_name="avatar"), DeploymentHandleSource.UNKNOWN)


@pytest.fixture
def replicas() -> list[SimpleNamespace]:
    return [replica("aaaa1111", 2), replica("bbbb2222", 0), replica("cccc3333", 1)]


async def test_a_known_session_goes_to_its_owner_only(router, replicas):
    for owner in replicas:
        sid = new_session_id(owner.replica_id.unique_id)
        assert await router.choose_replicas(replicas, request(sid)) == [[owner]]


async def test_a_session_whose_owner_is_gone_may_go_to_any_replica(router, replicas):
    sid = new_session_id("dead-replica")
    assert owner_tag("dead-replica") not in {owner_tag(r.replica_id.unique_id) for r in replicas}
    ranks = await router.choose_replicas(replicas, request(sid))
    assert ranks == [replicas], "one rank with every candidate (it answers 410 or 404): never an empty choice"


@pytest.mark.parametrize("sid", ["", None])
async def test_a_new_session_goes_to_the_least_loaded_replica_first(router, replicas, sid):
    ranks = await router.choose_replicas(replicas, request(sid))
    assert ids(ranks) == [["bbbb2222"], ["cccc3333", "aaaa1111"]]


async def test_missing_routing_stats_count_as_no_sessions(router):
    cands = [replica("busy", 3), replica("fresh", stats={}), replica("unknown", stats=None)]
    cands[2].routing_stats = None
    ranks = await router.choose_replicas(cands, request())
    assert ranks[0][0].replica_id.unique_id in {"fresh", "unknown"}
    assert ids(ranks)[1][-1] == "busy"


async def test_ties_are_broken_at_random_and_every_replica_stays_a_fallback(router):
    cands = [replica(f"r{i}", 1) for i in range(3)]
    firsts = set()
    for _ in range(200):
        ranks = await router.choose_replicas(cands, request())
        assert [len(rank) for rank in ranks] == [1, 2]
        assert sorted(sum(ids(ranks), [])) == ["r0", "r1", "r2"], "complete: every candidate once"
        firsts.add(ranks[0][0].replica_id.unique_id)
    assert firsts == {"r0", "r1", "r2"}


async def test_one_candidate_is_one_rank(router):
    only = replica("solo", 3)
    assert await router.choose_replicas([only], request()) == [[only]]
    assert await router.choose_replicas([only], request(new_session_id("other"))) == [[only]]


@pytest.mark.parametrize("sid", ["", new_session_id("x")])
async def test_no_candidates_is_no_choice(router, sid):
    assert await router.choose_replicas([], request(sid)) == []
    assert await router.choose_replicas([], None) == []


async def test_no_pending_request_ranks_like_a_new_session(router, replicas):
    assert ids(await router.choose_replicas(replicas, None))[0] == ["bbbb2222"]


@pytest.mark.parametrize("sid", ["1", "1234567", "abc"])
async def test_ids_of_seven_characters_or_fewer_are_treated_as_new_sessions(router, replicas, sid):
    assert ids(await router.choose_replicas(replicas, request(sid)))[0] == ["bbbb2222"]


@pytest.mark.parametrize("sid", ["not-a-session-id", "12345678", "1" + "9" * 20])
async def test_longer_junk_ids_match_no_owner_and_may_go_anywhere(router, replicas, sid):
    # The router does not validate ids (Api does, before routing): junk that matches no tag gets
    # every candidate, and the replica that receives it answers 404 (or 410 for a dead owner).
    assert await router.choose_replicas(replicas, request(sid)) == [replicas]


async def test_replicas_whose_tags_collide_share_their_sessions_rank(router):
    # 6-digit tags: about one pair in a million collides; both replicas then get the session's
    # requests (the one that does not hold it answers 404).
    seen: dict[str, str] = {}
    i = 0
    while True:
        uid = f"replica-{i}"
        tag = owner_tag(uid)
        if tag in seen:
            break
        seen[tag] = uid
        i += 1
    a, b, c = replica(seen[tag]), replica(uid), replica("elsewhere")
    assert await router.choose_replicas([a, c, b], request(new_session_id(uid))) == [[a, b]]


@pytest.mark.parametrize("sid", ["", new_session_id("aaaa1111"), new_session_id("gone")])
async def test_every_routed_request_backs_off_between_attempts(router, replicas, sid):
    req = request(sid)
    await router.choose_replicas(replicas, req)
    assert req.routing_context.should_backoff is True
    req = request(sid)
    await router.choose_replicas([], req)
    assert req.routing_context.should_backoff is True


# ---- host_calls: the Api's calls to SessionHost never hang on a dead host ---------------------

class FakeResponse:
    """A DeploymentResponse: `taken` says whether a replica ever takes it, `result` what it gives."""

    def __init__(self, taken: bool = True, result=None) -> None:
        self._taken, self._result, self.cancelled = taken, result, False

    async def _fetch_future_result_async(self):
        if not self._taken:
            await asyncio.Event().wait()  # no live replica: Serve would queue it
        return self

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result


@pytest.fixture
def registry(monkeypatch):
    from deployments.rtc import host_calls, host_registry

    class Store(dict):
        put = dict.__setitem__

    reg = host_registry.HostRegistry("avatar", Store(), alive=lambda name, ns: name == "live")
    monkeypatch.setattr(host_registry, "for_this_app", lambda: reg)
    monkeypatch.setattr(host_calls, "ROUTE_TIMEOUT_S", 0.05)
    return reg


def _died():
    from ray.exceptions import ActorDiedError, RayTaskError

    wrapped = RayTaskError("human", "traceback", ActorDiedError())
    return [ActorDiedError(), wrapped]


def test_replica_death_is_seen_through_ray_and_serve_wrappers():
    from ray.exceptions import ActorUnavailableError

    from deployments.common.errors import SessionNotFound
    from deployments.rtc.host_calls import is_replica_death

    for exc in [*_died(), ActorUnavailableError("gone", None)]:
        assert is_replica_death(exc)
    outer = RuntimeError("serve")
    outer.__cause__ = _died()[0]
    assert is_replica_death(outer)
    assert not is_replica_death(SessionNotFound("unknown session 1"))
    assert not is_replica_death(ValueError("x"))


@pytest.mark.parametrize("owner, status", [("dead", 410), ("live", 503), (None, 404)])
async def test_a_session_call_no_replica_takes_answers_from_the_registry_at_once(registry, owner, status):
    from deployments.common.errors import AvatarError
    from deployments.rtc.host_calls import session_call

    sid = new_session_id("owner")
    if owner is not None:
        registry.register(sid[1:7], owner, "serve")
    response = FakeResponse(taken=False)
    with pytest.raises(AvatarError) as info:
        await asyncio.wait_for(session_call(sid, response), 1.0)
    assert info.value.status == status and response.cancelled
    if status == 410:
        assert info.value.msg == f"session {sid} is gone: its host replica died"


@pytest.mark.parametrize("exc", _died())
async def test_a_session_whose_host_dies_under_the_call_is_gone(registry, exc):
    from deployments.common.errors import SessionGone
    from deployments.rtc.host_calls import session_call

    with pytest.raises(SessionGone):
        await session_call(new_session_id("x"), FakeResponse(result=exc))
    assert await session_call(new_session_id("x"), FakeResponse(result={"ok": 1})) == {"ok": 1}


async def test_an_offer_is_tried_once_more_when_its_host_dies_then_503(registry):
    from deployments.common.errors import Overloaded
    from deployments.rtc.host_calls import NO_HOST, offer_call

    answers = iter([FakeResponse(result=_died()[1]), FakeResponse(result={"sessionid": "1"})])
    assert await offer_call(lambda: next(answers)) == {"sessionid": "1"}
    answers = iter([FakeResponse(result=_died()[0]), FakeResponse(result=_died()[0])])
    with pytest.raises(Overloaded, match=NO_HOST):
        await offer_call(lambda: next(answers))
    never = FakeResponse(taken=False)
    with pytest.raises(Overloaded, match=NO_HOST):
        await asyncio.wait_for(offer_call(lambda: never), 1.0)
    assert never.cancelled
