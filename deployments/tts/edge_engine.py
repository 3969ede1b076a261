"""Cloud TTS through edge-tts (Microsoft Edge's read-aloud service), decoded as it streams.

The service sends 24 kHz mp3 in small binary messages; `StreamDecoder` turns them into 16 kHz
float32 as they arrive, and a piece is yielded once it holds `MIN_PIECE_S` of audio. Without
network access the service fails at once (`aiohttp.ClientConnectorError`); a connect timeout
bounds the other ways of not getting through, so `stream()` never hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import edge_tts
import numpy as np
from edge_tts.exceptions import EdgeTTSException, NoAudioReceived

from deployments.common.audio import StreamDecoder
from deployments.common.errors import EngineError
from deployments.common.timing import SAMPLE_RATE
from deployments.tts.engine import TTSEngine

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en-US-AriaNeural"
CONNECT_TIMEOUT_S = 5  # TCP/TLS connect; edge-tts wants an int
FIRST_MESSAGE_TIMEOUT_S = 8.0  # whole handshake until the first message (DNS, TLS, websocket)
RECEIVE_TIMEOUT_S = 20  # silence between two messages once streaming; edge-tts wants an int
MIN_PIECE_S = 0.2  # yield once this much audio is decoded: ~10 mp3 frames, few handle calls
_UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)

__all__ = ["DEFAULT_VOICE", "EdgeTTSEngine"]


class EdgeTTSEngine(TTSEngine):
    """edge-tts voice; needs network access to Microsoft's service (no key)."""

    def __init__(self, voice: str = DEFAULT_VOICE, rate: str = "+0%") -> None:
        """Validate the settings (no network traffic here).

        Args:
            voice: An edge-tts voice name, e.g. "en-US-AriaNeural" or "zh-CN-XiaoxiaoNeural".
            rate: Speaking rate relative to normal, e.g. "+0%", "-10%", "+25%".

        Raises:
            ValueError: `voice` or `rate` is malformed.
        """
        self._communicate("check", voice, rate)  # edge-tts validates in its constructor
        self.voice = voice
        self.rate = rate

    async def stream(self, text: str) -> AsyncIterator[np.ndarray]:
        """Yield 16 kHz float32 audio pieces of about `MIN_PIECE_S` or more as they decode.

        Raises:
            EngineError: The service is unreachable (retryable) or answered with an error.
        """
        if not text.strip():
            return
        messages = self._communicate(text, self.voice, self.rate).stream()
        decoder = StreamDecoder("mp3")
        pending: list[np.ndarray] = []
        pending_samples = 0
        first = True
        try:
            while (message := await self._next(messages, first)) is not None:
                first = False
                if message["type"] != "audio":
                    continue  # word/sentence boundary metadata
                pcm = decoder.feed(message["data"])
                pending.append(pcm)
                pending_samples += pcm.size
                if pending_samples >= MIN_PIECE_S * SAMPLE_RATE:
                    yield np.concatenate(pending)
                    pending, pending_samples = [], 0
            tail = np.concatenate([*pending, decoder.flush()])
            if tail.size:
                yield tail
        finally:
            await messages.aclose()

    @staticmethod
    async def _next(messages: AsyncIterator[dict[str, Any]], first: bool) -> dict[str, Any] | None:
        """The next service message (None at the end), with errors mapped to `EngineError`."""
        try:
            # edge-tts bounds connect and each read but not DNS or the websocket handshake
            async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT_S if first else None):
                return await anext(messages)
        except StopAsyncIteration:
            return None
        except _UNREACHABLE as e:
            detail = str(e) or f"no answer within {FIRST_MESSAGE_TIMEOUT_S:g} s"
            raise EngineError(
                f"edge-tts could not reach its service ({type(e).__name__}: {detail}): "
                "check network access or choose tts engine 'piper'",
                retryable=True,
            ) from e
        except NoAudioReceived as e:
            raise EngineError(f"edge-tts returned no audio (check the voice name): {e}") from e
        except EdgeTTSException as e:
            raise EngineError(f"edge-tts failed: {type(e).__name__}: {e}", retryable=True) from e

    @staticmethod
    def _communicate(text: str, voice: str, rate: str) -> edge_tts.Communicate:
        try:
            return edge_tts.Communicate(
                text,
                voice,
                rate=rate,
                connect_timeout=CONNECT_TIMEOUT_S,
                receive_timeout=RECEIVE_TIMEOUT_S,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"bad edge-tts settings (voice={voice!r}, rate={rate!r}): {e}") from e
