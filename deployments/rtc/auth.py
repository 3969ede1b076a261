"""Who may call the API: the optional API key (every endpoint but the page and /health) and the
per-session token that proves a caller is the one who opened the session.

The session token is stateless: `HMAC-SHA256(secret, sessionid)`, so every Api replica holding the
deploy's secret can check it without asking anyone, and a wrong token is refused before the call
reaches SessionHost. Both secrets are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from deployments.common.errors import Unauthorized

TOKEN_HEADER = "x-session-token"
TOKEN_FIELD = "token"
API_KEY_HEADER = "x-api-key"
TOKEN_HEX_CHARS = 32  # 128 bits: unguessable, short enough for a query string
OPEN_PATHS = frozenset({"/", "/client.js", "/health"})  # the page and the health check need no key

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def session_token(secret: str, session_id: str) -> str:
    """The token of `session_id`: hex HMAC-SHA256(secret, session_id), first 32 hex characters."""
    digest = hmac.new(secret.encode(), session_id.encode(), hashlib.sha256).hexdigest()
    return digest[:TOKEN_HEX_CHARS]


def token_of(request: Request, fields: dict[str, Any]) -> str | None:
    """The session token from the x-session-token header, the body or form field, or the query."""
    places = (request.headers.get(TOKEN_HEADER), fields.get(TOKEN_FIELD), request.query_params.get(TOKEN_FIELD))
    return next((raw for raw in places if isinstance(raw, str) and raw), None)


def check_session_token(secret: str, session_id: str, token: str | None) -> None:
    """Raises Unauthorized unless `token` is the token of `session_id`."""
    if token is None:
        raise Unauthorized(f"missing session token: send the 'token' of the /offer answer as the "
                           f"{TOKEN_HEADER} header or a 'token' field")
    if not hmac.compare_digest(session_token(secret, session_id).encode(), token.encode("utf-8", "replace")):
        raise Unauthorized("wrong session token")


def api_key_of(connection: HTTPConnection) -> str | None:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.headers.get(API_KEY_HEADER) or None


def api_key_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


class ApiKeyGuard:
    """ASGI middleware: every HTTP request but those of `open_paths` must carry the API key.

    A middleware rather than a check per route, so that /docs, /openapi.json and unknown routes
    are covered too; it answers 401 itself, in the API's error shape, because exceptions raised
    this far out would miss the app's exception handlers.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, open_paths: Collection[str] = OPEN_PATHS) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if api_key_matches(self.api_key, api_key_of(HTTPConnection(scope))):
            await self.app(scope, receive, send)
            return
        error = Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        response = JSONResponse({"code": -1, "msg": error.msg}, status_code=error.status,
                                headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)
