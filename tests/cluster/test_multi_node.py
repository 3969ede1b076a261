"""The app on a multi-node cluster (tests/cluster/conftest.py): placement, affinity, redeploys,
autoscaling and the loss of a node, with WebRTC sessions talking throughout.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.avatar.types import RenderRequest
from deployments.common.features import pcm_samples_for
from deployments.rtc.session_ids import owner_tag
from tests.cluster.nodes import lose_node
from tests.serve_replicas import live_replicas

pytestmark = pytest.mark.cluster
K = 4  # frames per chunk (configs/cluster.yaml chunk_frames)
SYNTHETIC_SESSIONS = 8  # ~200 frames/s: 3+ simulated renderers' worth (conftest.SIMULATED_GPU)
LONG_TEXT = ("This is a long sentence that keeps the avatar talking for quite a while, so that the cluster "
             "can change under it, and we can see what the viewer sees and hears meanwhile. It goes on and "
             "on, with many words, and more words after those, until the very end of it.")
MAX_GAP_S = 0.2  # the bar: no gap over 200 ms at the client
SENTENCE = "Hello from one node of the cluster, speaking while the others work."


def replicas(deployment: str) -> dict[str, str]:
    """{replica unique id: node id} of the live replicas of `deployment`."""
    return {rid: actor["Address"]["NodeID"] for rid, actor in live_replicas(deployment).items()}


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


async def heard_again(client: AvatarClient, within_s: float = 30.0) -> float:
    """Seconds until a new sentence is heard, saying it again while the first tries fail.

    After a node is lost a sentence can fail (its TTS replica was on that node; the next one
    speaks once Serve has a replica again), so the bar is a sentence heard within `within_s`.
    Speech still playing is interrupted first, so only new speech counts.
    """
    t0 = time.monotonic()
    await client.post("/interrupt_talk")
    await asyncio.sleep(0.5)  # the interrupted speech's last packets arrive
    while True:
        try:
            await say_and_hear(client, timeout_s=8.0)
            return time.monotonic() - t0
        except AssertionError:
            if time.monotonic() - t0 > within_s:
                raise


async def reconnect(url: str, within_s: float = 15.0) -> tuple[AvatarClient, int]:
    """A new session as a page gets one after its host died: offers again on a 5xx answer (Serve's
    proxy answers 500 for a call routed to an Api replica on the lost node until the controller
    drops it). Returns the client and the try that got the session."""
    t0, tries = time.monotonic(), 0
    while True:
        tries += 1
        client = AvatarClient(url, decode_video=False)
        try:
            await client.connect(timeout=60)
            return client, tries
        except httpx.HTTPStatusError as exc:
            await client.close()
            if exc.response.status_code < 500 or time.monotonic() - t0 > within_s:
                raise
            await asyncio.sleep(0.5)


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


async def sent_frames(client: AvatarClient) -> tuple[float, int, int]:
    """(now, video frames the server sent, frames it skipped) for the client's session."""
    data = await client.session_stats()
    return time.monotonic(), data["video_frames_sent"], data["video_frames_skipped"]


async def assert_kept_going(client: AvatarClient, t_from: float, before: tuple[float, int, int], what: str) -> None:
    """Video arrived without a gap over 200 ms since `t_from`, and the server sent its 25 fps."""
    t_to, sent, skipped = await sent_frames(client)
    fps, gap = analysis.video_rate(client.rec, t_from, t_to)
    sent_fps = (sent - before[1]) / (t_to - before[0])
    times = [t for t in client.rec.video_t if t_from <= t <= t_to]
    gaps = sorted(((b - a, a - t_from) for a, b in zip(times, times[1:], strict=False)), reverse=True)[:3]
    print(f"{what}: session {client.sessionid} sent {sent_fps:.1f} fps ({skipped - before[2]} skipped), "
          f"received {fps:.1f} fps, largest gap {gap * 1000:.0f} ms over {t_to - t_from:.1f} s; "
          f"largest gaps (s, at s): {[(round(g, 3), round(at, 1)) for g, at in gaps]}")
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


