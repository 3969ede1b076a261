"""Reading client requests: JSON or form bodies with size caps, and the session id wherever it is."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from deployments.common.errors import BadRequest, PayloadTooLarge
from deployments.rtc.session_ids import normalize_session_id

SESSION_HEADER = "x-session-id"
SESSION_FIELD = "sessionid"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing more than `max_bytes` without reading it all into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: Request, max_bytes: int) -> dict[str, Any]:
    """JSON object or urlencoded form fields (LiveTalking clients send JSON)."""
    ctype = request.headers.get("content-type", "")
    body = await read_body(request, max_bytes)
    if "application/x-www-form-urlencoded" in ctype:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(body.decode("utf-8", "replace")))
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


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """A multipart upload: the `file` part's bytes and the other form fields."""
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise BadRequest("send the audio as multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload over {max_bytes} bytes")
    try:
        form = await request.form(max_part_size=max_bytes)
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
