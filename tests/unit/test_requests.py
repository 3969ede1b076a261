"""Reading client requests (deployments/rtc/requests.py) from real starlette Requests built on an
ASGI scope and a `receive` callable: size caps, deadlines, JSON bodies only, uploads, the session id."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from starlette.requests import Request

from deployments.common.errors import BadRequest, PayloadTooLarge, RequestTimeout, SessionNotFound, UnsupportedMedia
from deployments.rtc.requests import (
    bool_field,
    check_offer_sdp,
    read_body,
    read_fields,
    read_upload,
    session_id_of,
    text_field,
)

pytestmark = pytest.mark.unit

SID = "123456789012345"
SID2 = "198765432109876"
SID3 = "155555555555555"


class Receive:
    """An ASGI `receive` that hands out the body in the given chunks and counts the calls."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks or [b""]
        self.calls = 0

    async def __call__(self) -> dict:
        if self.calls >= len(self.chunks):
            return {"type": "http.disconnect"}
        i = self.calls
        self.calls += 1
        return {"type": "http.request", "body": self.chunks[i], "more_body": i < len(self.chunks) - 1}


def make_request(body: bytes | list[bytes] = b"", *, content_type: str | None = None, query: str = "",
                 headers: dict[str, str] | None = None, content_length: int | bool = True) -> tuple[Request, Receive]:
    """A POST request; `content_length=True` declares the real length, an int declares that
    number, False declares none (a chunked body)."""
    chunks = body if isinstance(body, list) else [body]
    raw: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        raw.append((b"content-type", content_type.encode()))
    if content_length is True:
        raw.append((b"content-length", str(sum(map(len, chunks))).encode()))
    elif content_length is not False:
        raw.append((b"content-length", str(content_length).encode()))
    for k, v in (headers or {}).items():
        raw.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/human", "raw_path": b"/human", "root_path": "", "query_string": query.encode(),
        "headers": raw, "server": ("127.0.0.1", 8010), "client": ("127.0.0.1", 50000),
    }
    receive = Receive(chunks)
    return Request(scope, receive), receive


class DripReceive:
    """An ASGI `receive` that hands out `head`, then `byte` every `interval` seconds, never the end."""

    def __init__(self, interval: float, head: bytes = b"", byte: bytes = b" ") -> None:
        self.interval, self.head, self.byte = interval, head, byte
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        if self.calls == 1 and self.head:
            return {"type": "http.request", "body": self.head, "more_body": True}
        await asyncio.sleep(self.interval)
        return {"type": "http.request", "body": self.byte, "more_body": True}


def dripping_request(content_type: str, head: bytes = b"", byte: bytes = b" ") -> tuple[Request, DripReceive]:
    req, _ = make_request(b"", content_type=content_type, content_length=1_000)
    drip = DripReceive(0.05, head, byte)
    return Request(req.scope, drip), drip


