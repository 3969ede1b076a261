"""The HTTP edge locked down, on a real Serve app: API key, session tokens, CORS, JSON-only
bodies, non-finite audio, failed-lookup limits and slow-drip clients.

One app with every guard on (an API key, required session tokens, one allowed origin) and short
limits, so each guard shows in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import resource
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from clients.avatar_client import AvatarClient
from clients.sse import EventStream
from serve_app import AppArgs

pytestmark = pytest.mark.integration
PORT = 8131
SECRET = "integration-test-secret-0123456789"
KEY = "integration-test-api-key-0123"
ORIGIN = "https://page.example"
BODY_TIMEOUT_S = 5.0
MAX_FAILED_LOOKUPS = 5
AUTH = {"x-api-key": KEY}
OTHER_CLIENT = {"x-forwarded-for": "10.1.1.1"}  # Serve's uvicorn trusts it from 127.0.0.1


def token_for(sid: str) -> str:
    return hmac.new(SECRET.encode(), sid.encode(), hashlib.sha256).hexdigest()[:32]


@pytest.fixture(scope="module")
def app_url(start_app, avatar_data_dir):
    api = {"session_secret": SECRET, "api_key": KEY, "require_session_token": True, "cors_origins": [ORIGIN],
           "body_timeout_s": BODY_TIMEOUT_S, "max_failed_lookups_per_minute": MAX_FAILED_LOOKUPS}
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                  max_sessions=4, api=api)
    return start_app(cfg, PORT)


@pytest.fixture
async def session(app_url):
    """A connected WebRTC session whose HTTP client sends the API key."""
    client = AvatarClient(app_url)
    client.http.headers.update(AUTH)
    client.token = None
    try:
        answer = await client.connect()
        client.token = answer["token"]
        yield client
    finally:
        if client.token is not None:  # AvatarClient's own /close sends no token
            await client.post("/close", token=client.token)
            client.sessionid = None
        await client.close()


async def test_the_api_key_guards_all_but_the_page_and_health(app_url):
    async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
        for path in ("/", "/client.js", "/health"):
            assert (await http.get(path)).status_code == 200, path
        for method, path in (("POST", "/offer"), ("POST", "/is_speaking"), ("GET", "/sessions/123456789012345"),
                             ("GET", "/sse?sessionid=123456789012345"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/no/such/route")):
            for headers in ({}, {"x-api-key": "wrong-key-of-some-length"}, {"authorization": "Bearer nope"}):
                res = await http.request(method, path, headers=headers)
                assert res.status_code == 401, (method, path, headers, res.text)
                assert res.json()["code"] == -1
        for headers in (AUTH, {"authorization": f"Bearer {KEY}"}):
            assert (await http.get("/openapi.json", headers=headers)).status_code == 200
            # Past the key, on to the route (a 404 from its own address: the lookup budget of 127.0.0.1 stays).
            res = await http.post("/is_speaking", json={"sessionid": "junk"}, headers={**headers, **OTHER_CLIENT})
            assert res.status_code == 404


async def test_session_calls_need_the_token_of_their_session(session):
    sid, token = session.sessionid, session.token
    assert token == token_for(sid), "the answer's token is HMAC-SHA256(secret, sessionid)[:32]"
    http = session.http
    # Every session call, without a token or with another session's, is refused before SessionHost.
    other = token_for("123456789012345")
    for tok in (None, other, "0" * 32):
        extra = {} if tok is None else {"token": tok}
        for path, fields in (("/human", {"text": "Hi.", "type": "echo"}), ("/interrupt_talk", {}),
                             ("/is_speaking", {}), ("/close", {})):
            res = await http.post(path, json={"sessionid": sid, **fields, **extra})
            assert res.status_code == 401, (path, tok, res.text)
        res = await http.get(f"/sessions/{sid}", params=extra)
        assert res.status_code == 401
        res = await http.get("/sse", params={"sessionid": sid, **extra})
        assert res.status_code == 401 and res.json()["code"] == -1, "refused as JSON, before any stream"
        res = await http.post("/humanaudio", files={"file": ("a.wav", _wav(np.zeros(1600, np.float32)))},
                              data={"sessionid": sid, **extra})
        assert res.status_code == 401
    # The token in the body, the header, the query or a form field opens them.
    assert (await http.post("/is_speaking", json={"sessionid": sid, "token": token})).json()["data"] is False
    assert (await http.post("/is_speaking", json={"sessionid": sid}, headers={"x-session-token": token})).status_code == 200
    assert (await http.get(f"/sessions/{sid}", params={"token": token})).status_code == 200
    events = EventStream(http, sid, token)
    assert (await events.open()).status_code == 200
    await events.close()
    res = await http.post("/human", json={"sessionid": sid, "text": "Hello.", "type": "echo", "token": token})
    assert res.status_code == 200, res.text
    res = await http.post("/humanaudio", files={"file": ("a.wav", _wav(0.1 * np.ones(1600, np.float32)))},
                          data={"sessionid": sid, "token": token})
    assert res.status_code == 200, res.text


async def test_json_endpoints_refuse_what_a_cross_site_form_can_send(session):
    http, sid = session.http, session.sessionid
    for path in ("/offer", "/human", "/interrupt_talk", "/is_speaking", "/close"):
        for kwargs in ({"data": {"sessionid": sid, "token": session.token}},
                       {"content": b'{"sessionid": 1}', "headers": {"content-type": "text/plain;charset=UTF-8"}},
                       {"files": {"f": ("a.txt", b"x")}, "data": {"sessionid": sid}}):
            res = await http.post(path, **kwargs)
            assert res.status_code == 415, (path, kwargs, res.text)
            assert "Content-Type: application/json" in res.json()["msg"]
    # No body and no content type: the id and token in the query are enough.
    res = await http.post("/is_speaking", params={"sessionid": sid, "token": session.token})
    assert res.status_code == 200, res.text


async def test_cors_preflight_and_simple_requests_get_the_configured_origin(app_url):
    async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
        preflight = {"origin": ORIGIN, "access-control-request-method": "POST",
                     "access-control-request-headers": "content-type, x-session-token, x-api-key, x-session-id"}
        res = await http.options("/human", headers=preflight)  # no API key: preflights carry none
        assert res.status_code == 200, res.text
        assert res.headers["access-control-allow-origin"] == ORIGIN
        allowed = {h.strip().lower() for h in res.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "x-session-token", "x-api-key", "x-session-id", "authorization"} <= allowed
        assert "POST" in res.headers["access-control-allow-methods"]
        res = await http.options("/human", headers={**preflight, "origin": "https://evil.example"})
        assert res.status_code == 400 and "access-control-allow-origin" not in res.headers
        res = await http.get("/health", headers={"origin": ORIGIN})
        assert res.headers["access-control-allow-origin"] == ORIGIN
        res = await http.post("/is_speaking", json={}, headers={"origin": ORIGIN})
        assert res.status_code == 401 and res.headers["access-control-allow-origin"] == ORIGIN, "readable 401s"
        res = await http.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in res.headers


def _wav(pcm: np.ndarray, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, 16_000, format="WAV", subtype=subtype)
    return buf.getvalue()


async def test_non_finite_audio_is_refused_at_the_door(session):
    for bad in (np.nan, np.inf):
        pcm = 0.1 * np.ones(16_000, np.float32)
        pcm[8000] = bad
        res = await session.http.post("/humanaudio", files={"file": ("a.wav", _wav(pcm))},
                                      data={"sessionid": session.sessionid, "token": session.token})
        assert res.status_code == 400 and "NaN or infinite" in res.json()["msg"], res.text
    assert (await session.post("/is_speaking", token=session.token)).status_code == 200


# ---- slow drip -------------------------------------------------------------------------------
HEADER_DRIPPERS = 70
BODY_DRIPPERS = 230  # each holds an Api slot until its 408: more than the 200 slots the Api had


async def _drip_headers(port: int) -> None:
    """A request whose headers never end: a byte a second."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        while True:
            await asyncio.sleep(1.0)
            writer.write(b"a")
            await writer.drain()
    finally:
        writer.close()


