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

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.common.audio import decode_audio
from deployments.common.errors import AvatarError, BadRequest, NotConfigured
from deployments.common.logs import adopt_serve_logging
from deployments.rtc.requests import (
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


class ApiSettings(BaseModel):
    """Input limits of the HTTP API."""

    max_text_chars: int = Field(2000, ge=1)
    max_json_bytes: int = Field(64 * 1024, ge=1024)
    max_sdp_bytes: int = Field(64 * 1024, ge=1024)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_upload_seconds: float = Field(120.0, gt=0)


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


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress(app)
class Api:
    """HTTP endpoints and the web page."""

    def __init__(self, host: DeploymentHandle, settings: dict | None = None) -> None:
        adopt_serve_logging()
        self._host = host
        self.settings = ApiSettings(**(settings or {}))

    def _for(self, session_id: str) -> DeploymentHandle:
        return self._host.options(session_id=session_id)

    @app.get("/")
    async def index(self) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/client.js")
    async def client_js(self) -> FileResponse:
        return FileResponse(WEB_DIR / "client.js", media_type="text/javascript")

    @app.get("/health")
    async def health(self) -> JSONResponse:
        return ok()

    @app.post("/offer")
    async def offer(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_sdp_bytes)
        sdp = check_offer_sdp(fields.get("sdp"))
        if fields.get("type") != "offer":
            raise BadRequest("'type' must be 'offer'")
        answer = await self._host.offer.remote(sdp, "offer")
        return JSONResponse(answer)

    @app.post("/human")
    async def human(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_json_bytes)
        sid = session_id_of(request, fields)
        kind = fields.get("type", "echo")
        if kind not in ("echo", "chat"):
            raise BadRequest("'type' must be 'echo' or 'chat'")
        text = text_field(fields, "text", self.settings.max_text_chars)
        interrupt = bool_field(fields, "interrupt")
        if kind == "chat":
            raise NotConfigured("chat is not configured: no LLM is set up on this server (use type 'echo')")
        await self._for(sid).human.remote(sid, text, interrupt)
        return ok()

    @app.post("/humanaudio")
    async def human_audio(self, request: Request) -> JSONResponse:
        data, fields = await read_upload(request, self.settings.max_upload_bytes)
        sid = session_id_of(request, fields)
        # Decoding and resampling take up to ~0.3 s: keep them off the event loop.
        pcm = await asyncio.to_thread(decode_audio, data, max_seconds=self.settings.max_upload_seconds)
        result = await self._for(sid).human_audio.remote(sid, pcm, bool_field(fields, "interrupt"))
        return ok(**result)

    @app.post("/interrupt_talk")
    async def interrupt_talk(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_json_bytes)
        sid = session_id_of(request, fields)
        await self._for(sid).interrupt.remote(sid)
        return ok()

    @app.post("/is_speaking")
    async def is_speaking(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_json_bytes)
        sid = session_id_of(request, fields)
        return ok(data=await self._for(sid).is_speaking.remote(sid))

    @app.post("/close")
    async def close(self, request: Request) -> JSONResponse:
        fields = await read_fields(request, self.settings.max_json_bytes)
        sid = session_id_of(request, fields)
        await self._for(sid).close_session.remote(sid)
        return ok()

    @app.get("/sessions/{sessionid}")
    async def session_stats(self, sessionid: str, request: Request) -> JSONResponse:
        sid = session_id_of(request, {"sessionid": sessionid})
        return ok(data=await self._for(sid).session_stats.remote(sid))
