"""Unit tests of what a chat remembers and how it is configured: `History`, `LlmChat`'s turns (a fake
SDK client), `LlmSettings` and `settings_from`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx2
import openai
import pydantic
import pytest

from deployments.common.errors import EngineError, NotConfigured
from deployments.llm import History, LlmChat, LlmError, LlmSettings, settings_from

pytestmark = pytest.mark.unit

SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def answered(history: History, question: str, answer: str) -> None:
    history.begin(question).written = answer


# --- History -------------------------------------------------------------------------------------

def test_messages_are_system_history_then_the_new_user_text() -> None:
    history = History(8, "Be brief.")
    assert history.messages("Hi") == [SYSTEM, user("Hi")]
    answered(history, "Hi", "Hello!")
    assert history.messages("How are you?") == [SYSTEM, user("Hi"), assistant("Hello!"), user("How are you?")]
    assert History(8, "").messages("Hi") == [user("Hi")]  # no system prompt: no system message


def test_history_keeps_the_last_history_turns_exchanges() -> None:
    history = History(2, "Be brief.")
    for i in range(5):
        answered(history, f"q{i}", f"a{i}")
    assert history.messages("q5") == [SYSTEM, user("q3"), assistant("a3"), user("q4"), assistant("a4"), user("q5")]
    none = History(0, "Be brief.")
    answered(none, "q0", "a0")
    assert none.messages("q1") == [SYSTEM, user("q1")]


def test_after_an_interrupt_only_what_was_spoken_is_kept() -> None:
    history = History(8, "Be brief.")
    answered(history, "Tell me about Paris.", "Paris is the capital of France. It has the Eiffel Tower. And more.")
    history.spoken("Paris is the capital of France.")
    assert history.messages("And Rome?")[1:] == [
        user("Tell me about Paris."), assistant("Paris is the capital of France."), user("And Rome?")]


def test_spoken_before_the_stream_closed_is_not_overwritten_by_later_text() -> None:
    history = History(8)
    turn = history.begin("Tell me a story.")
    turn.written = "Once upon a time"
    history.spoken("Once upon")  # the interrupt is reported while the stream is still closing
    turn.written += " there was a king."
    assert history.messages("Stop.") == [user("Tell me a story."), assistant("Once upon"), user("Stop.")]


def test_a_reply_nobody_heard_leaves_no_assistant_message_and_roles_still_alternate() -> None:
    history = History(8, "Be brief.")
    answered(history, "Tell me a joke.", "Why did the chicken")
    history.spoken("")  # barge-in before the first word played
    messages = history.messages("No, tell me the weather.")
    assert messages == [SYSTEM, user("Tell me a joke.\nNo, tell me the weather.")]
    answered(history, "No, tell me the weather.", "Sunny.")
    assert history.messages("Thanks!")[1:] == [
        user("Tell me a joke.\nNo, tell me the weather."), assistant("Sunny."), user("Thanks!")]
    roles = [m["role"] for m in history.messages("Thanks!")[1:]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


def test_spoken_applies_to_the_latest_turn_only_and_forget_drops_one() -> None:
    history = History(8)
    answered(history, "q0", "a0 long")
    answered(history, "q1", "a1 long")
    history.spoken("a1")
    failed = history.begin("q2")
    history.forget(failed)
    assert history.messages("q3") == [user("q0"), assistant("a0 long"), user("q1"), assistant("a1"), user("q3")]
    history.clear()
    assert history.messages("q4") == [user("q4")]
    History(8).spoken("nothing to apply it to")  # no turn yet: no error


# --- LlmChat with a fake SDK client --------------------------------------------------------------

def chunk(text: str | None) -> SimpleNamespace:
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text))])


class FakeStream:
    def __init__(self, deltas: list[str], gate: asyncio.Event | None) -> None:
        self._chunks = [chunk(None), *map(chunk, deltas), SimpleNamespace(choices=[])]
        self._gate = gate
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> SimpleNamespace:
        if not self._chunks:
            raise StopAsyncIteration
        if self._gate is not None and len(self._chunks) == 2:
            await self._gate.wait()  # the last delta waits
        return self._chunks.pop(0)

    async def close(self) -> None:
        self.closed = True


class FakeClient:
    """`client.chat.completions.create(...)` as the SDK has it: records the requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.deltas = ["Hello", " there", "!"]
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(self, **request: Any) -> FakeStream:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        self.streams.append(FakeStream(self.deltas, self.gate))
        return self.streams[-1]


SETTINGS = LlmSettings(base_url="http://127.0.0.1:8138/v1", model="m", system_prompt="Be brief.", history_turns=3,
                       temperature=0.3)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [d async for d in stream]


