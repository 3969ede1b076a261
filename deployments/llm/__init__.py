"""Chat with an LLM: settings, a per-session streamed chat with bounded history, sentence splitting.

SessionHost's use, in short:

    settings = settings_from(cfg.llm, os.environ)  # serve_app.py; chat is off unless settings.enabled
    chat = LlmChat(settings, session_id=sid)
    async for sentence in split_stream(chat.reply(transcript)):  # cancel on interrupt
        ...  # to TTS
    chat.spoken(heard_text)  # after an interrupt: the reply's words the user heard
"""

from __future__ import annotations

from deployments.llm.client import LlmChat, LlmError, make_client
from deployments.llm.history import History, Turn
from deployments.llm.sentences import SentenceSplitter, split_stream
from deployments.llm.settings import LlmSettings, settings_from

__all__ = [
    "History",
    "LlmChat",
    "LlmError",
    "LlmSettings",
    "SentenceSplitter",
    "Turn",
    "make_client",
    "settings_from",
    "split_stream",
]
