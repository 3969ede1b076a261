"""A growing buffer of one utterance's 16 kHz speech, filled by TTS or an upload."""

from __future__ import annotations

import numpy as np


class Utterance:
    """Speech samples for one turn; `ended` once the producer has delivered everything."""

    def __init__(self, turn: int, text: str = "") -> None:
        self.turn = turn
        self.text = text
        self._pieces: list[np.ndarray] = []
        self._available = 0
        self._consumed = 0
        self.ended = False
        self.started = False  # set once its first samples were scheduled
        self.held = False  # synthesised but not played until released (a reply to a turn not yet over)
        self.received = 0  # samples delivered so far
        self.last_slot: int | None = None  # the last slot its speech was scheduled in (by the conductor)
        self.error: str | None = None
        # Playback marks, for the sentence events (set by the conductor and the cues it puts on slots).
        self.last_audio_slot: int | None = None  # the slot holding its last sample scheduled so far
        self.start_cued = self.end_cued = False  # cue put on a slot
        self.start_played = self.end_played = False  # event published

    def append(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._pieces.append(np.asarray(pcm, np.float32).reshape(-1))
            self._available += pcm.size
            self.received += pcm.size

    def finish(self, error: str | None = None) -> None:
        self.ended = True
        self.error = error

    @property
    def remaining(self) -> int:
        return self._available - self._consumed

    @property
    def exhausted(self) -> bool:
        return self.ended and self.remaining <= 0

    def _read(self, start: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        pos, filled = 0, 0
        for piece in self._pieces:
            if filled >= n:
                break
            lo = max(start - pos, 0)
            if lo < piece.size:
                take = min(piece.size - lo, n - filled)
                out[filled : filled + take] = piece[lo : lo + take]
                filled += take
            pos += piece.size
        return out

    def take(self, n: int) -> np.ndarray:
        """The next n samples, zero-padded past what has arrived."""
        out = self._read(self._consumed, n)
        self._consumed = min(self._consumed + n, self._available)
        self._drop_consumed()
        return out

    def peek(self, n: int) -> np.ndarray:
        """The n samples after the read position, zero-padded (right context for features)."""
        return self._read(self._consumed, n)

    def _drop_consumed(self) -> None:
        # Keep memory flat for long utterances: forget pieces entirely behind the read position.
        while self._pieces and self._pieces[0].size <= self._consumed:
            size = self._pieces.pop(0).size
            self._consumed -= size
            self._available -= size
