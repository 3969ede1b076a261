"""Session affinity for SessionHost: requests with a session id go to the replica that owns it.

New sessions (no id) go to the replica with the fewest sessions, as reported by
`SessionHost.record_routing_stats`. A request whose owner is not a live replica goes to any
replica, which answers from the host registry (`host_registry`): 410 if the owner was a
SessionHost of this app and has died, else 404 like any unknown id. Never an empty choice,
which would make Serve retry forever. (With no live replica at all Serve queues the request
until one starts: `host_calls` bounds that wait in the Api.)
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from deployments.rtc.session_ids import owner_tag, tag_of


class SessionAffinityRouter(RequestRouter):
    """Owner replica for known sessions; least-loaded replica for new ones."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Back off between attempts if the owner is momentarily full rather than spinning.
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        sid = pending_request.metadata.session_id if pending_request is not None else ""
        if sid and len(sid) > 7:
            tag = tag_of(sid)
            owners = [r for r in candidate_replicas if owner_tag(r.replica_id.unique_id) == tag]
            if owners:
                return [owners]
            return [candidate_replicas]  # owner gone: any replica answers (410 or 404)
        ranked = sorted(candidate_replicas, key=lambda r: (_sessions(r), random.random()))
        return [[ranked[0]], ranked[1:]] if len(ranked) > 1 else [ranked]


def _sessions(replica: RunningReplica) -> int:
    stats = replica.routing_stats or {}
    return int(stats.get("sessions", 0))
