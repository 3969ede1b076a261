"""One session's conversation: the user's microphone in, the avatar's answer out, barge-in.

    microphone (48 kHz WebRTC) ─► 16 kHz ─► VadSegmenter ─► SpeechOnset ─► barge-in (interrupt)
                                                        └─► turn audio ─► SpeechRecognizer
                                                              partials ─► asr_partial
                                                              final    ─► asr_final ─► reply
    reply: echo ─► conductor.say(transcript)
           chat ─► LlmChat.reply ─► llm_delta events, split_stream ─► conductor.say(sentence)

A reply (transcription included) runs as one task, so the microphone keeps being read while the
avatar answers: the user's next onset cancels it (the LLM's HTTP stream closes with it) and
interrupts the conductor. The chat's history then keeps only the sentences the user heard (those
whose `start` cue played). `/human` with type "chat" enters at `ask`, past the recogniser.

A reply is prepared before the turn is over: `early_final_s` into a pause, the would-be turn is
transcribed and answered (LLM and TTS run) while nothing of it is heard or published (`_Held`).
If the pause reaches `end_silence_ms` the turn ends and the prepared answer plays at once; if the
user speaks on, it is withdrawn unheard (speech, events, and its exchange in the chat history).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pydantic import BaseModel, ConfigDict, Field

from deployments.asr.vad import SpeechOnset, TurnEnd, VadSegmenter, VadSettings
from deployments.common.audio import StreamResampler
from deployments.common.errors import AvatarError, NotConfigured
from deployments.common.logs import SessionLog
from deployments.llm import LlmChat, LlmError, split_stream
from deployments.rtc.conductor import Conductor
from deployments.rtc.events import Publish
from deployments.rtc.utterance import Utterance

log = logging.getLogger(__name__)

# (pcm, final, session_id) -> {"text", "seconds", "audio_s", "final", "superseded"}
TranscribeFn = Callable[[np.ndarray, bool, str], Awaitable[dict[str, Any]]]

__all__ = ["NO_CHAT", "Conversation", "ConversationSettings", "TranscribeFn", "frame_pcm"]
NO_CHAT = "chat is not configured: no LLM is set up on this server (use type 'echo')"


class ConversationSettings(BaseModel):
    """How a session converses.

    Attributes:
        mode: "echo" speaks the transcript back; "chat" answers it with the LLM.
        barge_in: The user's speech (held `vad.min_speech_ms`) stops the avatar and its reply.
        partial_interval_s: Least time between two partial transcripts of a turn.
        vad: The segmenter's thresholds (`end_silence_ms` ends a turn).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["echo", "chat"] = "echo"
    barge_in: bool = True
    partial_interval_s: float = Field(0.5, ge=0.1, le=10.0)
    # The final transcript starts this far into a pause, before the pause is long enough to end the
    # turn (`vad.end_silence_ms`), and the reply is prepared from it, unheard: if the pause does end
    # the turn, the answer is (nearly) ready. A pause that turns out to be mid-sentence costs one
    # wasted decode and LLM request. None = only at the turn's end.
    early_final_s: float | None = Field(0.1, ge=0.0, le=5.0)
    prepare_reply: bool = True  # False: the early transcript waits for the turn's end to be answered
    vad: VadSettings = Field(default_factory=VadSettings)


@dataclass(eq=False)
class _Held:
    """A reply being prepared for a pause that may not end the turn: unheard and unpublished."""

    end_s: float  # the speech end (segmenter time) it answers
    utts: list[Utterance] = field(default_factory=list)  # its speech, held in the conductor
    events: list[dict[str, Any]] = field(default_factory=list)  # its events, published at the turn's end
    asked: str | None = None  # the text it asked the LLM (its exchange is in the chat history)


def _turn_end_marks(turn: TurnEnd) -> dict[str, float]:
    """The latency marks a turn's end sets: when, and how long after the speech ended."""
    return {"turn_end_t": time.time(), "speech_end_lag_s": round(turn.at_s - turn.end_s, 3)}


