"""LiveTalking's streaming mel features: one 80x16 mel window per video frame.

LiveTalking (``avatars/audio_features/mel.py`` ``MelASR``) keeps ``l`` chunks of past and
``r`` chunks of future audio (20 ms each) around every batch of video frames, computes the
Wav2Lip mel over the whole buffer and cuts one 16-column (200 ms) window per frame, starting
at that frame's own 40 ms of audio. :func:`mel_frame_windows` is that computation for one
buffer; :class:`StreamingMelASR` adds LiveTalking's chunk bookkeeping around it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from deployments.asr.mel import (
    MEL_FRAMES_PER_S,
    clamp_window_start,
    melspectrogram,
    n_mel_frames,
    slice_windows,
)
from deployments.common.features import LEFT_CONTEXT_CHUNKS, RIGHT_CONTEXT_CHUNKS, check_pcm
from deployments.common.timing import AUDIO_CHUNK_SAMPLES, CHUNKS_PER_FRAME, FPS

DEFAULT_BATCH_FRAMES = 16  # LiveTalking ``--batch_size``: video frames per step

# Mel column where frame 0's own audio starts: max(0, l * 80 / 50) = 16.0. A float on purpose:
# upstream truncates ``left + i * 3.2`` in double precision, and so must we to match it.
_LEFT_MEL_COLUMN = max(0.0, LEFT_CONTEXT_CHUNKS * MEL_FRAMES_PER_S / (FPS * CHUNKS_PER_FRAME))
_MEL_COLUMNS_PER_FRAME = MEL_FRAMES_PER_S / FPS  # 3.2


def stream_window_starts(n_frames: int, n_frames_mel: int) -> np.ndarray:
    """LiveTalking window starts: ``int(16.0 + i * 3.2)``, clamped to ``T - 16`` at the end.

    Args:
        n_frames: Video frames in the buffer.
        n_frames_mel: T, mel columns of the whole buffer.

    Returns:
        (n_frames,) int array of start columns, e.g. 16, 19, 22, 25, 28, 32, ...
    """
    # Python floats are IEEE doubles, so this truncates exactly like upstream's int().
    starts = [int(_LEFT_MEL_COLUMN + i * _MEL_COLUMNS_PER_FRAME) for i in range(n_frames)]
    return np.array([clamp_window_start(s, n_frames_mel) for s in starts], dtype=np.intp)


def mel_frame_windows(pcm: np.ndarray, n_frames: int) -> np.ndarray:
    """One Wav2Lip mel window per video frame, exactly as LiveTalking ``MelASR.run_step``.

    Args:
        pcm: 16 kHz mono float samples laid out as `common.features` says (left context, the
            frames' ``n_frames * 640`` samples, right context). Never modified (it may be a
            read-only Ray buffer).
        n_frames: Number of video frames (25 fps) the middle part covers.

    Returns:
        float32 array (n_frames, 80, 16); window i starts at frame i's own audio.

    Raises:
        ValueError: See `common.features.check_pcm`.
    """
    check_pcm(pcm, n_frames)
    mel = melspectrogram(pcm)
    return slice_windows(mel, stream_window_starts(n_frames, n_mel_frames(pcm.shape[0])))


class StreamingMelASR:
    """LiveTalking's ``MelASR`` loop: 20 ms chunks in, one mel window per video frame out.

    ``warm_up()`` fills the context with ``l + r`` silent chunks. Each ``run_step()`` takes
    ``2 * batch_size`` queued chunks (silence if the queue runs dry, as upstream), computes the
    windows over context + new chunks, and keeps the last ``l + r`` chunks as the next context.
    The windows of one step therefore lag the newest audio by the right context (200 ms).
    """

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_FRAMES) -> None:
        """Create an empty stream.

        Args:
            batch_size: Video frames produced per ``run_step()``.

        Raises:
            ValueError: ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self._context_chunks = LEFT_CONTEXT_CHUNKS + RIGHT_CONTEXT_CHUNKS
        self._queue: deque[np.ndarray] = deque()
        self._frames: list[np.ndarray] = []

    def warm_up(self) -> None:
        """Fill the context with ``l + r`` silent chunks (start-up state of upstream)."""
        silence = np.zeros(AUDIO_CHUNK_SAMPLES, np.float32)
        self._frames = [silence] * self._context_chunks  # never written to: sharing is safe

    def put_audio_chunk(self, chunk: np.ndarray) -> None:
        """Queue one 20 ms chunk (320 float samples); it is copied.

        Raises:
            ValueError: Wrong shape.
        """
        if chunk.shape != (AUDIO_CHUNK_SAMPLES,):
            raise ValueError(
                f"an audio chunk is ({AUDIO_CHUNK_SAMPLES},) samples, got shape {chunk.shape}"
            )
        self._queue.append(np.array(chunk, dtype=np.float32))

    def run_step(self) -> np.ndarray:
        """Consume ``2 * batch_size`` chunks and return their (batch_size, 80, 16) windows.

        Raises:
            RuntimeError: ``warm_up()`` was not called.
        """
        if not self._frames:
            raise RuntimeError("call warm_up() before run_step()")
        silence = np.zeros(AUDIO_CHUNK_SAMPLES, np.float32)
        for _ in range(CHUNKS_PER_FRAME * self.batch_size):
            self._frames.append(self._queue.popleft() if self._queue else silence)
        windows = mel_frame_windows(np.concatenate(self._frames), self.batch_size)
        self._frames = self._frames[-self._context_chunks :]
        return windows