def json_request(data: object, **kw) -> Request:
    return make_request(json.dumps(data).encode(), content_type="application/json", **kw)[0]


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]] | None = None,
              boundary: str = "XyZzYboundary") -> tuple[bytes, str]:
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, data, ctype) in (files or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ---- read_body -----------------------------------------------------------------------------
async def test_read_body_returns_the_whole_body_up_to_the_cap():
    req, _ = make_request([b"abc", b"def", b"gh"])
    assert await read_body(req, 8) == b"abcdefgh"
    req, _ = make_request(b"")
    assert await read_body(req, 0) == b""


async def test_a_declared_length_over_the_cap_is_refused_without_reading():
    req, receive = make_request(b"x" * 100)
    with pytest.raises(PayloadTooLarge) as info:
        await read_body(req, 99)
    assert info.value.status == 413 and receive.calls == 0


async def test_a_streamed_body_over_the_cap_stops_being_read():
    req, receive = make_request([b"x" * 100] * 10, content_length=False)
    with pytest.raises(PayloadTooLarge):
        await read_body(req, 250)
    assert receive.calls == 3, "reading stopped at the chunk that crossed the cap"


@pytest.mark.parametrize("declared", [10, "abc", "-1"])
async def test_a_wrong_or_junk_declared_length_does_not_lift_the_cap(declared):
    req, _ = make_request([b"x" * 100] * 3, content_length=declared)
    with pytest.raises(PayloadTooLarge):
        await read_body(req, 250)


# ---- read_fields ---------------------------------------------------------------------------
async def test_read_fields_parses_a_json_object():
    data = {"sessionid": int(SID), "text": "héllo", "interrupt": True, "nested": {"a": [1, 2]}}
    assert await read_fields(json_request(data), 1000) == data


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8", "Application/JSON ;charset=UTF-8"])
async def test_read_fields_parses_json_sent_as_json(ctype):
    req, _ = make_request(json.dumps({"text": "hi"}).encode(), content_type=ctype)
    assert await read_fields(req, 1000) == {"text": "hi"}


# What a cross-site HTML form or a CORS "simple" fetch can send, and other non-JSON types.
@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
                                   "text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x",
                                   "application/jsonp", "text/json", ""])
async def test_a_body_that_is_not_sent_as_json_is_refused_unread(ctype):
    req, receive = make_request(f"sessionid={SID}&text=hi".encode(), content_type=ctype)
    with pytest.raises(UnsupportedMedia) as info:
        await read_fields(req, 1000)
    assert info.value.status == 415 and "Content-Type: application/json" in info.value.msg
    assert receive.calls == 0, "refused before the body was read"


@pytest.mark.parametrize("body", [b"", b"  \r\n\t"])
async def test_an_empty_body_is_no_fields(body):
    req, _ = make_request(body, content_type="application/json")
    assert await read_fields(req, 1000) == {}


async def test_no_body_and_no_content_type_is_no_fields():
    # `POST /close?sessionid=...` with nothing else: the id comes from the query or the header.
    req, _ = make_request(b"", content_length=False)
    assert await read_fields(req, 1000) == {}


@pytest.mark.parametrize("content_length", [True, False])
async def test_a_body_without_a_content_type_is_refused(content_length):
    # fetch() of an untyped Blob sends no Content-Type: a "simple" request, like a form's.
    req, _ = make_request(json.dumps({"sessionid": SID}).encode(), content_length=content_length)
    with pytest.raises(UnsupportedMedia) as info:
        await read_fields(req, 1000)
    assert info.value.status == 415


# ---- deadlines -------------------------------------------------------------------------------
async def test_a_dripping_json_body_is_a_request_timeout_and_stops_being_read():
    req, drip = dripping_request("application/json")
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        await read_fields(req, 1000, timeout_s=0.3)
    assert info.value.status == 408 and 0.25 < time.monotonic() - t0 < 1.0
    calls = drip.calls
    await asyncio.sleep(0.2)
    assert drip.calls == calls, "nothing reads the body after the deadline"


async def test_a_dripping_upload_is_a_request_timeout():
    body, ctype = multipart({"sessionid": SID}, {"file": ("a.wav", b"RIFF", "audio/wav")})
    req, _ = dripping_request(ctype, head=body[: body.index(b"RIFF")], byte=b"x")  # the file drips
    with pytest.raises(RequestTimeout) as info:
        await read_upload(req, 10_000, timeout_s=0.3)
    assert info.value.status == 408


async def test_a_body_in_time_is_read_whole():
    req, _ = make_request([b'{"text":', b' "hi"}'], content_type="application/json")
    assert await read_fields(req, 1000, timeout_s=5.0) == {"text": "hi"}


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b"text=hi", b'{"a": "\xff"}', b"\xff\xfe{", b"{} {}"])
async def test_malformed_json_is_a_bad_request(body):
    req, _ = make_request(body, content_type="application/json")
    with pytest.raises(BadRequest) as info:
        await read_fields(req, 1000)
    assert info.value.status == 400 and "malformed JSON" in info.value.msg