async def _drip_body(port: int, sid: str) -> tuple[int | None, float]:
    """Headers of a /human call at once, then its JSON body a byte a second: (status, seconds)."""
    body = f'{{"sessionid": "{sid}", "token": "{token_for(sid)}", "text": "Hello there.", "type": "echo"}}'.encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    head = (f"POST /human HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-api-key: {KEY}\r\n\r\n")
    writer.write(head.encode())
    status_line = asyncio.ensure_future(reader.readline())
    try:
        for i in range(len(body) - 1):  # never the last byte
            await asyncio.wait({status_line}, timeout=1.0)
            if status_line.done():
                break
            try:
                writer.write(body[i : i + 1])
                await writer.drain()
            except ConnectionError:
                break
        line = await asyncio.wait_for(status_line, 5.0)
        return int(line.split()[1]), time.monotonic() - t0
    except (TimeoutError, IndexError, ValueError, ConnectionError):
        return None, time.monotonic() - t0
    finally:
        status_line.cancel()
        writer.close()


async def test_slow_drip_clients_cannot_starve_anyone(session):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * (HEADER_DRIPPERS + BODY_DRIPPERS) + 256  # our sockets; Serve's proxy has its own process
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    sid, token = session.sessionid, session.token
    headers = asyncio.gather(*(_drip_headers(PORT) for _ in range(HEADER_DRIPPERS)), return_exceptions=True)
    bodies = [asyncio.create_task(_drip_body(PORT, sid)) for _ in range(BODY_DRIPPERS)]
    try:
        await asyncio.sleep(1.5)  # all of them connected and dripping
        assert not any(task.done() for task in bodies), [t.result() for t in bodies if t.done()][:3]
        async with httpx.AsyncClient(base_url=session.base_url, headers=AUTH, timeout=10) as http:
            for call in (lambda: http.get("/health"),
                         lambda: http.post("/is_speaking", json={"sessionid": sid, "token": token}),
                         lambda: http.post("/human", json={"sessionid": sid, "token": token, "text": "Hi.",
                                                           "type": "echo"}),
                         lambda: http.get(f"/sessions/{sid}", params={"token": token})):
                t0 = time.monotonic()
                res = await call()
                took = time.monotonic() - t0
                assert res.status_code == 200 and took < 2.0, (res.request.url, res.status_code, f"{took:.2f} s")
        results = await asyncio.gather(*bodies)
    finally:
        headers.cancel()
        for task in bodies:
            task.cancel()
        await asyncio.gather(headers, *bodies, return_exceptions=True)
    statuses = [status for status, _ in results]
    assert statuses.count(408) == BODY_DRIPPERS, {s: statuses.count(s) for s in set(statuses)}
    times = sorted(t for _, t in results)
    assert BODY_TIMEOUT_S - 0.5 < times[0] and times[-1] < BODY_TIMEOUT_S + 5, (times[0], times[-1])


