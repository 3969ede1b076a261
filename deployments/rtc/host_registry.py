"""Which owner tags belong to SessionHost replicas of an app, and whether those are still alive.

A session id names its owner only by a 6-digit tag. When a request's owner is not among the live
replicas, the router sends it to any replica, which must answer without telling valid tags apart
from junk: a tag that a SessionHost of this app registered, and whose replica is dead, is a
session that died with its host (410); every other tag is an unknown session (404), exactly as an
unknown id on its own host. Each SessionHost registers its tag when it starts, in Ray's GCS
key-value store (shared by every process of the cluster, survives the replica).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Protocol

KV_NAMESPACE = "avatar-session-hosts"


class Owner(enum.Enum):
    UNKNOWN = "unknown"  # no SessionHost of this app ever had the tag
    ALIVE = "alive"
    DEAD = "dead"


class Store(Protocol):
    def get(self, key: str) -> str | None: ...
    def put(self, key: str, value: str) -> None: ...


class GcsStore:
    """Ray's GCS internal KV (sync RPCs of ~1 ms: call them off an event loop that serves media)."""

    def get(self, key: str) -> str | None:
        from ray.experimental import internal_kv

        value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        return None if value is None else value.decode()

    def put(self, key: str, value: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def actor_alive(name: str, namespace: str) -> bool:
    """Whether the named actor is alive (a dead replica's name is released by the GCS)."""
    import ray

    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


class HostRegistry:
    """Owner tags of one app's SessionHost replicas, each with its actor's name."""

    def __init__(self, app_name: str, store: Store | None = None,
                 alive: Callable[[str, str], bool] = actor_alive) -> None:
        self._app = app_name
        self._store = store if store is not None else GcsStore()
        self._alive = alive

    def _key(self, tag: str) -> str:
        return f"{self._app}/{tag}"

    def register(self, tag: str, actor_name: str, actor_namespace: str) -> None:
        # Two replicas whose tags collide (one pair in a million) keep the later one's name.
        self._store.put(self._key(tag), f"{actor_namespace}\n{actor_name}")

    def owner(self, tag: str) -> Owner:
        value = self._store.get(self._key(tag))
        if value is None:
            return Owner.UNKNOWN
        namespace, _, name = value.partition("\n")
        return Owner.ALIVE if self._alive(name, namespace) else Owner.DEAD


@functools.cache
def for_this_app() -> HostRegistry:
    """The registry of the app the calling replica belongs to."""
    from ray import serve

    return HostRegistry(serve.get_replica_context().app_name)


def register_this_replica(tag: str) -> None:
    """Record that the calling SessionHost replica owns `tag` (sync: run it in a thread)."""
    import ray

    ctx = ray.get_runtime_context()
    for_this_app().register(tag, ctx.get_actor_name(), ctx.namespace)
