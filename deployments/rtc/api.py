"""Api: the stateless HTTP ingress (LiveTalking-compatible) in front of SessionHost.

It validates input, finds the session id wherever the client put it and forwards the call with
`host.options(session_id=sid)`, which the SessionAffinityRouter sends to the owner replica.
Every error is `{"code": -1, "msg": ...}` with a 4xx/5xx status; nothing a client sends can
take a session or the server down.
"""


# No `from __future__ import annotations` here: FastAPI must see real classes (Request) in the
# signatures of the class-based routes that Serve rewrites.
import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from deployments.common.audio import decode_audio
from deployments.common.errors import AvatarError, BadRequest, Overloaded
from deployments.common.logs import adopt_serve_logging
from deployments.rtc import host_calls
from deployments.rtc.auth import API_KEY_HEADER, TOKEN_HEADER, ApiKeyGuard, check_session_token, session_token, token_of
from deployments.rtc.lookup_limits import FailedLookups
from deployments.rtc.requests import (
    SESSION_HEADER,
    bool_field,
    check_offer_sdp,
    read_fields,
    read_upload,
    session_id_of,
    text_field,
)

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
app = FastAPI(title="Talking avatar", docs_url="/docs")


MIN_SECRET_CHARS = 16


class ApiSettings(BaseModel):
    """Input limits and access control of the HTTP API (`args.api` in the config)."""

    max_text_chars: int = Field(2000, ge=1)
    max_json_bytes: int = Field(64 * 1024, ge=1024)
    max_sdp_bytes: int = Field(64 * 1024, ge=1024)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_upload_seconds: float = Field(120.0, gt=0)
    body_timeout_s: float = Field(10.0, gt=0)  # a JSON body must be in by then, else 408
    upload_timeout_s: float = Field(60.0, gt=0)  # the same for /humanaudio (10 MiB in 60 s: 1.4 Mbit/s)
    # HMAC key of the session tokens; None = one generated per deploy by serve_app (all replicas share it)
    session_secret: SecretStr | None = Field(None, min_length=MIN_SECRET_CHARS)
    require_session_token: bool = False  # True: session calls without their session's token get 401
    api_key: SecretStr | None = Field(None, min_length=MIN_SECRET_CHARS)  # None = no key needed
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])  # [] = no CORS headers
    max_failed_lookups_per_minute: int = Field(30, ge=1)  # 404/410 answers per client before 429s


def ok(**data) -> JSONResponse:
    return JSONResponse({"code": 0, "msg": "ok", **data})


def error_response(exc: Exception) -> JSONResponse:
    """`{"code": -1, "msg"}` with the error's own status and message, never Ray's text.

    An error raised in another replica arrives as Ray's wrapper, whose str() is a traceback (ANSI
    colours, pids, paths): its `cause` is the original error, with the message the client gets.
    """
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, AvatarError):
        cause = exc if isinstance(exc, AvatarError) else None
    if cause is not None:
        return JSONResponse({"code": -1, "msg": cause.msg}, status_code=cause.status)
    if host_calls.is_replica_death(exc):  # a call not wrapped by host_calls: still no traceback
        log.warning("a session host replica died under a call: %s", type(exc).__name__)
        return JSONResponse({"code": -1, "msg": host_calls.NO_HOST}, status_code=503)
    log.exception("internal error: %s", exc)
    return JSONResponse({"code": -1, "msg": f"internal error: {type(exc).__name__}"}, status_code=500)