# Last: it leaves 10.9.8.7 blocked for a minute.
async def test_failed_lookups_are_limited_per_client(session):
    # Serve's uvicorn takes the client address from X-Forwarded-For on loopback connections:
    # two "clients" from one test.
    guesser, bystander = {"x-forwarded-for": "10.9.8.7"}, {"x-forwarded-for": "10.9.8.6"}
    http, sid, token = session.http, session.sessionid, session.token
    unknown = sid[:7] + ("00000000" if sid[7:] != "00000000" else "00000001")
    for i in range(MAX_FAILED_LOOKUPS):
        bad = "junk" if i % 2 else unknown
        res = await http.post("/is_speaking", json={"sessionid": bad, "token": token_for(bad)}, headers=guesser)
        assert res.status_code == 404, res.text
    for path, kwargs in (("/is_speaking", {"json": {"sessionid": sid, "token": token}}),
                         ("/human", {"json": {"sessionid": sid, "token": token, "text": "Hi.", "type": "echo"}}),
                         ("/humanaudio", {"files": {"file": ("a.wav", b"x")}, "data": {"sessionid": sid}})):
        res = await http.post(path, headers=guesser, **kwargs)
        assert res.status_code == 429, (path, res.text)  # even for a real session: refused before forwarding
    assert (await http.get(f"/sessions/{sid}", params={"token": token}, headers=guesser)).status_code == 429
    assert (await http.get("/sse", params={"sessionid": sid, "token": token}, headers=guesser)).status_code == 429
    res = await http.post("/is_speaking", json={"sessionid": sid, "token": token}, headers=bystander)
    assert res.status_code == 200, "other clients are not affected"
