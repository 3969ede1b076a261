"""The per-session conductor: turns queued speech into slot-addressed frames and audio.

It works in chunks of K frames. A chunk with speech sends its audio window to AvatarRenderer
(one round trip: the renderer computes the features its model reads) for K mouth crops, pastes
them onto the avatar's own frames and queues frames and audio together; a silent chunk uses
idle frames and touches no model. Production runs a bounded lead ahead of playback; new speech
replaces queued idle slots so it plays at once; an interrupt drops everything not yet played.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from deployments.avatar.assets import mirror_index
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.audio import to_int16
from deployments.common.features import LEFT_CONTEXT_SAMPLES, RIGHT_CONTEXT_SAMPLES
from deployments.common.logs import SessionLog
from deployments.common.timing import SAMPLES_PER_FRAME
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaItem, MediaTimeline
from deployments.rtc.utterance import Utterance

log = logging.getLogger(__name__)

RenderFn = Callable[[RenderRequest], Awaitable[RenderResult]]
SpeechFn = Callable[[str], AsyncIterator[np.ndarray]]
PasteFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
ObserveFn = Callable[[str, float], None]  # (stage, seconds): per-stage latency for metrics
SPEECH_RMS_FLOOR = 1e-4  # below this a chunk is silence: no features, no render


@dataclass(frozen=True)
class ConductorConfig:
    """Chunking and lead; see ARCHITECTURE.md §4."""

    chunk_frames: int = 4  # K: frames per render request (2–8)
    lead_chunks: int = 2  # how far production may run ahead of playback
    start_margin_frames: int = 1  # new speech is placed this many slots after the one playing
    # Audio the features need around a chunk (common.features: LiveTalking's 10 chunks each side).
    left_context_samples: int = LEFT_CONTEXT_SAMPLES
    right_context_samples: int = RIGHT_CONTEXT_SAMPLES


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
    ) -> None:
        self._avatar_id = avatar_id
        self._log = SessionLog(log, session_id)
        self._frames = full_frames
        self._paste = paste
        self._clock, self._timeline = clock, timeline
        self._render, self._speech = render, speech
        self.config = config
        self._observe = observe or (lambda stage, seconds: None)
        self.turn = 0
        self._queue: deque[Utterance] = deque()
        self._tts_tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._turn_over = asyncio.Event()  # set by interrupt(): in-flight calls of the old turn are abandoned
        self._cursor = 0  # next slot to produce
        self._avatar_counter = 0  # next ping-pong position
        self._history = np.zeros(config.left_context_samples, np.float32)  # audio before the cursor
        self._closed = False
        self.rendered_chunks = 0
        self.idle_chunks = 0
        self.errors: deque[str] = deque(maxlen=20)  # recent stage failures, for session stats
        self.stage_errors: Counter[str] = Counter()  # all of them by stage ("tts", "render"), for metrics

    # ---- control -------------------------------------------------------------------------
    def say(self, text: str) -> Utterance:
        """Queue `text` as a new utterance in the current turn; TTS streams into it."""
        utt = Utterance(self.turn, text)
        self._queue.append(utt)
        task = asyncio.create_task(self._synthesize(utt))
        self._tts_tasks.add(task)
        task.add_done_callback(self._tts_tasks.discard)
        return utt

    def play(self, pcm: np.ndarray) -> Utterance:
        """Queue ready 16 kHz speech (an upload) as a new utterance."""
        utt = Utterance(self.turn)
        utt.append(pcm)
        utt.finish()
        self._queue.append(utt)
        self._wake.set()
        return utt

    def interrupt(self) -> None:
        """Start a new turn: stop TTS and an in-flight render, drop queued speech and every slot not yet played."""
        self.turn += 1
        self._turn_over.set()
        self._turn_over = asyncio.Event()
        for task in list(self._tts_tasks):
            task.cancel()
        self._queue.clear()
        self._restart_from(self._clock.playing_slot() + 1)
        self._wake.set()

    @property
    def speaking(self) -> bool:
        return bool(self._queue) or self._timeline.has_speech_from(self._clock.playing_slot())

    async def aclose(self) -> None:
        self._closed = True
        self.interrupt()
        if self._tts_tasks:
            await asyncio.wait(list(self._tts_tasks), timeout=2.0)

    # ---- production ----------------------------------------------------------------------
    async def _synthesize(self, utt: Utterance) -> None:
        error = None
        t0, first = time.perf_counter(), True
        try:
            async for pcm in self._speech(utt.text):
                if utt.turn != self.turn:
                    break
                if first:
                    self._observe("tts_first_audio", time.perf_counter() - t0)
                    first = False
                utt.append(pcm)
                self._wake.set()
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        except Exception as exc:  # surfaced to the session, never through the media loop
            error = self._stage_failed("tts", exc, utt.turn)
        finally:
            utt.finish(error)
            self._wake.set()

    def _restart_from(self, slot: int) -> None:
        """Drop queued slots from `slot` on and continue the idle motion from the last kept one."""
        slot = max(slot, 0)
        kept = self._timeline.get(slot - 1)
        self._timeline.drop_from(slot)
        self._cursor = min(self._cursor, slot)
        if kept is not None:
            self._avatar_counter = kept.avatar_index + 1
        self._history = np.zeros(self.config.left_context_samples, np.float32)

    async def run(self) -> None:
        k = self.config.chunk_frames
        while not self._closed:
            playing = self._clock.playing_slot()
            utt = self._current_utterance()
            if utt is not None and not utt.started and utt.remaining > 0:
                # Speech replaces queued idle: it should play now, not after the lead.
                self._restart_from(max(playing + self.config.start_margin_frames, 0) + 1)
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
            self._queue.popleft()
        return self._queue[0] if self._queue else None

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
        pcm = utt.take(need)
        window = np.concatenate([self._history, pcm, utt.peek(right)])
        indices = self._next_avatar_indices(k)
        start = self._cursor
        self._cursor += k
        self._push_history(pcm)
        if float(np.sqrt(np.mean(pcm**2))) < SPEECH_RMS_FLOOR:
            crops = None
        else:
            t0 = time.perf_counter()
            try:
                request = RenderRequest(self._avatar_id, tuple(indices), window)
                result = await self._unless_interrupted(self._render(request))
                crops = None if result is None else result.crops
            except Exception as exc:  # the chunk's audio still plays, over the avatar's own frames
                crops = None
                self._stage_failed("render", exc, turn)
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
        self.rendered_chunks += 1

    async def _unless_interrupted(self, call: Awaitable[RenderResult]) -> RenderResult | None:
        """`await call`, or None as soon as the turn is interrupted (the call is then cancelled)."""
        task = asyncio.ensure_future(call)
        turn_over = asyncio.ensure_future(self._turn_over.wait())
        try:
            await asyncio.wait({task, turn_over}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the conductor is closing: no call outlives it
            task.cancel()
            turn_over.cancel()
            raise
        turn_over.cancel()
        if not task.done():  # interrupted: a render of the old turn is not waited for
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task.result()

    def _stage_failed(self, stage: str, exc: BaseException, turn: int) -> str:
        """Count, log and keep a stage's failure for the session's stats; returns the message."""
        error = f"{stage} failed: {exc}"
        self.errors.append(error)
        self.stage_errors[stage] += 1
        self._log.warning("%s failed for turn %d: %s", stage, turn, exc)
        return error

    def _push_history(self, pcm: np.ndarray) -> None:
        joined = np.concatenate([self._history, pcm])
        self._history = joined[joined.size - self.config.left_context_samples :]