@pytest.mark.parametrize("data", [[{"sessionid": SID}], "text", 3, None, True])
async def test_json_that_is_not_an_object_is_a_bad_request(data):
    with pytest.raises(BadRequest, match="must be an object"):
        await read_fields(json_request(data), 1000)


async def test_read_fields_applies_the_cap():
    with pytest.raises(PayloadTooLarge):
        await read_fields(json_request({"text": "x" * 100}), 64)


@pytest.mark.parametrize(("opener", "levels"), [("[", 30000), ('{"a":', 12000)])
async def test_deeply_nested_json_is_a_bad_request(opener, levels):
    # Well inside the 64 KiB cap: json.loads raises RecursionError, which must be a 400, not a 500.
    body = (opener * levels).encode()
    assert len(body) < 64 * 1024
    req, _ = make_request(body, content_type="application/json")
    with pytest.raises(BadRequest) as info:
        await read_fields(req, 64 * 1024)
    assert info.value.status == 400


# ---- read_upload ---------------------------------------------------------------------------
async def test_read_upload_returns_the_file_and_the_other_fields():
    body, ctype = multipart({"sessionid": SID, "interrupt": "true"}, {"file": ("a.wav", b"RIFF\x00data", "audio/wav")})
    req, _ = make_request(body, content_type=ctype)
    data, fields = await read_upload(req, 1000)
    assert data == b"RIFF\x00data" and fields == {"sessionid": SID, "interrupt": "true"}


async def test_an_upload_without_a_file_is_a_bad_request():
    body, ctype = multipart({"sessionid": SID, "file": "not a file part"})
    req, _ = make_request(body, content_type=ctype)
    with pytest.raises(BadRequest, match="missing 'file'"):
        await read_upload(req, 1000)


@pytest.mark.parametrize("ctype", [None, "application/json", "application/x-www-form-urlencoded", "audio/wav"])
async def test_an_upload_that_is_not_multipart_is_a_bad_request(ctype):
    req, receive = make_request(b'{"sessionid": 1}', content_type=ctype)
    with pytest.raises(BadRequest, match="multipart/form-data"):
        await read_upload(req, 1000)
    assert receive.calls == 0


async def test_a_malformed_multipart_body_is_a_bad_request():
    req, _ = make_request(b"garbage without boundaries", content_type="multipart/form-data")
    with pytest.raises(BadRequest) as info:
        await read_upload(req, 1000)
    assert info.value.status == 400


async def test_an_upload_over_the_declared_cap_is_refused_without_reading():
    body, ctype = multipart({}, {"file": ("a.wav", b"x" * 2000, "audio/wav")})
    req, receive = make_request(body, content_type=ctype)
    with pytest.raises(PayloadTooLarge):
        await read_upload(req, 1000)
    assert receive.calls == 0


async def test_an_oversize_file_in_a_chunked_body_is_refused():
    body, ctype = multipart({"sessionid": SID}, {"file": ("a.wav", b"x" * 1001, "audio/wav")})
    req, _ = make_request([body[i : i + 100] for i in range(0, len(body), 100)], content_type=ctype,
                          content_length=False)
    with pytest.raises(PayloadTooLarge):
        await read_upload(req, 1000)


async def test_an_oversize_chunked_upload_stops_being_read_at_the_cap():
    body, ctype = multipart({}, {"file": ("a.wav", b"x" * 100_000, "audio/wav")})
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    req, receive = make_request(chunks, content_type=ctype, content_length=False)
    with pytest.raises(PayloadTooLarge):
        await read_upload(req, 1000)
    assert receive.calls < 10, f"read {receive.calls} of {len(chunks)} chunks for a 1000-byte cap"


