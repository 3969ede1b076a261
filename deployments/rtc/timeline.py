"""One clock and one slot-addressed queue shared by the audio and video tracks.

Video frame n plays at t0 + 40 ms·n and audio packets 2n and 2n+1 (20 ms each) belong to the
same slot n, cut from the same rendered chunk, so audio and video cannot drift apart.

A slot may carry cues: callbacks the audio track runs when the slot's audio starts playing, or
once it has played (sentence start and end events come from here, not from synthesis).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deployments.common.timing import FPS

log = logging.getLogger(__name__)
FRAME_S = 1.0 / FPS


class MediaClock:
    """Wall-clock origin shared by both tracks; started by whichever track asks first."""

    def __init__(self, now=time.monotonic) -> None:
        self._now = now
        self.t0: float | None = None

    def start(self) -> float:
        if self.t0 is None:
            self.t0 = self._now()
        return self.t0

    def now(self) -> float:
        return self._now()

    def playing_slot(self) -> int:
        """The frame slot being played now (-1 before the clock starts)."""
        if self.t0 is None:
            return -1
        return int((self._now() - self.t0) / FRAME_S)

    def slot_time(self, slot: int) -> float:
        return self.start() + slot * FRAME_S


@dataclass(frozen=True)
class Cue:
    """A callback run once when its slot's audio starts playing (`at_end` False) or has played."""

    run: Callable[[], None]
    at_end: bool = False


@dataclass(frozen=True)
class MediaItem:
    """One frame slot: the picture, its 40 ms of int16 audio, and where it came from."""

    frame: np.ndarray  # (H, W, 3) uint8 BGR
    audio: np.ndarray  # (640,) int16
    avatar_index: int  # index into the avatar's frames (for seamless idle continuation)
    turn: int
    speech: bool
    cues: tuple[Cue, ...] = ()


class MediaTimeline:
    """Slot → item map written by the conductor, read by the tracks; pruned as slots play."""

    def __init__(self) -> None:
        self._items: dict[int, MediaItem] = {}
        self._played_video = -1
        self._played_audio = -1
        self._started_audio = -1  # start cues ran up to here
        self._audio_follows_video = False

    def put(self, slot: int, item: MediaItem) -> None:
        self._items[slot] = item

    def get(self, slot: int) -> MediaItem | None:
        return self._items.get(slot)

    def add_cue(self, slot: int, cue: Cue) -> bool:
        """Attach `cue` to the queued `slot`; False if that slot is gone or already past the cue's moment."""
        item = self._items.get(slot)
        done = self._played_audio if cue.at_end else self._started_audio
        if item is None or slot <= done:
            return False
        self._items[slot] = dataclasses.replace(item, cues=(*item.cues, cue))
        return True

    def without_audio(self) -> None:
        """The session has no audio track: the video track's progress stands for it (cues, pruning)."""
        self._audio_follows_video = True

    def mark_video_played(self, slot: int) -> None:
        self._played_video = max(self._played_video, slot)
        if self._audio_follows_video:
            self.mark_audio_played(slot)
        self._prune()

    def audio_starting(self, slot: int) -> None:
        """The audio track starts playing `slot`: run its start cues, after every cue of the slots
        before it that have not run (slots a lagging track skipped).
        """
        self._audio_played_through(slot - 1)
        if slot > self._started_audio:
            self._run_cues(slot, at_end=False)
            self._started_audio = slot

    def mark_audio_played(self, slot: int) -> None:
        self._audio_played_through(slot)
        self._prune()

    def _audio_played_through(self, slot: int) -> None:
        """Run the cues of every slot up to `slot` not yet run, slot by slot: starts, then ends."""
        if slot <= self._played_audio:
            return  # every packet calls this: most have nothing to catch up (no scan of the slots)
        for s in sorted(s for s, item in self._items.items() if self._played_audio < s <= slot and item.cues):
            if s > self._started_audio:
                self._run_cues(s, at_end=False)
            self._run_cues(s, at_end=True)
        self._started_audio = max(self._started_audio, slot)
        self._played_audio = max(self._played_audio, slot)

    def _run_cues(self, slot: int, *, at_end: bool) -> None:
        item = self._items.get(slot)
        for cue in item.cues if item is not None else ():
            if cue.at_end == at_end:
                try:
                    cue.run()
                except Exception:  # a cue's bug must not stop the track that plays the slot
                    log.exception("cue of slot %d failed", slot)

    def _prune(self) -> None:
        # Keep the slot both tracks may still need; everything older is gone for good.
        oldest_needed = min(self._played_video, self._played_audio)
        for slot in [s for s in self._items if s < oldest_needed]:
            del self._items[slot]

    def drop_from(self, slot: int) -> None:
        """Forget every queued item at or after `slot` (interrupt, or speech replacing idle)."""
        for s in [s for s in self._items if s >= slot]:
            del self._items[s]

    def mute(self, slot: int) -> None:
        """Silence what of `slot`'s audio is not sent yet (interrupt: the slot playing stops at
        its next 20 ms packet, not at its end); its picture and cues stay.
        """
        item = self._items.get(slot)
        if item is not None and item.speech:
            self._items[slot] = dataclasses.replace(item, audio=np.zeros_like(item.audio), speech=False)

    def has_speech_from(self, slot: int) -> bool:
        return any(item.speech for s, item in self._items.items() if s >= slot)

    def last_slot(self) -> int:
        return max(self._items, default=-1)

    def __len__(self) -> int:
        return len(self._items)
