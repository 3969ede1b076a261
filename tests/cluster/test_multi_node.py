"""The app on a multi-node cluster (tests/cluster/conftest.py): placement, affinity, redeploys,
autoscaling and the loss of a node, with WebRTC sessions talking throughout.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter

import httpx
import pytest
import ray

from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.rtc.session_ids import owner_tag

pytestmark = pytest.mark.cluster
SENTENCE = "Hello from one node of the cluster, speaking while the others work."


def replicas(deployment: str) -> dict[str, str]:
    """{replica unique id: node id} of the live replicas of `deployment` (the GCS's actor table)."""
    out = {}
    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE" and actor["ActorClassName"] == f"ServeReplica:avatar:{deployment}":
            out[actor["Name"].rsplit("#", 1)[-1]] = actor["Address"]["NodeID"]
    return out


def host_node(sid: str) -> str:
    """The node of the SessionHost replica that owns session `sid` (its id names the owner)."""
    (node,) = [n for rid, n in replicas("SessionHost").items() if owner_tag(rid) == sid[1:7]]
    return node


async def open_sessions(url: str, n: int) -> list[AvatarClient]:
    clients = []
    for _ in range(n):
        client = AvatarClient(url, decode_video=False)
        await client.connect(timeout=60)
        clients.append(client)
        await asyncio.sleep(1.2)  # routing stats (1 s period) see the new session before the next
    return clients


async def say_and_hear(client: AvatarClient, text: str = SENTENCE, timeout_s: float = 30.0) -> float:
    """POST /human and wait for its speech at the client; returns seconds to first speech."""
    t_send = time.monotonic()
    res = await client.post("/human", text=text, type="echo")
    assert res.status_code == 200, res.text
    while time.monotonic() - t_send < timeout_s:
        first = analysis.first_speech_after(client.rec, t_send)
        if first is not None:
            return first - t_send
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {client.sessionid}: no speech within {timeout_s} s")


async def close_all(clients: list[AvatarClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def test_each_stage_is_placed_on_its_own_nodes(local_cluster):
    cpu = {local_cluster.node_id(n) for n in local_cluster.cpu_nodes}
    gpu = {local_cluster.node_id(n) for n in local_cluster.gpu_nodes}
    hosts = replicas("SessionHost")
    assert len(hosts) == 2 and set(hosts.values()) == cpu, "one SessionHost on each CPU node"
    renderers = Counter(replicas("AvatarRenderer").values())
    assert sum(renderers.values()) == 4 and set(renderers) <= gpu, f"renderers on GPU nodes only: {renderers}"
    assert max(renderers.values()) <= 4, "no more than 4 slices of 0.25 on a 1-GPU node"
    for name in ("Api", "TTSService", "SpeechRecognizer"):
        assert len(replicas(name)) == 1, name


async def test_sessions_on_every_host_node_talk_and_every_request_reaches_its_owner(local_cluster):
    clients = await open_sessions(local_cluster.url, 2)
    try:
        nodes = {host_node(c.sessionid) for c in clients}
        assert len(nodes) == 2, "new sessions go to the emptier SessionHost, one per CPU node"
        delays = await asyncio.gather(*(say_and_hear(c) for c in clients))
        assert max(delays) < 5.0, delays
        async with httpx.AsyncClient(base_url=local_cluster.url, timeout=10) as http:
            for client in clients:
                for _ in range(10):  # a request reaching any other replica would be a 404
                    res = await http.post("/is_speaking", json={"sessionid": int(client.sessionid)},
                                          headers={"x-session-token": client.token or ""})
                    assert res.status_code == 200 and res.json()["code"] == 0, res.text
    finally:
        await close_all(clients)