# ---- session_id_of ---------------------------------------------------------------------------
async def test_the_session_id_comes_from_the_body_then_the_query_then_the_header():
    headers = {"x-session-id": SID3}
    req, _ = make_request(query=f"sessionid={SID2}", headers=headers)
    assert session_id_of(req, {"sessionid": SID}) == SID
    assert session_id_of(req, {"sessionid": int(SID)}) == SID
    assert session_id_of(req, {}) == SID2
    assert session_id_of(req, {"sessionid": ""}) == SID2, "an empty field falls through"
    req, _ = make_request(headers=headers)
    assert session_id_of(req, {}) == SID3
    req, _ = make_request(query="sessionid=", headers={"X-Session-Id": f" {SID3} "})
    assert session_id_of(req, {"sessionid": None}) == SID3


async def test_the_first_session_id_found_is_the_one_validated():
    req, _ = make_request(headers={"x-session-id": SID})
    with pytest.raises(SessionNotFound):
        session_id_of(req, {"sessionid": "junk"})  # no fallback to the valid header


@pytest.mark.parametrize("fields", [{}, {"sessionid": ""}, {"sessionid": None}, {"other": SID}])
async def test_no_session_id_anywhere_is_session_not_found(fields):
    req, _ = make_request()
    with pytest.raises(SessionNotFound) as info:
        session_id_of(req, fields)
    assert info.value.status == 404


# ---- text_field and bool_field -----------------------------------------------------------------
def test_text_field_strips_and_checks_its_length():
    assert text_field({"text": "  hello \n"}, "text", 100) == "hello"
    assert text_field({"text": "x" * 10}, "text", 10) == "x" * 10
    with pytest.raises(PayloadTooLarge) as info:
        text_field({"text": "x" * 11}, "text", 10)
    assert info.value.status == 413


@pytest.mark.parametrize("fields", [{}, {"text": ""}, {"text": "  \n"}, {"text": 3}, {"text": None}, {"text": ["a"]}])
def test_text_field_must_be_a_non_empty_string(fields):
    with pytest.raises(BadRequest, match="non-empty string") as info:
        text_field(fields, "text", 100)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("TRUE", True), ("1", True), ("yes", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("", False), (1, True), (0, False),
     (2, True)],
)
def test_bool_field_reads_json_and_form_booleans(value, expected):
    assert bool_field({"interrupt": value}, "interrupt") is expected


def test_bool_field_default_applies_only_when_missing():
    assert bool_field({}, "interrupt") is False
    assert bool_field({}, "interrupt", default=True) is True
    assert bool_field({"interrupt": "no"}, "interrupt", default=True) is False


@pytest.mark.parametrize("value", ["maybe", "on", 1.0, None, [], {}])
def test_bool_field_rejects_anything_else(value):
    with pytest.raises(BadRequest, match="must be a boolean"):
        bool_field({"interrupt": value}, "interrupt")


# ---- check_offer_sdp -------------------------------------------------------------------------
def sdp_with(*kinds: str) -> str:
    head = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    return head + "".join(f"m={k} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n" for k in kinds)


@pytest.mark.parametrize("kinds", [("video",), ("video", "audio"), ("audio", "video")])
def test_an_offer_with_one_video_and_at_most_one_audio_passes(kinds):
    assert check_offer_sdp(sdp_with(*kinds)) == sdp_with(*kinds)


@pytest.mark.parametrize("kinds", [(), ("audio",), ("video", "video"), ("video", "audio", "audio"),
                                   ("video", "application"), ("video",) * 500])
def test_other_offers_are_refused_before_they_are_parsed(kinds):
    with pytest.raises(BadRequest, match="one video m-line") as info:
        check_offer_sdp(sdp_with(*kinds))
    assert info.value.status == 400 and len(info.value.msg) < 200  # 500 m-lines: the message stays short


@pytest.mark.parametrize("sdp", [None, 42, "hello", ""])
def test_a_non_sdp_offer_is_refused(sdp):
    with pytest.raises(BadRequest, match="SDP offer string"):
        check_offer_sdp(sdp)
