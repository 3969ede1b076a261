"""The conversation loop on a real Serve app: an aiortc client speaks Piper-made WAVs over its
microphone track; real Silero VAD, Whisper tiny.en and Piper; a local OpenAI-protocol LLM server.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from ray import serve

from clients import analysis
from clients.avatar_client import AvatarClient, Microphone
from serve_app import AppArgs, bind_graph
from tests.openai_server import OpenAIServer, Script

pytestmark = pytest.mark.integration
PORT, LLM_PORT = 8141, 8143
DATA = Path(__file__).resolve().parents[1] / "data"
WAVS = json.loads((DATA / "speech_wavs.json").read_text())
LIGHTS, WEATHER = DATA / "speech_lights.wav", DATA / "speech_weather.wav"
ANSWER = "Sure, the kitchen lights are on now. Is there anything else I can do for you today?"
LONG_ANSWER = ("Tomorrow will be sunny and warm in the morning, with a light breeze from the west. "
               "In the afternoon clouds will build up slowly over the hills. Rain may come late in the evening, "
               "so take an umbrella if you go out for dinner. The weekend looks dry again.")


@pytest.fixture(scope="module")
def llm_server():
    with OpenAIServer(port=LLM_PORT) as server:
        yield server


@pytest.fixture(scope="module")
def deploy(start_app, avatar_data_dir, llm_server):
    """`deploy(chat)`: the app in echo or chat mode (redeployed only when the mode changes)."""
    current: list[bool] = []

    def args(chat: bool) -> AppArgs:
        llm = {"base_url": llm_server.url, "model": "test-model", "timeout_s": 5} if chat else {}
        return AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                       llm=llm)

    def deploy(chat: bool) -> str:
        if not current:
            url = start_app(args(chat), PORT)
        else:
            url = f"http://127.0.0.1:{PORT}"
            if current[-1] != chat:
                serve.run(bind_graph(args(chat)), name="avatar", route_prefix="/")
        current.append(chat)
        return url

    return deploy


@pytest.fixture(autouse=True)
def _fresh_script(llm_server):
    llm_server.reset()
    yield


async def _client(url: str) -> tuple[AvatarClient, object]:
    client = AvatarClient(url, microphone=Microphone())
    await client.connect()
    events = client.events()
    assert (await events.open()).status_code == 200
    return client, events


async def _close(client: AvatarClient, events) -> None:
    await events.close()
    await client.close()


async def test_echo_from_the_microphone_speaks_the_transcript_back(deploy):
    client, events = await _client(deploy(chat=False))
    try:
        spoken = client.microphone.say_wav(LIGHTS)
        _, final = await events.wait_for(lambda e: e.get("event") == "asr_final", timeout=20)
        assert final["text"] == WAVS[LIGHTS.name]
        assert events.matching(lambda e: e.get("event") == "asr_partial"), "partials while the user spoke"
        _, start = await events.wait_for(lambda e: e.get("status") == "start", timeout=10)
        assert start["text"] == WAVS[LIGHTS.name]
        await asyncio.sleep(0.3)
        assert analysis.first_speech_after(client.rec, spoken.speech_end) is not None, "the answer is heard"
        res = await client.post("/human", text="hello", type="chat")
        assert res.status_code == 501 and res.json()["code"] == -1, res.text  # no LLM: chat stays 501
    finally:
        await _close(client, events)


async def test_chat_from_the_microphone_answers_sentence_by_sentence(deploy, llm_server):
    url = deploy(chat=True)
    llm_server.script = Script(reply=ANSWER, ttft_s=0.1, tokens_per_s=8)  # ~2.5 s of tokens
    client, events = await _client(url)
    try:
        spoken = client.microphone.say_wav(LIGHTS)
        t_start, start = await events.wait_for(lambda e: e.get("status") == "start", timeout=20)
        exchange = llm_server.requests[0]
        assert exchange.messages[-1] == {"role": "user", "content": WAVS[LIGHTS.name]}  # word for word
        assert start["text"] == "Sure, the kitchen lights are on now."
        assert not exchange.finished, "the first sentence plays while the LLM still writes"
        assert events.matching(lambda e: e.get("event") == "llm_delta")
        await asyncio.sleep(0.2)
        assert analysis.first_speech_after(client.rec, spoken.speech_end) is not None
        await events.wait_for(lambda e: e.get("status") == "end" and e["text"].startswith("Is there"), timeout=20)
    finally:
        await _close(client, events)


async def test_typed_chat_answers_and_an_llm_error_leaves_the_session_going(deploy, llm_server):
    client, events = await _client(deploy(chat=True))
    try:
        llm_server.script = Script(status=500)
        assert (await client.post("/human", text="Hello?", type="chat")).status_code == 200
        _, error = await events.wait_for(lambda e: e.get("event") == "error", timeout=10)
        assert error["stage"] == "llm" and "HTTP 500" in error["message"]
        llm_server.script = Script(reply="Hello there. Nice to meet you.", ttft_s=0.1)
        assert (await client.post("/human", text="Hi there", type="chat")).status_code == 200
        _, start = await events.wait_for(lambda e: e.get("status") == "start", timeout=10)
        assert start["text"] == "Hello there." and llm_server.requests[-1].messages[-1]["content"] == "Hi there"  # a failed request leaves no trace
        stats = await client.session_stats()
        assert stats["conversation"]["llm_errors"] == 1 and stats["conversation"]["mode"] == "chat"
    finally:
        await _close(client, events)


async def test_barge_in_silences_the_avatar_and_cuts_the_llm_stream(deploy, llm_server):
    url = deploy(chat=True)
    llm_server.script = Script(reply=LONG_ANSWER, ttft_s=0.1, tokens_per_s=4)  # still writing for ~15 s
    client, events = await _client(url)
    try:
        client.microphone.say_wav(LIGHTS)
        await events.wait_for(lambda e: e.get("status") == "start", timeout=20)
        await asyncio.sleep(0.5)
        assert analysis.first_speech_after(client.rec, time.monotonic() - 0.4) is not None, "the avatar speaks"
        exchange = llm_server.requests[0]
        barge = client.microphone.say_wav(WEATHER, leading_silence_s=0.0)
        _, interrupted = await events.wait_for(lambda e: e.get("event") == "interrupted", timeout=10)
        assert interrupted["reason"] == "barge_in"
        assert await exchange.ended_within(2.0) and exchange.cut and not exchange.finished
        await asyncio.sleep(0.5)
        assert barge.speech_start is not None
        last = analysis.last_speech_after(client.rec, barge.speech_start)
        assert last is not None and last - barge.speech_start <= 1.0, "the avatar went silent"
        # The new question is answered, with only the heard part of the cut reply in the history.
        llm_server.script = Script(reply="It will be sunny.", ttft_s=0.1)
        _, final = await events.wait_for(lambda e: e.get("event") == "asr_final" and e["seq"] > interrupted["seq"],
                                         timeout=20)
        assert final["text"] == WAVS[WEATHER.name]
        await events.wait_for(lambda e: e.get("status") == "start" and e["text"] == "It will be sunny.", timeout=20)
        history = llm_server.requests[-1].messages
        assert history[-1]["content"] == WAVS[WEATHER.name]
        assert history[-2]["role"] == "assistant" and LONG_ANSWER.startswith(history[-2]["content"])
        assert len(history[-2]["content"]) < len(LONG_ANSWER)
    finally:
        await _close(client, events)