@app.exception_handler(AvatarError)
async def _on_avatar_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and wrong methods answer in the API's own shape too."""
    return JSONResponse({"code": -1, "msg": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(Exception)
async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


# Module names the routes use are defined above `Api`: serve.ingress pickles the app (routes and
# the globals they name) when the class is decorated; a name defined after it is missing in replicas.
def client_of(request: Request) -> str:
    """The client's address as Serve's proxy saw it.

    Its uvicorn takes the address from X-Forwarded-For only when the connection comes from
    FORWARDED_ALLOW_IPS (127.0.0.1 by default): a reverse proxy on the same host.
    """
    return request.client.host if request.client else ""


CORS_HEADERS = ["content-type", "authorization", API_KEY_HEADER, TOKEN_HEADER, SESSION_HEADER]
# No caching, and no buffering in a reverse proxy (nginx honours X-Accel-Buffering): events must flow.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def relay_events(session_id: str, first: str, stream: Any) -> Any:
    """Yield `first`, then the rest of a SessionHost event stream; always cancel that stream at the end.

    A client that disconnects makes Serve cancel this request: the CancelledError lands here, and
    cancelling `stream` closes SessionHost's generator (its listener goes away). A host that dies
    mid-stream just ends the stream: the client reconnects and gets 410.
    """
    try:
        yield first
        async for message in stream:
            yield message
    except Exception as exc:
        log.warning("session %s: event stream ended by its host: %s", session_id, type(exc).__name__)
    finally:
        stream.cancel()


# A request whose body drips in holds its slot until `body_timeout_s`: room for many of them.
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class Api:
    """HTTP endpoints and the web page."""

    def __init__(self, host: DeploymentHandle, settings: dict | None = None) -> None:
        adopt_serve_logging()
        self._host = host
        self.settings = ApiSettings(**(settings or {}))
        if self.settings.session_secret is None:
            raise ValueError("ApiSettings.session_secret is required: serve_app.bind_graph generates one per deploy")
        self._secret = self.settings.session_secret.get_secret_value()
        self._lookups = FailedLookups(self.settings.max_failed_lookups_per_minute)

    def __serve_build_asgi_app__(self) -> Any:
        """This replica's app with the deploy's middleware (Serve calls it once, after __init__).

        `serve.ingress` gives each replica its own copy of the module's `app`, so the per-deploy
        middleware goes on that copy, here, before its first request builds the middleware stack.
        Starlette runs the last added outermost: CORS answers preflights (which carry no key)
        and puts its headers on the 401s too, so a page elsewhere can read them.
        """
        replica_app = self.app  # serve.ingress's ASGIAppReplicaWrapper.app
        if self.settings.api_key is not None:
            replica_app.add_middleware(ApiKeyGuard, api_key=self.settings.api_key.get_secret_value())
        if self.settings.cors_origins:
            replica_app.add_middleware(CORSMiddleware, allow_origins=self.settings.cors_origins,
                                       allow_methods=["GET", "POST"], allow_headers=CORS_HEADERS)
        return replica_app

    async def _call(self, sid: str, method: str, *args: Any) -> Any:
        """`SessionHost.<method>(sid, *args)` on the session's owner replica, its death answered."""
        handle = self._host.options(session_id=sid)
        return await host_calls.session_call(sid, getattr(handle, method).remote(sid, *args))

    def _session_of(self, request: Request, fields: dict[str, Any]) -> str:
        """The session id of a call, checked against its token when tokens are required."""
        sid = session_id_of(request, fields)
        if self.settings.require_session_token:
            check_session_token(self._secret, sid, token_of(request, fields))
        return sid

    async def _json_fields(self, request: Request) -> dict[str, Any]:
        return await read_fields(request, self.settings.max_json_bytes, timeout_s=self.settings.body_timeout_s)

    @app.get("/")
    async def index(self) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/client.js")
    async def client_js(self) -> FileResponse:
        return FileResponse(WEB_DIR / "client.js", media_type="text/javascript")

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """200 once a SessionHost takes calls (the app can host sessions), else 503 "retry": a
        readiness probe (the Api may be up before SessionHost is, or after its last replica died).
        """
        response = self._host.ping.remote()
        if not await host_calls.taken_within(response, host_calls.ROUTE_TIMEOUT_S):
            raise Overloaded(host_calls.NO_HOST)
        await response
        return ok()

    @app.post("/offer")
    async def offer(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_sdp_bytes, timeout_s=self.settings.body_timeout_s)
        sdp = check_offer_sdp(fields.get("sdp"))
        if fields.get("type") != "offer":
            raise BadRequest("'type' must be 'offer'")
        client = client_of(request)
        answer = await host_calls.offer_call(lambda: self._host.offer.remote(sdp, "offer", client=client))
        # LiveTalking's fields plus the session's token (required of later calls when configured).
        return JSONResponse({**answer, "token": session_token(self._secret, str(answer["sessionid"]))})

    # Session calls: a client over its budget of failed lookups is refused before its body is
    # read, and each of its 404/410 answers counts (FailedLookups.guard).

    @app.post("/human")
    async def human(self, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            fields = await self._json_fields(request)
            sid = self._session_of(request, fields)
            kind = fields.get("type", "echo")
            if kind not in ("echo", "chat"):
                raise BadRequest("'type' must be 'echo' or 'chat'")
            text = text_field(fields, "text", self.settings.max_text_chars)
            interrupt = bool_field(fields, "interrupt")
            # "chat" answers 501 (from the host) when no LLM is configured
            await self._call(sid, "human", text, interrupt, kind)
        return ok()

    @app.post("/humanaudio")
    async def human_audio(self, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            data, fields = await read_upload(request, self.settings.max_upload_bytes,
                                             timeout_s=self.settings.upload_timeout_s)
            sid = self._session_of(request, fields)
            # Decoding and resampling take up to ~0.3 s: keep them off the event loop.
            pcm = await asyncio.to_thread(decode_audio, data, max_seconds=self.settings.max_upload_seconds)
            result = await self._call(sid, "human_audio", pcm, bool_field(fields, "interrupt"))
        return ok(**result)

    @app.post("/interrupt_talk")
    async def interrupt_talk(self, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            sid = self._session_of(request, await self._json_fields(request))
            await self._call(sid, "interrupt")
        return ok()

    @app.post("/is_speaking")
    async def is_speaking(self, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            sid = self._session_of(request, await self._json_fields(request))
            return ok(data=await self._call(sid, "is_speaking"))

    @app.post("/close")
    async def close(self, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            sid = self._session_of(request, await self._json_fields(request))
            await self._call(sid, "close_session")
        return ok()

    @app.get("/sse")
    async def sse(self, request: Request) -> StreamingResponse:
        """The session's events (`deployments/rtc/events.py`) as `text/event-stream`, until it closes.

        Id and token come from the query (`?sessionid=...&token=...`, what EventSource can send) or
        the headers; a bad call is answered as JSON before the stream starts.
        """
        with self._lookups.guard(client_of(request)):
            sid = self._session_of(request, {})
            stream = self._host.options(session_id=sid, stream=True).events.remote(sid)
            first = await host_calls.first_of_stream(sid, stream)
        return StreamingResponse(relay_events(sid, first, stream), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    @app.get("/sessions/{sessionid}")
    async def session_stats(self, sessionid: str, request: Request) -> JSONResponse:
        with self._lookups.guard(client_of(request)):
            sid = self._session_of(request, {"sessionid": sessionid})
            return ok(data=await self._call(sid, "session_stats"))
