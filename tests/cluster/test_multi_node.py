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
    assert len(replicas("Api")) == len(replicas("SpeechRecognizer")) == 1
    assert len(replicas("TTSService")) == 2


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


LONG_TEXT = ("This is a long sentence that keeps the avatar talking for quite a while, so that the cluster "
             "can change under it, and we can see what the viewer sees and hears meanwhile. It goes on and "
             "on, with many words, and more words after those, until the very end of it.")
MAX_GAP_S = 0.2  # the bar: no gap over 200 ms at the client


async def sent_frames(client: AvatarClient) -> tuple[float, int, int]:
    """(now, video frames the server sent, frames it skipped) for the client's session."""
    res = await client.http.get(f"/sessions/{client.sessionid}", headers={"x-session-token": client.token or ""})
    data = res.json()["data"]
    return time.monotonic(), data["video_frames_sent"], data["video_frames_skipped"]


async def assert_kept_going(client: AvatarClient, t_from: float, before: tuple[float, int, int], what: str) -> None:
    """Video arrived without a gap over 200 ms since `t_from`, and the server sent its 25 fps."""
    t_to, sent, skipped = await sent_frames(client)
    fps, gap = analysis.video_rate(client.rec, t_from, t_to)
    sent_fps = (sent - before[1]) / (t_to - before[0])
    print(f"{what}: session {client.sessionid} sent {sent_fps:.1f} fps ({skipped - before[2]} skipped), "
          f"received {fps:.1f} fps, largest gap {gap * 1000:.0f} ms over {t_to - t_from:.1f} s")
    assert gap <= MAX_GAP_S, f"{what}: video gap of {gap * 1000:.0f} ms at the client"
    assert sent_fps >= 23, f"{what}: the server sent {sent_fps:.1f} fps"


def with_changes(config: dict, **deployment_changes: dict) -> dict:
    """A copy of `config` with fields of the named deployments replaced."""
    config = copy.deepcopy(config)
    for dep in config["applications"][0]["deployments"]:
        dep.update(deployment_changes.get(dep["name"], {}))
    return config


async def test_redeploy_of_user_config_and_replica_counts_drops_no_session(local_cluster, tmp_path):
    clients = await open_sessions(local_cluster.url, 2)
    try:
        hosts = replicas("SessionHost")
        t0 = time.monotonic()
        before = [await sent_frames(c) for c in clients]
        await asyncio.gather(*(say_and_hear(c, LONG_TEXT) for c in clients))
        # Fewer TTS replicas: the one that goes finishes its streams first (Serve's graceful
        # shutdown waits for ongoing requests), so no sentence breaks off.
        changed = with_changes(
            local_cluster.config,
            AvatarRenderer={"user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}},
            TTSService={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 4}})
        await asyncio.to_thread(local_cluster.deploy, changed, tmp_path)
        assert len(replicas("TTSService")) == 1
        assert replicas("SessionHost") == hosts, "no SessionHost was restarted"
        for client, b in zip(clients, before, strict=True):
            await assert_kept_going(client, t0, b, "redeploy")
            await say_and_hear(client)  # the same session, after the redeploy
    finally:
        await close_all(clients)
