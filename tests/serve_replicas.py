"""The live replicas of a deployment of app "avatar", read from the GCS's actor table (the state
API needs the dashboard, which most tests do not start)."""

from __future__ import annotations

from typing import Any

import ray


def live_replicas(deployment: str, app: str = "avatar") -> dict[str, dict[str, Any]]:
    """{replica unique id: its actor's record (Pid, Address.NodeID, ...)} of the live replicas."""
    return {actor["Name"].rsplit("#", 1)[-1]: actor for actor in ray._private.state.actors().values()
            if actor["State"] == "ALIVE" and actor["ActorClassName"] == f"ServeReplica:{app}:{deployment}"}
