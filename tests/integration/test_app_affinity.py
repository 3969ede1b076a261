"""The whole app on a real Ray Serve, SessionHost at 2 replicas: affinity, errors, admission."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
import ray
from ray import serve

from clients.avatar_client import AvatarClient
from serve_app import AppArgs, bind_graph

pytestmark = pytest.mark.integration
PORT = 8123
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def app_url(avatar_data_dir):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"], max_sessions=2)
    serve.run(bind_graph(cfg, host_replicas=2), name="avatar", route_prefix="/")
    yield BASE
    serve.shutdown()
    ray.shutdown()


async def _owner_of(http: httpx.AsyncClient, sid: str) -> str:
    res = await http.get(f"/sessions/{sid}")
    assert res.status_code == 200, res.text
    return res.json()["data"]["sessionid"]


async def test_sessions_spread_and_every_request_reaches_its_owner(app_url):
    clients = [AvatarClient(app_url) for _ in range(4)]
    try:
        for client in clients:
            await client.connect()
            await asyncio.sleep(1.2)  # let routing stats (1 s period) see the new session
        sids = [c.sessionid for c in clients]
        owners = Counter(sid[1:7] for sid in sids)
        assert len(owners) == 2, f"new sessions should go to the emptier replica: {owners}"
        async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
            for sid in sids:
                for _ in range(5):
                    # The id in the JSON body, the query string or the header.
                    r1 = await http.post("/is_speaking", json={"sessionid": int(sid)})
                    r2 = await http.post(f"/is_speaking?sessionid={sid}")
                    r3 = await http.post("/is_speaking", headers={"x-session-id": sid})
                    for r in (r1, r2, r3):
                        assert r.status_code == 200, r.text
                        assert r.json()["code"] == 0
                    # A form body (what a cross-site HTML form sends) is refused before any lookup.
                    r4 = await http.post("/is_speaking", data={"sessionid": sid})
                    assert r4.status_code == 415 and "application/json" in r4.json()["msg"], r4.text
                assert await _owner_of(http, sid) == sid
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_admission_control_and_unknown_sessions(app_url):
    clients = [AvatarClient(app_url) for _ in range(4)]
    extra = AvatarClient(app_url)
    try:
        for client in clients:
            await client.connect()
            await asyncio.sleep(1.2)
        with pytest.raises(httpx.HTTPStatusError) as info:
            await extra.connect()
        assert info.value.response.status_code == 503
        assert "full" in info.value.response.json()["msg"]
        async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
            sid = clients[0].sessionid
            unknown = sid[:7] + ("00000000" if sid[7:] != "00000000" else "00000001")
            dead = "1" + ("999999" if sid[1:7] != "999999" else "999998") + "12345678"
            # A tag no host ever had answers like an unknown id on a live host: ids cannot be probed
            # for valid tags (410 is only for the sessions of a host that died).
            for bad, status in ((unknown, 404), (dead, 404), ("junk", 404), ("", 404)):
                res = await http.post("/is_speaking", json={"sessionid": bad})
                assert res.status_code == status, (bad, res.text)
                msg = res.json()["msg"]
                assert res.json()["code"] == -1 and msg
                # Raised inside SessionHost, answered with the error's own words, not Ray's traceback.
                assert "Traceback" not in msg and "\x1b" not in msg and "pid=" not in msg, msg
                assert msg.startswith(("unknown session", "session", "missing")), msg
            res = await http.get("/no/such/route")
            assert res.status_code == 404 and res.json() == {"code": -1, "msg": "Not Found"}
            res = await http.post("/human", content=b"[" * 30000, headers={"content-type": "application/json"})
            assert res.status_code == 400 and "nested too deeply" in res.json()["msg"]
    finally:
        await asyncio.gather(*(c.close() for c in clients + [extra]))


async def test_session_lines_reach_the_replica_logs(app_url):
    """Our modules log through Serve's replica handlers, and every session line names its session."""
    from pathlib import Path

    client = AvatarClient(app_url)
    try:
        await client.connect()
        sid = client.sessionid
    finally:
        await client.close()
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    for _ in range(50):  # the replica's file handler flushes on its own schedule
        lines = [line for f in logs.glob("replica_avatar_SessionHost_*.log")
                 for line in f.read_text(errors="replace").splitlines() if f"session {sid}:" in line]
        if any("started" in line for line in lines) and any("closed" in line for line in lines):
            break
        await asyncio.sleep(0.2)
    assert any("started" in line and "INFO" in line for line in lines), lines
    assert any("closed" in line for line in lines), lines