def frame_pcm(frame: Any) -> tuple[np.ndarray, int]:
    """An aiortc/PyAV audio frame as mono samples (any dtype) and its rate: channels averaged."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if channels > 1:
        data = data.reshape(channels, -1) if frame.format.is_planar else data.reshape(-1, channels).T
        data = data.astype(np.float32).mean(axis=0) / (32768.0 if frame.format.name.startswith("s16") else 1.0)
    return data.reshape(-1), frame.sample_rate


class Conversation:
    """The conversation of one session: listens, recognises, answers, yields to the user.

    Args:
        session_id: The session (log lines, the recogniser's grouping of partials).
        conductor: Speaks the answers; interrupted on barge-in.
        publish: The session's event bus (`asr_partial`, `asr_final`, `llm_delta`, `error`).
        transcribe: The SpeechRecognizer call; None when the microphone is not supported.
        chat: The session's LLM chat; None in echo mode.
        settings: Mode, barge-in, VAD.
    """

    def __init__(self, *, session_id: str, conductor: Conductor, publish: Publish,
                 transcribe: TranscribeFn | None, chat: LlmChat | None,
                 settings: ConversationSettings | None = None) -> None:
        settings = settings or ConversationSettings()
        if settings.mode == "chat" and chat is None:
            raise ValueError("chat mode needs an LlmChat")
        self.id = session_id
        self.settings = settings
        self._log = SessionLog(log, session_id)
        self._conductor, self._publish = conductor, publish
        self._transcribe, self._chat = transcribe, chat
        self._listen_task: asyncio.Task | None = None
        self._partial_task: asyncio.Task | None = None
        self._reply_task: asyncio.Task | None = None
        # (speech end it is for, final transcript, wall-clock start)
        self._early: tuple[float, asyncio.Task, float] | None = None
        self._held: _Held | None = None  # the running reply is prepared for a turn not yet over
        self._reply_utts: list[Utterance] | None = None  # the latest LLM reply's sentences, until settled
        self._closed = False
        self.counts: dict[str, int] = {"turns": 0, "partials": 0, "replies": 0, "barge_ins": 0,
                                       "prepared": 0, "withdrawn": 0, "llm_errors": 0, "asr_errors": 0}
        self.errors: list[str] = []  # recent failures, for the session stats
        self.last_turn: dict[str, float] = {}  # wall-clock marks of the latest turn (latency stages)

    # ---- inputs --------------------------------------------------------------------------
    def listen(self, track: MediaStreamTrack) -> None:
        """Read the user's microphone track until it ends (one track per session)."""
        if self._transcribe is None or self._listen_task is not None or self._closed:
            return
        self._listen_task = asyncio.create_task(self._listen(track), name=f"microphone-{self.id}")

    def ask(self, text: str) -> None:
        """Answer typed `text` as a chat turn (`/human` type "chat").

        Raises:
            NotConfigured: No LLM is configured.
        """
        if not self.can_chat:
            raise NotConfigured(NO_CHAT)
        self.last_turn = {"ask_t": time.time()}
        self._start_reply(self._answer(text), text=text)

    @property
    def can_chat(self) -> bool:
        """An LLM is configured: typed "chat" turns can be answered."""
        return self._chat is not None

    def interrupt(self, reason: str = "api") -> None:
        """Stop the avatar's speech and the running reply (its LLM stream is closed)."""
        self._conductor.interrupt(reason=reason)
        self._cancel_reply(heard_only=True)

    @property
    def replying(self) -> bool:
        """A reply is being produced (transcription or LLM still running)."""
        return self._reply_task is not None and not self._reply_task.done()

    def stats(self) -> dict[str, Any]:
        return {"mode": self.settings.mode, "microphone": self._listen_task is not None, **self.counts,
                "replying": self.replying, "errors": self.errors[-5:], "last_turn": dict(self.last_turn)}

    async def aclose(self) -> None:
        """Stop listening and replying; nothing of the session keeps running."""
        self._closed = True
        early = self._early[1] if self._early is not None else None
        tasks = [t for t in (self._listen_task, self._partial_task, self._reply_task, early) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._chat is not None:
            await self._chat.aclose()

    # ---- microphone ----------------------------------------------------------------------
    async def _listen(self, track: MediaStreamTrack) -> None:
        segmenter = VadSegmenter(self.settings.vad)
        resampler = StreamResampler()
        last_partial = 0.0
        try:
            while True:
                frame = await track.recv()
                pcm, rate = frame_pcm(frame)
                for event in segmenter.feed(resampler.feed(pcm, rate)):
                    if isinstance(event, SpeechOnset):
                        self._on_onset()
                        last_partial = time.monotonic()
                    elif isinstance(event, TurnEnd):
                        self._on_turn_end(event)
                self._start_early_final(segmenter)
                now = time.monotonic()
                # No partial during a pause: the recogniser's worker is the final's.
                if segmenter.in_turn and not segmenter.trailing_silence_s \
                        and now - last_partial >= self.settings.partial_interval_s \
                        and (self._partial_task is None or self._partial_task.done()):
                    last_partial = now
                    audio = segmenter.turn_audio()
                    if audio is not None and audio.size:
                        self._partial_task = asyncio.create_task(
                            self._partial(audio, self.counts["turns"]), name=f"partial-{self.id}")
        except MediaStreamError:
            self._log.debug("microphone track ended")

    def _start_early_final(self, segmenter: VadSegmenter) -> None:
        """Transcribe a pause's would-be turn before the pause ends it; drop it if speech resumes."""
        early_s = self.settings.early_final_s
        pending = segmenter.audio_if_turn_ends() if early_s is not None else None
        if self._early is not None and (pending is None or pending[0] != self._early[0]):
            if segmenter.in_turn:  # speech resumed: that transcript is of a shorter turn
                self._early[1].cancel()
                self._early = None
                self._withdraw()
        if pending is None or self._early is not None or segmenter.trailing_silence_s < early_s:
            return
        end_s, pcm = pending
        assert self._transcribe is not None
        task = asyncio.ensure_future(self._transcribe(pcm, True, self.id))
        self._early = (end_s, task, time.time())
        if self.settings.prepare_reply and not self.replying and not self._conductor.speaking:
            self.counts["prepared"] += 1
            self.last_turn = {"transcribe_t": self._early[2], "prepared": True}
            self._start_reply(self._turn(task), text=None)
            self._held = _Held(end_s)  # after _start_reply, which withdraws any earlier one
            self._reply_task.add_done_callback(lambda _, task=task: task.cancel())

    def _withdraw(self) -> None:
        """The pause was mid-sentence: drop the reply prepared for it, unheard and unpublished."""
        held, self._held = self._held, None
        if held is None:
            return
        self.counts["withdrawn"] += 1
        if self._reply_task is not None:
            self._reply_task.cancel()
        self._reply_utts = None  # nothing of it was heard: the chat forgets the exchange instead
        self._conductor.withdraw(held.utts)
        if held.asked is not None and self._chat is not None:
            self._chat.withdraw(held.asked)

    def _on_onset(self) -> None:
        if self.settings.barge_in and (self._conductor.speaking or self.replying):
            self.counts["barge_ins"] += 1
            self.last_turn = {"barge_in_t": time.time()}
            self._log.info("barge-in: the user spoke over the avatar")
            self.interrupt(reason="barge_in")

    def _on_turn_end(self, turn: TurnEnd) -> None:
        # A partial still running finishes (a waiting one is superseded by the final at the
        # recogniser); its text is published only if it comes before the final's.
        self.counts["turns"] += 1  # partials of this turn still running are stale now
        early, self._early = self._early, None
        if self._held is not None and self._held.end_s == turn.end_s:
            self._play_prepared(turn)
            return
        if early is not None and early[0] != turn.end_s:  # not of this audio
            early[1].cancel()
            early = None
        self.last_turn = _turn_end_marks(turn)
        self.last_turn["transcribe_t"] = early[2] if early is not None else self.last_turn["turn_end_t"]
        self._start_reply(self._turn(early[1] if early is not None else self._transcribe(turn.pcm, True, self.id)),
                          text=None)
        if early is not None:  # a reply cancelled before it awaited the early transcript drops it too
            self._reply_task.add_done_callback(lambda _, task=early[1]: task.cancel())

    async def _partial(self, pcm: np.ndarray, turns_before: int) -> None:
        assert self._transcribe is not None
        try:
            result = await self._transcribe(pcm, False, self.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a partial is only a preview: the final reports failures
            self._log.debug("partial transcript failed: %s", exc)
            return
        if not result.get("superseded") and result.get("text") and self.counts["turns"] == turns_before:
            self.counts["partials"] += 1
            self._publish({"event": "asr_partial", "text": result["text"]})

    def _play_prepared(self, turn: TurnEnd) -> None:
        """The turn ended as the prepared reply assumed: let it be heard and published."""
        held, self._held = self._held, None
        assert held is not None
        self.last_turn.update(_turn_end_marks(turn))
        self._conductor.release(held.utts)
        for event in held.events:
            self._publish(event)

    def _emit(self, event: dict[str, Any]) -> None:
        """Publish a reply's event, or keep it with the reply while that is only prepared."""
        if self._held is not None:
            self._held.events.append(event)
        else:
            self._publish(event)

    # ---- replies -------------------------------------------------------------------------
    def _start_reply(self, reply: Awaitable[None], text: str | None) -> None:
        """Run `reply` as the session's one reply; a newer turn supersedes a running one."""
        self._cancel_reply(heard_only=False)
        previous = self._reply_task
        self._reply_task = asyncio.create_task(self._after(previous, reply), name=f"reply-{self.id}")

    async def _after(self, previous: asyncio.Task | None, reply: Awaitable[None]) -> None:
        if previous is not None:  # one LLM reply at a time: the cancelled one closes its stream first
            await asyncio.gather(previous, return_exceptions=True)
        await reply

    def _cancel_reply(self, *, heard_only: bool) -> None:
        """Cancel the running reply; tell the chat what of the latest reply will have been heard:
        the sentences that started playing (`heard_only`, after an interrupt) or all it queued.
        A reply still only prepared is withdrawn: nothing of it was heard.
        """
        self._withdraw()
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        if self._chat is not None and self._reply_utts is not None:
            utts = [u for u in self._reply_utts if u.start_played] if heard_only else self._reply_utts
            self._chat.spoken(" ".join(u.text for u in utts))
            self._reply_utts = None

    async def _turn(self, transcript: Awaitable[dict[str, Any]]) -> None:
        """Wait for the turn's final transcript, then echo or answer it."""
        try:
            result = await transcript
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("asr", exc)
            return
        text = " ".join(str(result.get("text", "")).split())
        self.last_turn["asr_final_t"] = time.time()
        if not text:
            return
        self._emit({"event": "asr_final", "text": text})
        if self.settings.mode == "chat":
            await self._answer(text)
        else:
            self._say(text)

    async def _answer(self, text: str) -> None:
        """Stream the LLM's answer to `text` into the conductor, sentence by sentence."""
        assert self._chat is not None
        self.counts["replies"] += 1
        utts: list[Utterance] = []
        self._reply_utts = utts
        marks = self.last_turn
        if self._held is not None:
            self._held.asked = text
        try:
            async for sentence in split_stream(self._deltas(self._chat.reply(text), marks)):
                marks.setdefault("first_sentence_t", time.time())
                utt = self._say(sentence)
                if utt is not None:
                    utts.append(utt)
        except LlmError as exc:
            self._failed("llm", exc)
        marks["llm_done_t"] = time.time()

    async def _deltas(self, deltas: AsyncIterator[str], marks: dict[str, float]) -> AsyncIterator[str]:
        try:
            async for delta in deltas:
                marks.setdefault("llm_first_delta_t", time.time())
                self._emit({"event": "llm_delta", "text": delta})
                yield delta
        finally:
            with contextlib.suppress(Exception):
                await deltas.aclose()  # type: ignore[attr-defined]

    def _say(self, text: str) -> Utterance | None:
        held = self._held
        try:
            utt = self._conductor.say(text, held=held is not None)
        except AvatarError as exc:  # the speech queue is full: this sentence is lost, the session goes on
            self._failed("tts", exc)
            return None
        if held is not None:
            held.utts.append(utt)
        return utt

    def _failed(self, stage: str, exc: Exception) -> None:
        message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
        self.counts[f"{stage}_errors"] = self.counts.get(f"{stage}_errors", 0) + 1
        self.errors = [*self.errors[-9:], f"{stage}: {message}"]
        self._log.warning("%s failed: %s", stage, message)
        self._emit({"event": "error", "stage": stage, "message": message})
