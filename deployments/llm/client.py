"""One session's chat with an OpenAI-compatible LLM: streamed replies, cancellable, bounded history.

    chat = LlmChat(settings, session_id=sid)
    async for delta in chat.reply("What's the weather like?"):  # text as the LLM writes it
        ...
    chat.spoken("It's sunny")  # after an interrupt: what the user heard of that reply
    await chat.aclose()

Cancelling the task that iterates a reply (or closing the iterator) closes its HTTP response at
once, so the server sees the connection go and stops generating. Every failure of the LLM
(unreachable, refused key, server error, timeout, broken stream) raises `LlmError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI

from deployments.common.errors import EngineError, NotConfigured
from deployments.common.logs import SessionLog
from deployments.llm.history import History, Turn
from deployments.llm.settings import LlmSettings

logger = logging.getLogger(__name__)

NO_KEY = "EMPTY"  # the SDK insists on a key; servers without auth ignore it (vLLM's docs use the same)
_MESSAGE_CHARS = 160  # the most of a server's own error message an LlmError repeats

__all__ = ["LlmChat", "LlmError", "make_client"]


class LlmError(EngineError):
    """The LLM failed: unreachable, refused the key, timed out, answered an error, or broke its stream.

    The message is one short line naming the endpoint's host (never the key, the full URL or a
    traceback); `retryable` says whether asking again later may help.
    """


class _Malformed(Exception):
    """A stream line that is not a chat.completion.chunk."""


def make_client(settings: LlmSettings) -> AsyncOpenAI:
    """An SDK client for the endpoint of `settings` (sessions of a replica may share one).

    Raises:
        NotConfigured: `settings` name no endpoint or no model.
    """
    if not settings.enabled:
        raise NotConfigured("chat needs an LLM: set llm.base_url and llm.model (or OPENAI_BASE_URL and LLM_MODEL)")
    key = settings.api_key.get_secret_value() if settings.api_key else NO_KEY
    # timeout: connect, and the longest silence once the reply streams. No retries: a retry
    # costs more than a user waiting for an answer will give, and the caller decides what to say.
    return AsyncOpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s, max_retries=0)


class LlmChat:
    """A session's conversation: streamed replies, history bounded and true to what was heard.

    One reply at a time: cancel or finish a reply before asking for the next, and report what
    the user heard of it (`spoken`) before that, too.

    Args:
        settings: The endpoint, model, persona and limits (`settings.enabled` must hold).
        client: An SDK client to share (closed by its owner); `None` makes one, closed by `aclose`.
        session_id: Prefixes this chat's log lines.
    """

    def __init__(self, settings: LlmSettings, *, client: AsyncOpenAI | None = None,
                 session_id: str | None = None) -> None:
        self.settings = settings
        self.history = History(settings.history_turns, settings.system_prompt)
        self._client = client or make_client(settings)
        self._owns_client = client is None
        self._log: logging.Logger | SessionLog = SessionLog(logger, session_id) if session_id else logger
        self._host = _host_of(settings.base_url or "")
        self._options: dict[str, Any] = {
            k: v for k, v in {"temperature": settings.temperature, "max_tokens": settings.max_tokens}.items()
            if v is not None
        }

    async def reply(self, user_text: str) -> AsyncIterator[str]:
        """Stream the answer to `user_text`, as text deltas in the order the LLM writes them.

        The exchange joins the history as it streams; a reply that fails before any text leaves
        no trace. The connection, and the wait for the first text, are bounded by
        `settings.timeout_s`; so is any silence once the text flows.

        Raises:
            LlmError: The LLM failed (also after some deltas: a stream that broke off).
        """
        messages = self.history.messages(user_text)
        turn = self.history.begin(user_text)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.timeout_s  # for the connection and the first text
        stream = None
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._client.chat.completions.create(
                    model=self.settings.model or "", messages=messages, stream=True, **self._options  # type: ignore[arg-type]
                )
            while (chunk := await _next_chunk(stream, None if turn.written else deadline)) is not None:
                delta = _text_of(chunk)
                if not delta:
                    continue
                if not turn.written:
                    self._log.debug("LLM: first text after %.2f s", loop.time() - started)
                turn.written += delta
                yield delta
        except TimeoutError:
            raise self._failed(turn, f"the LLM at {self._host} sent no reply within {self.settings.timeout_s:g} s",
                               retryable=True) from None
        except openai.APIError as exc:
            raise self._failed(turn, *self._describe(exc, midway=bool(turn.written))) from None
        except _Malformed:
            raise self._failed(turn, f"the LLM at {self._host} sent a malformed stream", retryable=False) from None
        finally:
            if stream is not None:
                await _close(stream)
        self._log.debug("LLM: %d characters in %.2f s", len(turn.written), loop.time() - started)

    def spoken(self, text: str) -> None:
        """Say what the user heard of the latest reply, after an interrupt; the history keeps only that.

        Args:
            text: The reply's words whose audio was played (the spoken sentences joined with
                spaces, or a prefix of them); `""` when nothing was heard. Without a call, the
                history keeps the whole reply as streamed.
        """
        self.history.spoken(text)

    def withdraw(self, user_text: str) -> None:
        """Forget the latest exchange if it answers `user_text`: a reply prepared during a pause
        that turned out to be mid-sentence (the user's words will come again, whole, in the next).
        """
        turns = self.history.turns
        if turns and turns[-1].user == user_text:
            self.history.forget(turns[-1])

    async def aclose(self) -> None:
        """Close the SDK client, when this chat made it."""
        if self._owns_client:
            await self._client.close()

    def _failed(self, turn: Turn, msg: str, retryable: bool) -> LlmError:
        if not turn.written:
            self.history.forget(turn)
        return LlmError(msg, retryable=retryable)

    def _describe(self, exc: openai.APIError, *, midway: bool) -> tuple[str, bool]:
        """A short message and whether retrying may help, for an SDK error."""
        where = f"the LLM at {self._host}"
        if isinstance(exc, openai.APITimeoutError):
            return f"{where} went silent for {self.settings.timeout_s:g} s", True
        if isinstance(exc, openai.APIConnectionError):
            return (f"{where} broke off its reply" if midway else f"cannot reach {where}"), True
        if not isinstance(exc, openai.APIStatusError):  # an error event inside the stream
            return f"{where} reported an error: {self._server_message(exc)}", True
        status = exc.status_code
        if status in (401, 403):  # the server's message may quote part of the key: not repeated
            return f"{where} refused the API key (HTTP {status})", False
        if status == 404:
            return f"{where} has no model {self.settings.model!r} or no chat completions API (HTTP 404)", False
        if status == 429:
            return f"{where} is rate-limiting requests (HTTP 429)", True
        if status >= 500:
            return f"{where} failed (HTTP {status})", True
        return f"{where} rejected the request (HTTP {status}: {self._server_message(exc)})", False

    def _server_message(self, exc: openai.APIError) -> str:
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        text = " ".join(str(message or exc.message).split())
        if self.settings.api_key:
            text = text.replace(self.settings.api_key.get_secret_value(), "***")
        return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


async def _next_chunk(stream: Any, deadline: float | None) -> Any | None:
    """The stream's next chunk (`None` at its end), by `deadline` (loop time) if one is given."""
    try:
        if deadline is None:
            return await anext(stream, None)
        async with asyncio.timeout_at(deadline):
            return await anext(stream, None)
    except ValueError:  # a data line that is not JSON
        raise _Malformed from None


def _text_of(chunk: Any) -> str:
    """The text a chat.completion.chunk adds ("" for role-only, usage or reasoning chunks)."""
    try:
        if not chunk.choices:
            return ""
        content = chunk.choices[0].delta.content
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _Malformed from None
    if content is not None and not isinstance(content, str):
        raise _Malformed
    return content or ""


async def _close(stream: Any) -> None:
    """Close the HTTP response now (the server sees the connection go), and the SDK's generator
    with it: left suspended, the event loop would finalise it later in a task of its own.
    """
    iterator = getattr(stream, "_iterator", None)
    if iterator is not None:
        await iterator.aclose()
    await stream.close()


def _host_of(url: str) -> str:
    """`host:port` of `url`, without credentials, path or query (they may hold secrets)."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "?"
