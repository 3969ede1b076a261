"""`LlmChat` with the official SDK against a real local OpenAI-compatible server (`tests/openai_server.py`):
streaming, cancellation as the server sees it, errors, and the history sent on the next turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from deployments.llm import LlmChat, LlmError, LlmSettings, split_stream
from tests.openai_server import OpenAIServer, Script, tokens_of

pytestmark = pytest.mark.integration

PORT = 8138
CLOSED_PORT = 8139  # nothing listens there
KEY = "sk-test-0123456789abcdef"
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(port=PORT, api_key=KEY) as server:
        yield server


@pytest.fixture
async def chat(server: OpenAIServer) -> AsyncIterator[LlmChat]:
    server.reset()
    chat = LlmChat(settings(server.url))
    yield chat
    await chat.aclose()


def settings(url: str, **changes: object) -> LlmSettings:
    fields = {"base_url": url, "model": "test-model", "api_key": KEY, "system_prompt": SYSTEM, "timeout_s": 2.0}
    return LlmSettings(**{**fields, **changes})


async def timed(stream: AsyncIterator[str]) -> list[tuple[float, str]]:
    start = time.monotonic()
    return [(time.monotonic() - start, delta) async for delta in stream]


async def test_a_reply_streams_as_deltas_the_first_after_the_servers_ttft(server: OpenAIServer, chat: LlmChat) -> None:
    reply = "Hello there! The weather today is sunny and warm, with a light breeze."
    server.script = Script(reply=reply, ttft_s=0.3, tokens_per_s=40)
    got = await timed(chat.reply("What's the weather?"))
    assert [d for _, d in got] == tokens_of(reply)  # token by token, as the server sent them
    first, last = got[0][0], got[-1][0]
    assert 0.3 <= first < 1.0
    assert last - first >= 0.8 * (len(got) - 1) / 40  # paced by the server: streamed, not buffered
    request = server.requests[-1]
    assert request.body["stream"] is True and request.body["model"] == "test-model"
    assert request.messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What's the weather?"}]
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.finished and not request.cut


async def test_sentences_of_a_streamed_reply_come_before_its_end(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(reply="Sure, I can help you with that. It takes a minute or two, no more. Then we are done.",
                           tokens_per_s=30)
    got = await timed(split_stream(chat.reply("Help me.")))
    assert [s for _, s in got] == ["Sure, I can help you with that.", "It takes a minute or two, no more.",
                                   "Then we are done."]
    assert got[0][0] < got[-1][0] - 0.2  # the first sentence was out well before the reply ended


async def test_cancelling_the_consumer_closes_the_stream_at_once(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(reply="word " * 500, tokens_per_s=20)
    got: list[str] = []

    async def consume() -> None:
        async for sentence in split_stream(chat.reply("Talk forever."), first_max_words=3):
            got.append(sentence)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    cancelled = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = server.requests[-1]
    assert await request.ended_within(1.0)
    assert request.cut and not request.finished  # the server saw the connection go
    assert request.ended - cancelled < 0.5
    assert request.deltas_sent < 20  # it stopped generating: 500 words would take 25 s


async def test_closing_the_reply_iterator_closes_the_stream(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(reply="word " * 500, tokens_per_s=50)
    stream = chat.reply("Talk forever.")
    await anext(stream)
    await stream.aclose()  # e.g. the consumer broke out of its loop
    request = server.requests[-1]
    assert await request.ended_within(1.0) and request.cut
    # the SDK's inner generators, left suspended by a close (not by a cancel), are finalised by
    # the event loop in a task of its own: let it run before the leak guard looks
    await asyncio.sleep(0.05)


async def test_the_next_turn_sends_the_history_as_heard(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(reply="Paris is the capital of France. It is known for the Eiffel Tower.")
    async for _ in chat.reply("Tell me about Paris."):
        pass
    chat.spoken("Paris is the capital of France.")  # the user barged in during the second sentence
    server.script = Script(reply="Rome is the capital of Italy.")
    assert "".join([d async for d in chat.reply("And Rome?")]) == "Rome is the capital of Italy."
    assert server.requests[-1].messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Tell me about Paris."},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "And Rome?"},
    ]
    async for _ in chat.reply("Thanks."):
        pass
    assert server.requests[-1].messages[-3:] == [
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": "Rome is the capital of Italy."},
        {"role": "user", "content": "Thanks."},
    ]


async def test_a_withdrawn_reply_leaves_no_trace_in_the_history(server: OpenAIServer, chat: LlmChat) -> None:
    """A reply prepared in a pause the user then spoke on after: the next request holds the whole
    question once, not its first half and an answer nobody heard.
    """
    server.script = Script(reply="Sure, which room?")
    async for _ in chat.reply("Turn on the"):
        pass
    chat.withdraw("Turn on the")
    server.script = Script(reply="Done.")
    async for _ in chat.reply("Turn on the kitchen lights."):
        pass
    assert server.requests[-1].messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Turn on the kitchen lights."},
    ]
    chat.withdraw("something else")  # not the latest exchange: kept
    assert [t.user for t in chat.history.turns] == ["Turn on the kitchen lights."]


def assert_clear(error: LlmError, *, secret: str = KEY) -> None:
    message = str(error)
    assert "\n" not in message and len(message) < 120 and "Traceback" not in message
    assert secret not in message and secret[-4:] not in message
    assert error.__cause__ is None and error.status == 502


async def test_a_refused_key_raises_a_clear_error_fast(server: OpenAIServer) -> None:
    server.reset()
    wrong = "sk-wrong-key-9876543210"
    chat = LlmChat(settings(server.url, api_key=wrong))
    start = time.monotonic()
    with pytest.raises(LlmError) as caught:
        async for _ in chat.reply("Hi"):
            pass
    assert time.monotonic() - start < 1.5
    assert str(caught.value) == f"the LLM at 127.0.0.1:{PORT} refused the API key (HTTP 401)"
    assert not caught.value.retryable
    assert_clear(caught.value, secret=wrong)
    assert server.requests[-1].status == 401  # the server's answer quoted part of the key; we do not
    await chat.aclose()


async def test_a_server_error_raises_a_clear_retryable_error(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(status=500)
    start = time.monotonic()
    with pytest.raises(LlmError) as caught:
        async for _ in chat.reply("Hi"):
            pass
    assert time.monotonic() - start < 1.5  # no retries
    assert str(caught.value) == f"the LLM at 127.0.0.1:{PORT} failed (HTTP 500)"
    assert caught.value.retryable
    assert_clear(caught.value)
    assert len(server.requests) == 1


async def test_an_unreachable_server_raises_a_clear_error_fast() -> None:
    chat = LlmChat(settings(f"http://127.0.0.1:{CLOSED_PORT}/v1"))
    start = time.monotonic()
    with pytest.raises(LlmError) as caught:
        async for _ in chat.reply("Hi"):
            pass
    assert time.monotonic() - start < 1.5
    assert str(caught.value) == f"cannot reach the LLM at 127.0.0.1:{CLOSED_PORT}"
    assert_clear(caught.value)
    await chat.aclose()


@pytest.mark.parametrize("hang", ["before_headers", "after_headers"])
async def test_a_hung_server_raises_at_the_timeout_and_is_hung_up_on(server: OpenAIServer, hang: str) -> None:
    server.reset()
    server.script = Script(hang=hang)  # type: ignore[arg-type]
    chat = LlmChat(settings(server.url, timeout_s=0.5))
    start = time.monotonic()
    with pytest.raises(LlmError) as caught:
        async for _ in chat.reply("Hi"):
            pass
    assert 0.45 <= time.monotonic() - start < 1.5
    assert str(caught.value) == f"the LLM at 127.0.0.1:{PORT} sent no reply within 0.5 s"
    assert_clear(caught.value)
    assert await server.requests[-1].ended_within(1.0) and server.requests[-1].cut
    await chat.aclose()


async def test_a_malformed_stream_raises_a_clear_error(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(reply="Hello there, friend.", malformed=True)
    got: list[str] = []
    with pytest.raises(LlmError) as caught:
        async for delta in chat.reply("Hi"):
            got.append(delta)
    assert got == ["Hello"]  # the text before the broken line arrived
    assert str(caught.value) == f"the LLM at 127.0.0.1:{PORT} sent a malformed stream"
    assert_clear(caught.value)


async def test_a_failed_turn_is_not_sent_again(server: OpenAIServer, chat: LlmChat) -> None:
    server.script = Script(status=503)
    with pytest.raises(LlmError):
        async for _ in chat.reply("Are you there?"):
            pass
    server.script = Script(reply="Yes.")
    async for _ in chat.reply("Hello?"):
        pass
    assert server.requests[-1].messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello?"}]