async def test_chat_streams_deltas_and_sends_the_history() -> None:
    client = FakeClient()
    chat = LlmChat(SETTINGS, client=client)  # type: ignore[arg-type]
    assert await collect(chat.reply("Hi")) == ["Hello", " there", "!"]
    client.deltas = ["Fine."]
    assert await collect(chat.reply("How are you?")) == ["Fine."]
    request = client.requests[-1]
    assert request["messages"] == [SYSTEM, user("Hi"), assistant("Hello there!"), user("How are you?")]
    assert request["model"] == "m" and request["stream"] is True and request["temperature"] == 0.3
    assert "max_tokens" not in request  # unset: left to the server
    assert all(s.closed for s in client.streams)
    await chat.aclose()  # a shared client stays open: nothing to do


async def test_an_interrupted_reply_keeps_what_was_written_until_spoken_says_otherwise() -> None:
    client = FakeClient()
    client.deltas, client.gate = ["Paris is big.", " It has", " towers."], asyncio.Event()
    chat = LlmChat(SETTINGS, client=client)  # type: ignore[arg-type]
    got: list[str] = []

    async def consume() -> None:
        async for delta in chat.reply("Tell me about Paris."):
            got.append(delta)

    task = asyncio.create_task(consume())
    while len(got) < 2:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.streams[-1].closed
    assert chat.history.messages("x")[-2] == assistant("Paris is big. It has")
    chat.spoken("Paris is big.")
    assert chat.history.messages("x")[-2] == assistant("Paris is big.")


async def test_a_failed_request_raises_llm_error_and_leaves_no_trace() -> None:
    client = FakeClient()
    chat = LlmChat(SETTINGS, client=client)  # type: ignore[arg-type]
    await collect(chat.reply("Hi"))
    client.error = openai.APIConnectionError(request=httpx2.Request("POST", "http://user:pw@127.0.0.1:8138/v1"))
    with pytest.raises(LlmError) as caught:
        await collect(chat.reply("Are you there?"))
    assert str(caught.value) == "cannot reach the LLM at 127.0.0.1:8138"
    assert caught.value.retryable and isinstance(caught.value, EngineError) and caught.value.status == 502
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    client.error = None
    await collect(chat.reply("Hello?"))
    assert client.requests[-1]["messages"][1:] == [user("Hi"), assistant("Hello there!"), user("Hello?")]


def test_a_chat_needs_an_endpoint_and_a_model() -> None:
    with pytest.raises(NotConfigured, match="base_url"):
        LlmChat(LlmSettings(model="m"))


# --- settings ------------------------------------------------------------------------------------

def test_settings_defaults() -> None:
    s = LlmSettings()
    assert not s.enabled
    assert (s.history_turns, s.timeout_s, s.api_key, s.temperature, s.max_tokens) == (8, 10.0, None, None, None)
    assert "spoken" in s.system_prompt
    assert LlmSettings(base_url="http://127.0.0.1:11434/v1/", model="llama3.2").enabled


def test_settings_from_the_config_and_env_overrides() -> None:
    config = {"base_url": "http://vllm:8000/v1", "model": "qwen", "api_key": "file-key", "history_turns": 4}
    s = settings_from(config, {})
    assert (s.base_url, s.model, s.api_key.get_secret_value(), s.history_turns) == (
        "http://vllm:8000/v1", "qwen", "file-key", 4)
    env = {"OPENAI_BASE_URL": "https://dashscope.aliyuncs.com/compatible-mode/v1/", "OPENAI_API_KEY": "sk-env",
           "LLM_MODEL": "qwen-plus", "HOME": "/root"}
    s = settings_from(config, env)
    assert (s.base_url, s.model, s.api_key.get_secret_value(), s.history_turns) == (
        "https://dashscope.aliyuncs.com/compatible-mode/v1", "qwen-plus", "sk-env", 4)
    assert settings_from(None, env).enabled  # the environment alone is enough
    assert settings_from(config, {"LLM_MODEL": "", "OPENAI_API_KEY": " "}).model == "qwen"  # blank: unset
    assert "sk-env" not in repr(settings_from(None, env))


def test_settings_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match="http"):
        settings_from({"base_url": "127.0.0.1:8000/v1"}, {})
    with pytest.raises(pydantic.ValidationError):
        settings_from({"modle": "typo"}, {})
    with pytest.raises(pydantic.ValidationError):
        settings_from({"history_turns": -1}, {})
    with pytest.raises(pydantic.ValidationError):
        settings_from({"timeout_s": 0}, {})
    assert not settings_from({"base_url": " ", "model": "m"}, {}).enabled
