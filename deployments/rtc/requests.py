"""Reading client requests: JSON bodies and multipart uploads with size caps and deadlines, and
the session id wherever it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from deployments.common.errors import (
    AvatarError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMedia,
)
from deployments.rtc.session_ids import normalize_session_id

SESSION_HEADER = "x-session-id"
SESSION_FIELD = "sessionid"
JSON_TYPE = "application/json"


@asynccontextmanager
async def body_deadline(timeout_s: float | None) -> AsyncIterator[None]:
    """Raises RequestTimeout when the body is not in by `timeout_s` (None: no deadline).

    A client dripping its body a byte at a time would otherwise hold its request (and the
    Api replica's slot) for as long as it likes; the read stops at the deadline.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from exc


def _declared_length_over(request: Request, max_bytes: int) -> bool:
    declared = request.headers.get("content-length")
    return declared is not None and declared.isdigit() and int(declared) > max_bytes


async def read_body(request: Request, max_bytes: int, *, timeout_s: float | None = None) -> bytes:
    """The raw body, refusing more than `max_bytes` without reading it all into memory, or a body
    still arriving after `timeout_s`.
    """
    if _declared_length_over(request, max_bytes):
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    chunks, size = [], 0
    async with body_deadline(timeout_s):
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body over {max_bytes} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def is_json(content_type: str) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`)."""
    return content_type.split(";", 1)[0].strip().lower() == JSON_TYPE


async def read_fields(request: Request, max_bytes: int, *, timeout_s: float | None = None) -> dict[str, Any]:
    """The fields of a JSON object body.

    Only `Content-Type: application/json` is read: the types a cross-site HTML form or a
    "simple" fetch can send (urlencoded, multipart, text/plain) are refused with 415 before the
    body is read, so another site's page cannot drive a session from a visitor's browser without
    a CORS preflight. A request with neither body nor content type has no fields (the session id
    may be in the query or the x-session-id header).

    Raises:
        UnsupportedMedia: Another content type, or a body without one.
        PayloadTooLarge: A body over `max_bytes`.
        RequestTimeout: The body still arriving after `timeout_s`.
        BadRequest: Malformed JSON or JSON that is not an object.
    """
    ctype = request.headers.get("content-type")
    if ctype is not None and not is_json(ctype):
        raise UnsupportedMedia(f"send the body as JSON with Content-Type: {JSON_TYPE} (got {ctype[:60]!r})")
    body = await read_body(request, max_bytes, timeout_s=timeout_s)
    if ctype is None and body:  # a fetch() of an untyped Blob is a "simple" request too
        raise UnsupportedMedia(f"send the body as JSON with Content-Type: {JSON_TYPE}")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    except RecursionError as exc:  # a few KiB of "[[[[..." exhausts the parser's stack
        raise BadRequest("malformed JSON: nested too deeply") from exc
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    return data


def _capped(receive: Receive, max_bytes: int) -> Receive:
    """`receive` that raises PayloadTooLarge once the body's bytes pass `max_bytes`.

    The multipart parser spools a file part to disk whatever its size; counting the bytes as it
    pulls them stops the read at the cap instead of after the whole body.
    """
    size = 0

    async def receive_capped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > max_bytes:
                raise PayloadTooLarge(f"upload over {max_bytes} bytes")
        return message

    return receive_capped


async def read_upload(request: Request, max_bytes: int, *, timeout_s: float | None = None
                      ) -> tuple[bytes, dict[str, Any]]:
    """A multipart upload: the `file` part's bytes and the other form fields.

    The whole body counts against `max_bytes` and must arrive within `timeout_s`.
    """
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise BadRequest("send the audio as multipart/form-data with a 'file' field")
    if _declared_length_over(request, max_bytes):
        raise PayloadTooLarge(f"upload over {max_bytes} bytes")
    capped = Request(request.scope, _capped(request.receive, max_bytes))
    try:
        async with body_deadline(timeout_s):
            form = await capped.form(max_part_size=max_bytes)
    except AvatarError:
        raise
    except Exception as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("missing 'file' field with the audio")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"upload over {max_bytes} bytes")
    fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
    return data, fields


def session_id_of(request: Request, fields: dict[str, Any]) -> str:
    """The session id from the body, a form field, the query or the x-session-id header."""
    places = (fields.get(SESSION_FIELD), request.query_params.get(SESSION_FIELD), request.headers.get(SESSION_HEADER))
    for raw in places:
        if raw not in (None, ""):
            return normalize_session_id(raw)
    return normalize_session_id(None)


MEDIA_KINDS = ("audio", "video")


def check_offer_sdp(sdp: object) -> str:
    """`sdp` if it is an SDP offer with one video m-line and at most one audio m-line.

    Counted on the text, before aiortc parses it: an offer of hundreds of m-lines would otherwise
    be negotiated in full and answered with an SDP many times its size.

    Raises:
        BadRequest: Not an SDP string, no video, more than one m-line of a kind, or another kind.
    """
    if not isinstance(sdp, str) or "v=0" not in sdp:
        raise BadRequest("'sdp' must be an SDP offer string")
    kinds = [line[2:].split(" ", 1)[0] for line in sdp.splitlines() if line.startswith("m=")]
    counts = {kind: kinds.count(kind) for kind in MEDIA_KINDS}
    if counts["video"] != 1 or counts["audio"] > 1 or len(kinds) != sum(counts.values()):
        raise BadRequest(f"the offer must have one video m-line and at most one audio m-line, got {kinds[:8]}"
                         + (" ..." if len(kinds) > 8 else ""))
    return sdp


def text_field(fields: dict[str, Any], name: str, max_chars: int) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{name}' must be a non-empty string")
    if len(value) > max_chars:
        raise PayloadTooLarge(f"'{name}' is {len(value)} characters; the limit is {max_chars}")
    return value.strip()


def bool_field(fields: dict[str, Any], name: str, default: bool = False) -> bool:
    value = fields.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int):
        return bool(value)
    raise BadRequest(f"'{name}' must be a boolean")