async def wait_for(predicate, timeout_s: float, what: str, step_s: float = 0.25) -> float:
    """Seconds until `predicate()` (sync or async) is true; AssertionError naming `what` after `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - t0
        await asyncio.sleep(step_s)
    raise AssertionError(f"{what}: not within {timeout_s} s")


async def _is_gone(client: AvatarClient) -> bool:
    """Whether the session's calls answer 410. Before that: 200 (its host not yet known dead), 503
    (no host answered in time) or, from Serve's proxy, 500 for a call that went to an Api replica
    on the lost node (a proxy routes to it until the controller drops it)."""
    res = await client.post("/is_speaking")
    assert res.status_code in (200, 410, 500, 503), res.text
    return res.status_code == 410


async def test_redeploy_of_args_replaces_every_replica_and_ends_sessions_with_410(local_cluster, tmp_path):
    """What docs/CLUSTER.md says of a code or `args` change: Serve replaces every replica,
    SessionHost too, so live sessions end (410 for their calls) and new offers get new sessions."""
    clients = await open_sessions(local_cluster.url, 1)
    try:
        (old,) = clients
        hosts = replicas("SessionHost")
        changed = copy.deepcopy(local_cluster.config)
        changed["applications"][0]["args"]["max_sessions"] += 1  # any args change
        await asyncio.to_thread(local_cluster.deploy, changed, tmp_path)
        assert not set(replicas("SessionHost")) & set(hosts), "every SessionHost was replaced"
        res = await old.post("/is_speaking")
        assert res.status_code == 410, res.text
        new, _ = await reconnect(local_cluster.url)
        clients.append(new)
        assert await say_and_hear(new) < 5.0
    finally:
        await close_all(clients)


def renderer_handle():
    from ray import serve

    return serve.get_deployment_handle("AvatarRenderer", app_name="avatar")


async def synthetic_session(handle, sid: int, stop: asyncio.Event, n_frames: int) -> int:
    """Chunks of one talking session, one every 160 ms (K = 4 frames), straight to the renderer."""
    pcm = np.random.default_rng(sid).normal(0.0, 0.1, pcm_samples_for(K)).astype(np.float32)
    done, t_next = 0, time.monotonic()
    while not stop.is_set():
        first = (sid * 7 + done) * K
        await handle.render.remote(RenderRequest("testface", tuple((first + j) % n_frames for j in range(K)), pcm))
        done += 1
        t_next += K / 25
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    return done


async def test_renderer_scales_up_under_load_and_back_down_without_stalling_sessions(local_cluster, tmp_path):
    original = local_cluster.config
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1, "upscale_delay_s": 1,
                   "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    await asyncio.to_thread(local_cluster.deploy, with_changes(original, AvatarRenderer={
        "autoscaling_config": autoscaling}), tmp_path)
    await wait_for(lambda: len(replicas("AvatarRenderer")) == 1, 60, "down to min_replicas before the load")
    clients = await open_sessions(local_cluster.url, 2)
    try:
        handle = renderer_handle()
        n_frames = (await handle.avatar_info.remote("testface"))["frames"]
        t0 = time.monotonic()
        before = [await sent_frames(c) for c in clients]
        stop = asyncio.Event()
        load = [asyncio.create_task(synthetic_session(handle, i, stop, n_frames)) for i in range(SYNTHETIC_SESSIONS)]
        try:
            up = await wait_for(lambda: len(replicas("AvatarRenderer")) >= 3, 60, "renderer scaled up under load")
            most = len(replicas("AvatarRenderer"))
            await asyncio.gather(*(say_and_hear(c) for c in clients))  # talking while it scales
        finally:
            stop.set()
            chunks = await asyncio.gather(*load)
        down = await wait_for(lambda: len(replicas("AvatarRenderer")) == 1, 60, "renderer scaled back down")
        print(f"autoscaling: {most} renderers {up:.1f} s into the load ({sum(chunks)} chunks), "
              f"back to 1 {down:.1f} s after it")
        assert len(replicas("AvatarRenderer").values()) == 1
        for client, b in zip(clients, before, strict=True):
            await assert_kept_going(client, t0, b, "autoscaling")
            assert await say_and_hear(client) < 5.0
    finally:
        await close_all(clients)
        await asyncio.to_thread(local_cluster.deploy, original, tmp_path)


async def test_losing_a_gpu_node_then_a_cpu_node(local_cluster):
    """Runs last (it removes nodes). A GPU node goes: its renderers start again on the other GPU
    node while both sessions keep their video. Then a SessionHost's node goes: that node's session
    answers 410 and its client reconnects to a new session; the other session never notices."""
    cluster = local_cluster.cluster
    clients = await open_sessions(local_cluster.url, 2)
    try:
        by_node = {host_node(c.sessionid): c for c in clients}
        survivor = by_node[local_cluster.node_id(local_cluster.cpu_nodes[0])]
        victim = by_node[local_cluster.node_id(local_cluster.cpu_nodes[1])]
        lost_gpu, kept_gpu = local_cluster.gpu_nodes[1], local_cluster.node_id(local_cluster.gpu_nodes[0])
        assert lost_gpu.node_id in replicas("AvatarRenderer").values(), "the node to lose hosts renderers"

        t0 = time.monotonic()
        before = [await sent_frames(c) for c in clients]
        await asyncio.gather(*(say_and_hear(c, LONG_TEXT) for c in clients))
        t_kill = time.monotonic()
        await asyncio.to_thread(lose_node, cluster, lost_gpu)
        print(f"GPU node killed at {t_kill - t0:.1f} s, removed by {time.monotonic() - t0:.1f} s")
        took = await wait_for(lambda: list(replicas("AvatarRenderer").values()) == [kept_gpu] * 4, 60,
                              "4 renderers again, all on the GPU node left")
        print(f"GPU node lost: renderers rescheduled {took:.1f} s after")
        for client, b in zip(clients, before, strict=True):
            await assert_kept_going(client, t0, b, "GPU node lost")
            await say_and_hear(client)  # rendering with the rescheduled replicas

        t1 = time.monotonic()
        kept = await sent_frames(survivor)
        await survivor.post("/human", text=LONG_TEXT, type="echo")
        await asyncio.to_thread(lose_node, cluster, local_cluster.cpu_nodes[1])
        took = await wait_for(lambda: _is_gone(victim), 60, "the lost node's session answers 410")
        print(f"CPU node lost: its session answered 410 after {took:.1f} s")

        await victim.close()
        again, tries = await reconnect(local_cluster.url)
        clients.append(again)
        print(f"CPU node lost: a reconnecting client got a new session at try {tries}")
        assert host_node(again.sessionid) == local_cluster.node_id(local_cluster.cpu_nodes[0])
        await assert_kept_going(survivor, t1, kept, "CPU node lost")  # from the loss to the reconnect
        for client in (survivor, again):
            print(f"CPU node lost: session {client.sessionid} heard again after {await heard_again(client):.1f} s")
        print(f"node losses took {time.monotonic() - t_kill:.1f} s in all")
    finally:
        await close_all(clients)
