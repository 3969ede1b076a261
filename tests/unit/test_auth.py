"""Access control (deployments/rtc/auth.py): session tokens, where a caller may put them, and the
API-key middleware, through real starlette Requests and a real ASGI app."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from deployments.common.errors import Unauthorized
from deployments.rtc.auth import ApiKeyGuard, api_key_of, check_session_token, session_token, token_of

pytestmark = pytest.mark.unit

SECRET = "s" * 64
SID = "123456789012345"
KEY = "k3y-" * 8


def request_with(headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/human", "headers": raw, "query_string": query.encode()})


# ---- session tokens ------------------------------------------------------------------------
def test_the_token_is_the_truncated_hex_hmac_sha256_of_the_session_id():
    expected = hmac.new(SECRET.encode(), SID.encode(), hashlib.sha256).hexdigest()[:32]
    assert session_token(SECRET, SID) == expected
    assert len(expected) == 32 and int(expected, 16) >= 0


def test_tokens_differ_per_session_and_per_secret():
    assert session_token(SECRET, SID) != session_token(SECRET, "123456789012346")
    assert session_token(SECRET, SID) != session_token("t" * 64, SID)


def test_the_right_token_passes():
    check_session_token(SECRET, SID, session_token(SECRET, SID))


@pytest.mark.parametrize("token", [None, "", "0" * 32, "wrong", "ünïcödé", "x" * 10_000])
def test_a_missing_or_wrong_token_is_unauthorized(token):
    with pytest.raises(Unauthorized) as info:
        check_session_token(SECRET, SID, token or None)
    assert info.value.status == 401


def test_another_sessions_token_is_unauthorized():
    with pytest.raises(Unauthorized, match="wrong session token"):
        check_session_token(SECRET, SID, session_token(SECRET, "198765432109876"))


def test_a_token_made_with_another_secret_is_unauthorized():
    with pytest.raises(Unauthorized):
        check_session_token(SECRET, SID, session_token("t" * 64, SID))


def test_the_token_comes_from_the_header_then_the_body_then_the_query():
    req = request_with({"x-session-token": "from-header"}, query="token=from-query")
    assert token_of(req, {"token": "from-body"}) == "from-header"
    req = request_with(query="token=from-query")
    assert token_of(req, {"token": "from-body"}) == "from-body"
    assert token_of(req, {}) == "from-query"
    assert token_of(req, {"token": 123}) == "from-query", "a non-string field is no token"
    assert token_of(request_with(), {}) is None


# ---- API key -------------------------------------------------------------------------------
@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": f"Bearer {KEY}"}, KEY),
    ({"Authorization": f"bearer   {KEY} "}, KEY),
    ({"x-api-key": KEY}, KEY),
    ({"authorization": f"Basic {KEY}"}, None),
    ({"authorization": "Bearer "}, None),
    ({}, None),
])
def test_the_api_key_comes_from_a_bearer_authorization_or_x_api_key(headers, key):
    assert api_key_of(request_with(headers)) == key


def _guarded_app() -> ApiKeyGuard:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    routes = [Route(path, hello, methods=["GET", "POST"]) for path in ("/", "/client.js", "/health", "/offer", "/docs")]
    return ApiKeyGuard(Starlette(routes=routes), api_key=KEY)


async def _call(method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=_guarded_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.request(method, path, headers=headers)


@pytest.mark.parametrize("path", ["/", "/client.js", "/health"])
async def test_the_page_and_health_need_no_key(path):
    res = await _call("GET", path)
    assert res.status_code == 200 and res.text == "hello"


@pytest.mark.parametrize("path", ["/offer", "/docs", "/no/such/route"])
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"},
                                     {"authorization": KEY}, {"x-api-key": KEY[:-1]}])
async def test_everything_else_needs_the_key(path, headers):
    res = await _call("POST", path, headers)
    assert res.status_code == 401
    assert res.json()["code"] == -1 and "API key" in res.json()["msg"]
    assert res.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}])
async def test_the_key_opens_everything_else(headers):
    res = await _call("POST", "/offer", headers)
    assert res.status_code == 200 and res.text == "hello"
    assert (await _call("GET", "/no/such/route", headers)).status_code == 404, "passed on to the app"
