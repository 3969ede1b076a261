"""The per-session conductor: turns queued speech into slot-addressed frames and audio.

It works in chunks of K frames. A chunk with speech sends its audio window to AvatarRenderer
(one round trip: the renderer computes the features its model reads) for K mouth crops, pastes
them onto the avatar's own frames and queues frames and audio together; a silent chunk uses
idle frames and touches no model. Production runs a bounded lead ahead of playback; new speech
replaces queued idle slots so it plays at once; an interrupt drops everything not yet played.

Sentence events (events.py) follow playback: the conductor puts cues on the slots of an
utterance's first audible and last sample, and the audio track runs them as it plays those slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from deployments.avatar.assets import mirror_index
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.audio import to_int16
from deployments.common.errors import TooManyRequests
from deployments.common.features import LEFT_CONTEXT_SAMPLES, RIGHT_CONTEXT_SAMPLES
from deployments.common.logs import SessionLog
from deployments.common.timing import AUDIO_CHUNK_SAMPLES, CHUNKS_PER_FRAME, SAMPLE_RATE, SAMPLES_PER_FRAME
from deployments.rtc.events import Publish
from deployments.rtc.timeline import FRAME_S, Cue, MediaClock, MediaItem, MediaTimeline
from deployments.rtc.utterance import Utterance

log = logging.getLogger(__name__)

RenderFn = Callable[[RenderRequest], Awaitable[RenderResult]]
SpeechFn = Callable[[str], AsyncIterator[np.ndarray]]
PasteFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
ObserveFn = Callable[[str, float], None]  # (stage, seconds): per-stage latency for metrics
T = TypeVar("T")
SPEECH_RMS_FLOOR = 1e-4  # below this a chunk is silence: no features, no render
# An utterance "starts" (event) at the slot of its first 20 ms packet this loud (RMS, -40 dBFS):
# TTS's leading silence is not speech.
AUDIBLE_RMS = 0.01
# Deadlines are media-clock times (tests move that clock by hand): a waiting call re-reads the
# clock at least this often, so a deadline fires at most this late.
DEADLINE_POLL_S = 0.05
TTS_AHEAD = 2  # utterances synthesised at once: the one playing and the next (no gap between them)


@dataclass(frozen=True)
class ConductorConfig:
    """Chunking and lead; see ARCHITECTURE.md §4."""

    chunk_frames: int = 4  # K: frames per render request (2–8)
    lead_chunks: int = 2  # how far production may run ahead of playback
    start_margin_frames: int = 1  # new speech is placed this many slots after the one playing
    # Audio the features need around a chunk (common.features: LiveTalking's 10 chunks each side).
    left_context_samples: int = LEFT_CONTEXT_SAMPLES
    right_context_samples: int = RIGHT_CONTEXT_SAMPLES
    # Deadlines (docs/decisions.md): a render must answer by its chunk's first slot plus this;
    # else it is cancelled and the chunk's audio plays over idle frames.
    render_late_s: float = 1.0
    # After a failed or late render the next chunks skip the renderer for this long: while it is
    # dead or restarting, speech plays on over idle frames instead of waiting out every deadline.
    render_retry_s: float = 1.0
    tts_first_audio_s: float = 5.0  # from asking TTS to the utterance's first audio
    tts_stall_s: float = 5.0  # a later piece: from the moment playback ran out of this utterance's audio
    tts_lead_s: float = 4.0  # unplayed speech buffered per utterance before TTS is asked for more
    # Per-session queue caps: past them say()/play() raise TooManyRequests (429).
    max_queued_utterances: int = 8
    max_queued_chars: int = 4000
    max_queued_audio_s: float = 240.0


class Conductor:
    """One session's media producer. `run()` until `aclose()`."""

    def __init__(
        self,
        *,
        session_id: str = "-",
        avatar_id: str,
        full_frames: np.ndarray,
        paste: PasteFn,
        clock: MediaClock,
        timeline: MediaTimeline,
        render: RenderFn,
        speech: SpeechFn,
        config: ConductorConfig = ConductorConfig(),
        observe: ObserveFn | None = None,
        publish: Publish | None = None,
    ) -> None:
        self._avatar_id = avatar_id
        self._log = SessionLog(log, session_id)
        self._frames = full_frames
        self._paste = paste
        self._clock, self._timeline = clock, timeline
        self._render, self._speech = render, speech
        self.config = config
        self._observe = observe or (lambda stage, seconds: None)
        self._publish = publish or (lambda event: None)
        self._airing: list[Utterance] = []  # utterances whose start event is out and end event is not
        self._speech_end = -1  # the last slot holding queued speech (new speech goes after it)
        self.turn = 0
        self._queue: deque[Utterance] = deque()
        self._tts_tasks: dict[Utterance, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._turn_over = asyncio.Event()  # set by interrupt(): in-flight calls of the old turn are abandoned
        self._cursor = 0  # next slot to produce
        self._avatar_counter = 0  # next ping-pong position
        self._history = np.zeros(config.left_context_samples, np.float32)  # audio before the cursor
        self._closed = False
        self.rendered_chunks = 0
        self.unrendered_chunks = 0  # speech chunks that skipped the renderer after a failure
        self._render_retry_at = float("-inf")  # media time before which chunks skip the renderer
        self.idle_chunks = 0
        self.errors: deque[str] = deque(maxlen=20)  # recent stage failures, for session stats
        self.stage_errors: Counter[str] = Counter()  # all of them by stage ("tts", "render"), for metrics

    # ---- control -------------------------------------------------------------------------
    def say(self, text: str, *, held: bool = False) -> Utterance:
        """Queue `text` as a new utterance in the current turn; TTS streams into it when its turn comes.

        Args:
            text: What to say.
            held: Synthesise it (when its turn comes) but play nothing of it, nor of what is
                queued after it, until `release`; `withdraw` drops it unheard. For an answer
                prepared while the user's pause may still turn out to be mid-sentence.

        Raises:
            TooManyRequests: the session's speech queue is full.
        """
        self._admit(chars=len(text), seconds=0.0)
        utt = Utterance(self.turn, text)
        utt.held = held
        self._queue.append(utt)
        self._feed_tts()
        return utt

    def release(self, utts: list[Utterance]) -> None:
        """Let held utterances play (from the next slot, as new speech does)."""
        for utt in utts:
            utt.held = False
        self._wake.set()

    def withdraw(self, utts: list[Utterance]) -> None:
        """Drop queued utterances that have not started playing: no events, their TTS stopped."""
        for utt in utts:
            if utt.started or utt not in self._queue:
                continue
            self._queue.remove(utt)
            task = self._tts_tasks.pop(utt, None)
            if task is not None:
                task.cancel()
        self._feed_tts()

    def play(self, pcm: np.ndarray) -> Utterance:
        """Queue ready 16 kHz speech (an upload) as a new utterance.

        Raises:
            TooManyRequests: the session's speech queue is full.
        """
        self._admit(chars=0, seconds=pcm.size / SAMPLE_RATE)
        utt = Utterance(self.turn)
        utt.append(pcm)
        utt.finish()
        self._queue.append(utt)
        self._wake.set()
        return utt

    def interrupt(self, reason: str = "api") -> None:
        """Start a new turn: stop TTS and an in-flight render, drop queued speech and every slot not yet played.

        Publishes `{"event": "interrupted", "reason": reason}`, then an `end` marked `interrupted`
        for each utterance that had started playing. `reason`: "api", "barge_in", ...
        """
        self._new_turn()
        self._publish({"event": "interrupted", "reason": reason, "turn": self.turn})
        for utt in list(self._airing):
            self._ended(utt, interrupted=True)

    def _new_turn(self) -> None:
        self.turn += 1
        self._turn_over.set()
        self._turn_over = asyncio.Event()
        for task in list(self._tts_tasks.values()):
            task.cancel()
        self._queue.clear()
        self._restart_from(self._clock.playing_slot() + 1)
        self._timeline.mute(self._clock.playing_slot())
        self._wake.set()

    @property
    def speaking(self) -> bool:
        return any(not u.held for u in self._queue) or self._timeline.has_speech_from(self._clock.playing_slot())

    @property
    def queued(self) -> dict:
        """What the session's speech queue holds (utterances, characters of text, seconds of uploads)."""
        waiting = [u for u in self._queue if not u.exhausted]
        return {
            "utterances": len(waiting),
            "chars": sum(len(u.text) for u in waiting),
            "audio_s": sum(u.remaining for u in waiting if not u.text) / SAMPLE_RATE,
        }

    async def aclose(self) -> None:
        self._closed = True
        self._new_turn()  # no events: the session and its event stream are closing
        if self._tts_tasks:
            await asyncio.wait(list(self._tts_tasks.values()), timeout=2.0)

    def _admit(self, *, chars: int, seconds: float) -> None:
        """Refuse speech past the queue caps: one client cannot queue unbounded work (an interrupt empties it)."""
        cfg, queued = self.config, self.queued
        if queued["utterances"] + 1 > cfg.max_queued_utterances:
            raise TooManyRequests(f"speech queue full: {queued['utterances']} utterances queued "
                                  f"(max {cfg.max_queued_utterances}); wait, or interrupt")
        if queued["chars"] + chars > cfg.max_queued_chars:
            raise TooManyRequests(f"speech queue full: {queued['chars']} characters of text queued "
                                  f"(max {cfg.max_queued_chars}); wait, or interrupt")
        if queued["audio_s"] + seconds > cfg.max_queued_audio_s:
            raise TooManyRequests(f"speech queue full: {queued['audio_s']:.0f} s of uploaded audio queued "
                                  f"(max {cfg.max_queued_audio_s:g} s); wait, or interrupt")

    # ---- text to speech ------------------------------------------------------------------
    def _feed_tts(self) -> None:
        """Synthesise only the utterance playing and the next one: queued text costs no TTS yet."""
        for utt in list(self._queue)[:TTS_AHEAD]:
            if utt.text and not utt.ended and utt not in self._tts_tasks:
                task = asyncio.create_task(self._synthesize(utt), name=f"tts-{utt.turn}")
                self._tts_tasks[utt] = task
                task.add_done_callback(lambda _, u=utt: self._tts_tasks.pop(u, None))

    async def _synthesize(self, utt: Utterance) -> None:
        """Pull `utt`'s speech piece by piece, at most `tts_lead_s` ahead of playback, each piece by its deadline."""
        error = None
        asked, t0 = self._clock.now(), time.perf_counter()
        pieces = aiter(self._speech(utt.text))
        try:
            while utt.turn == self.turn:
                await self._until_lead_below(utt)
                first = utt.received == 0
                pcm = await self._call(_next_or_none(pieces), functools.partial(self._piece_due, utt, asked, first))
                if pcm is None or utt.turn != self.turn:
                    break  # the text is spoken, or the turn is over
                if first:
                    self._observe("tts_first_audio", time.perf_counter() - t0)
                utt.append(pcm)
                self._wake.set()
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        except TimeoutError as exc:  # the utterance ends; the session goes on
            error = self._stage_failed("tts", exc, utt.turn, what="timed out")
        except Exception as exc:  # surfaced to the session, never through the media loop
            error = self._stage_failed("tts", exc, utt.turn)
        finally:
            utt.finish(error)
            self._wake.set()
            with contextlib.suppress(Exception):  # a generator cancelled mid-piece is closed already
                await pieces.aclose()

    async def _until_lead_below(self, utt: Utterance) -> None:
        """Back-pressure on TTS: wait while `utt` holds `tts_lead_s` or more of speech not yet scheduled;
        the next utterance, until it plays, only needs its first piece (so it starts without a gap).
        """
        while utt.remaining / SAMPLE_RATE >= (self.config.tts_lead_s if self._is_playing(utt) else 1e-9):
            await asyncio.sleep(self.config.chunk_frames * FRAME_S)  # playback takes a chunk at a time

    def _is_playing(self, utt: Utterance) -> bool:
        return bool(self._queue) and self._queue[0] is utt

    def _piece_due(self, utt: Utterance, asked: float, first: bool) -> float:
        """Media time by which TTS must deliver `utt`'s next piece.

        The first piece: `tts_first_audio_s` after asking. A later one: `tts_stall_s` after playback
        has run out of this utterance's audio (no deadline while it is buffered or not yet playing).
        """
        if first:
            return asked + self.config.tts_first_audio_s
        dry = self._runs_dry_at(utt)
        return (self._clock.now() if dry is None else dry) + self.config.tts_stall_s

    def _runs_dry_at(self, utt: Utterance) -> float | None:
        """Media time at which playback runs out of `utt`'s audio; None while `utt` is not the one playing."""
        if not self._is_playing(utt) or utt.last_slot is None or self._clock.t0 is None:
            return None
        played_out = self._play_time(utt.last_slot + 1)
        if utt.remaining > 0:
            played_out = max(played_out, self._clock.now())
        return played_out + utt.remaining / SAMPLE_RATE

    # ---- production ----------------------------------------------------------------------
    def _restart_from(self, slot: int) -> None:
        """Drop queued slots from `slot` on and continue the idle motion from the last kept one."""
        slot = max(slot, 0)
        kept = self._timeline.get(slot - 1)
        self._timeline.drop_from(slot)
        self._cursor = min(self._cursor, slot)
        self._speech_end = min(self._speech_end, slot - 1)
        if kept is not None:
            self._avatar_counter = kept.avatar_index + 1
        self._history = np.zeros(self.config.left_context_samples, np.float32)

    async def run(self) -> None:
        k = self.config.chunk_frames
        while not self._closed:
            playing = self._clock.playing_slot()
            utt = self._current_utterance()
            if utt is not None and not utt.started and utt.remaining > 0:
                # Speech replaces queued idle (not the previous utterance's tail): it should play now,
                # not after the lead.
                self._restart_from(max(playing + self.config.start_margin_frames, self._speech_end, 0) + 1)
            limit = max(playing, 0) + self.config.lead_chunks * k
            if self._cursor >= limit:
                await self._wait(FRAME_S * (self._cursor - limit + 1))
                continue
            self._cursor = max(self._cursor, playing + 1)
            if utt is not None and utt.remaining > 0:
                await self._speech_chunk(utt, k)
            else:
                self._idle_chunk(k)

    def _current_utterance(self) -> Utterance | None:
        # Finished utterances leave the queue: fully scheduled, or ended without audio (failed TTS).
        while self._queue and self._queue[0].exhausted:
            self._cue_end(self._queue.popleft())  # TTS may end after its last chunk was scheduled
            self._feed_tts()
        return self._queue[0] if self._queue and not self._queue[0].held else None  # held: idle meanwhile

    async def _wait(self, timeout: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.005))
        except TimeoutError:
            pass

    def _next_avatar_indices(self, k: int) -> list[int]:
        n = len(self._frames)
        idx = [mirror_index(n, self._avatar_counter + i) for i in range(k)]
        self._avatar_counter += k
        return idx

    def _idle_chunk(self, k: int) -> None:
        silence = np.zeros(SAMPLES_PER_FRAME, np.int16)
        for i, idx in enumerate(self._next_avatar_indices(k)):
            self._timeline.put(self._cursor + i, MediaItem(self._frames[idx], silence, idx, self.turn, False))
        self._push_history(np.zeros(k * SAMPLES_PER_FRAME, np.float32))
        self._cursor += k
        self.idle_chunks += 1

    async def _speech_chunk(self, utt: Utterance, k: int) -> None:
        need = k * SAMPLES_PER_FRAME
        right = self.config.right_context_samples
        if not utt.ended and utt.remaining < need + right:
            # Give TTS until shortly before this chunk must play, then go with what there is.
            slack = (self._cursor - self._clock.playing_slot() - 1) * FRAME_S - 0.05
            if slack > 0:
                await self._wait(slack)
                return  # re-evaluate: an interrupt may have happened while waiting
        utt.started = True
        turn = self.turn
        real = min(utt.remaining, need)  # samples of speech in this chunk; the rest is padding
        pcm = utt.take(need)
        window = np.concatenate([self._history, pcm, utt.peek(right)])
        indices = self._next_avatar_indices(k)
        start = self._cursor
        self._cursor += k
        self._push_history(pcm)
        if float(np.sqrt(np.mean(pcm**2))) < SPEECH_RMS_FLOOR:
            crops = None
        elif self._clock.now() < self._render_retry_at:
            crops = None
            self.unrendered_chunks += 1
        else:
            t0 = time.perf_counter()
            due = self._play_time(start) + self.config.render_late_s
            try:
                request = RenderRequest(self._avatar_id, tuple(indices), window)
                result = await self._call(self._render(request), lambda: due)
                crops = None if result is None else result.crops
            except Exception as exc:  # the chunk's audio still plays, over the avatar's own frames
                crops = None
                self._stage_failed("render", exc, turn)
                self._render_retry_at = self._clock.now() + self.config.render_retry_s
            self._observe("render", time.perf_counter() - t0)
        if turn != self.turn:
            return  # interrupted while rendering: the result belongs to a dead turn
        audio = to_int16(pcm).reshape(k, SAMPLES_PER_FRAME)
        # If rendering took longer than the margin, shift the chunk rather than lose its start.
        start = max(start, self._clock.playing_slot() + 1)
        t0 = time.perf_counter()
        for i, idx in enumerate(indices):
            frame = self._frames[idx] if crops is None else self._paste(self._frames[idx], crops[i], idx)
            self._timeline.put(start + i, MediaItem(frame, audio[i], idx, turn, True))
        self._observe("paste", time.perf_counter() - t0)
        self._cursor = max(self._cursor, start + k)
        self._speech_end = max(self._speech_end, start + k - 1)
        utt.last_slot = start + k - 1
        self.rendered_chunks += 1
        self._cue_chunk(utt, start, pcm, real)

    async def _call(self, call: Awaitable[T], due: Callable[[], float]) -> T | None:
        """`await call` within its deadline: None as soon as the turn is interrupted, TimeoutError
        once the media clock passes `due()` (re-read as it may move); either way the call is cancelled.
        """
        task = asyncio.ensure_future(call)
        turn_over = asyncio.ensure_future(self._turn_over.wait())
        try:
            while not task.done() and not turn_over.done():
                left = due() - self._clock.now()
                if left <= 0:
                    break
                await asyncio.wait({task, turn_over}, timeout=min(left, DEADLINE_POLL_S),
                                   return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the conductor is closing: no call outlives it
            task.cancel()
            turn_over.cancel()
            await asyncio.gather(task, turn_over, return_exceptions=True)
            raise
        turn_over.cancel()
        if task.done():
            return task.result()
        task.cancel()  # interrupted or late: its answer would come too late to be used
        await asyncio.gather(task, return_exceptions=True)
        if turn_over.done() and not turn_over.cancelled():
            return None  # an interrupt abandons the call: not a failure
        raise TimeoutError(f"missed its deadline ({self._clock.now() - due():.2f} s late)")

    def _play_time(self, slot: int) -> float:
        """Media time at which `slot` plays; before the tracks start, as if they started now."""
        if self._clock.t0 is None:
            return self._clock.now() + max(slot, 0) * FRAME_S
        return self._clock.t0 + slot * FRAME_S

    def _stage_failed(self, stage: str, exc: BaseException, turn: int, what: str = "failed") -> str:
        """Count, log, keep and publish a stage's failure for the session's stats; returns the message."""
        error = f"{stage} {what}: {exc}"
        self.errors.append(error)
        self.stage_errors[stage] += 1
        self._log.warning("%s %s for turn %d: %s", stage, what, turn, exc)
        self._publish({"event": "error", "stage": stage, "message": error})
        return error

    # ---- sentence events, from playback ----------------------------------------------------
    def _cue_chunk(self, utt: Utterance, start: int, pcm: np.ndarray, real: int) -> None:
        """Cue `utt`'s start on its first audible slot and its end on the slot of its last sample."""
        if real > 0:
            utt.last_audio_slot = start + (real - 1) // SAMPLES_PER_FRAME
        if not utt.start_cued:
            rms = np.sqrt(np.mean(pcm.reshape(-1, AUDIO_CHUNK_SAMPLES) ** 2, axis=1))  # pcm is padded past `real`
            loud = np.flatnonzero(rms >= AUDIBLE_RMS)
            if loud.size:
                utt.start_cued = True
                self._cue(start + int(loud[0]) // CHUNKS_PER_FRAME, functools.partial(self._started, utt))
        if utt.exhausted:
            self._cue_end(utt)

    def _cue_end(self, utt: Utterance) -> None:
        if utt.start_cued and not utt.end_cued and utt.last_audio_slot is not None:
            utt.end_cued = True
            self._cue(utt.last_audio_slot, functools.partial(self._ended, utt), at_end=True)

    def _cue(self, slot: int, run: Callable[[], None], at_end: bool = False) -> None:
        if not self._timeline.add_cue(slot, Cue(run, at_end)):
            run()  # its moment has passed already (or its slot was dropped: then `run` has nothing to say)

    def _started(self, utt: Utterance) -> None:
        if utt.turn != self.turn or utt.start_played:
            return  # the last slot of an interrupted turn still plays: its sentence does not start
        utt.start_played = True
        self._airing.append(utt)
        self._publish({"status": "start", "text": utt.text, "turn": utt.turn})

    def _ended(self, utt: Utterance, interrupted: bool = False) -> None:
        if not utt.start_played or utt.end_played:
            return  # never started, or already ended (an interrupt ends it before its cue runs)
        utt.end_played = True
        self._airing.remove(utt)
        event = {"status": "end", "text": utt.text, "turn": utt.turn}
        if interrupted:
            event["interrupted"] = True
        self._publish(event)

    def _push_history(self, pcm: np.ndarray) -> None:
        joined = np.concatenate([self._history, pcm])
        self._history = joined[joined.size - self.config.left_context_samples :]


async def _next_or_none(pieces: AsyncIterator[T]) -> T | None:
    """The iterator's next item, or None at its end (StopAsyncIteration cannot cross a task)."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None
