"""A local OpenAI-compatible chat server for tests: the real HTTP streaming wire protocol, scripted.

`POST /v1/chat/completions` with `"stream": true` answers `text/event-stream`: `data: {...}`
lines of `chat.completion.chunk` JSON (a role chunk, one chunk per token, a `finish_reason`
chunk), then `data: [DONE]`; without `stream` it answers one `chat.completion`. The server
runs aiohttp on its own event loop in a thread (so a test's loop can block or be cancelled
without stalling it), records every request and sees a client that hangs up mid-stream:

    with OpenAIServer(port=8138) as server:
        server.script = Script(reply="Hello there. How are you?", ttft_s=0.2, tokens_per_s=50)
        ...  # AsyncOpenAI(base_url=server.url, api_key="test")
        exchange = server.requests[-1]
        exchange.messages, exchange.cut, exchange.wait_ended(timeout=1.0)

Failures to script: `status` (401 answers OpenAI's `invalid_api_key` error JSON, any other code
a `server_error`), `hang` (before or after the response headers), `malformed` (a data line that is
not JSON), `api_key` on the server (a request with another key gets 401).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]{{1,6}})")  # roughly how BPE tokenizers cut text


def tokens_of(text: str) -> list[str]:
    """`text` in token-sized deltas (a CJK character, or up to six other characters with the
    whitespace before them); joined, they give `text` back."""
    tokens = _TOKEN.findall(text)
    rest = text[len("".join(tokens)):]  # trailing whitespace
    return [*tokens[:-1], tokens[-1] + rest] if tokens else ([rest] if rest else [])


@dataclass
class Script:
    """How the server answers the next requests.

    Attributes:
        reply: The text to stream (cut into tokens), or the exact deltas.
        ttft_s: Seconds from the request to the first token (the headers go out at once).
        tokens_per_s: Pace of the tokens after the first; 0 sends them all at once.
        status: Answer this HTTP status with OpenAI's error JSON instead (when not 200).
        hang: `"before_headers"`: never answer; `"after_headers"`: send the headers and the role
            chunk, then nothing.
        malformed: Send a data line that is not JSON after the first token.
    """

    reply: str | list[str] = "Hello! How can I help you today?"
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    status: int = 200
    hang: Literal["", "before_headers", "after_headers"] = ""
    malformed: bool = False

    def deltas(self) -> list[str]:
        return list(self.reply) if isinstance(self.reply, list) else tokens_of(self.reply)


@dataclass
class Exchange:
    """One request and what became of it (written by the server's thread)."""

    body: dict[str, Any]
    headers: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    status: int = 200
    deltas_sent: int = 0
    finished: bool = False  # the whole answer, [DONE] included, was written
    cut: bool = False  # the client closed the connection before the answer ended
    ended: float | None = None  # time.monotonic() when the handler ended
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    def wait_ended(self, timeout: float) -> bool:
        """Block until the server is done with this request; whether it was within `timeout`."""
        return self._done.wait(timeout)

    async def ended_within(self, timeout: float) -> bool:
        """`wait_ended` for async tests: polls, so the test's event loop keeps running."""
        deadline = time.monotonic() + timeout
        while not self._done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._done.is_set()


class OpenAIServer:
    """An OpenAI-compatible chat completions server on `host:port`, in a thread.

    Args:
        host: Interface to bind (loopback).
        port: Port to bind; 0 picks a free one (see `url` after `start`).
        model: The model name the chunks carry (requests may name any model).
        api_key: When set, requests must carry `Authorization: Bearer <api_key>`, else 401.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, model: str = "test-model",
                 api_key: str | None = None) -> None:
        self.host, self.port, self.model, self.api_key = host, port, model, api_key
        self.script = Script()
        self.requests: list[Exchange] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The API root to give a client as `base_url`."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> OpenAIServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # e.g. the port is taken: re-raised in start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop_site(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def reset(self) -> None:
        """Forget the requests and go back to the default script."""
        self.script = Script()
        self.requests.clear()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a client hanging up cancels its handler at once, which is how a
        # stream learns it was cut (a write would only fail a token later, or never in a hang)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop_site(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "tests"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        exchange = Exchange(body=await request.json(), headers=dict(request.headers))
        self.requests.append(exchange)
        script = self.script
        try:
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return self._error(exchange, 401, request.headers.get("Authorization", ""))
            if script.status != 200:
                return self._error(exchange, script.status, "")
            if script.hang == "before_headers":
                await asyncio.sleep(3600)
            if not exchange.body.get("stream"):
                await asyncio.sleep(script.ttft_s)
                exchange.finished = True
                return web.json_response(self._completion(script))
            return await self._stream(request, exchange, script)
        except (asyncio.CancelledError, ConnectionResetError):
            exchange.cut = True
            raise
        finally:
            exchange.ended = time.monotonic()
            exchange._done.set()

    async def _stream(self, request: web.Request, exchange: Exchange, script: Script) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": self.model,
                     "system_fingerprint": None, "choices": [
                         {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        if script.hang == "after_headers":
            await asyncio.sleep(3600)
        await asyncio.sleep(script.ttft_s)
        for i, delta in enumerate(script.deltas()):
            if i and script.tokens_per_s:
                await asyncio.sleep(1 / script.tokens_per_s)
            await send({"content": delta})
            exchange.deltas_sent += 1
            if script.malformed:
                await response.write(b"data: {not json\n\n")
        await send({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        exchange.finished = True
        return response

    def _completion(self, script: Script) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                  "message": {"role": "assistant", "content": "".join(script.deltas())}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(script.deltas()), "total_tokens": 1}}

    @staticmethod
    def _error(exchange: Exchange, status: int, authorization: str) -> web.Response:
        exchange.status = status
        if status == 401:  # OpenAI's own answer, which quotes part of the key
            key = authorization.removeprefix("Bearer ")
            error = {"message": f"Incorrect API key provided: {key[:4]}***{key[-4:]}. You can find your API key "
                                "at https://platform.openai.com/account/api-keys.",
                     "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        else:
            error = {"message": "The server had an error while processing your request. Sorry about that!",
                     "type": "server_error", "param": None, "code": None}
        return web.json_response({"error": error}, status=status)
