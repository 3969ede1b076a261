"""``AudioFeatures``: Serve deployment turning session PCM into per-frame mel windows.

Serve concerns only (batching, ``user_config``); the maths is in ``features.py``. Requests
from many sessions are gathered with ``@serve.batch`` so a replica handles one batch per
event-loop turn instead of one task per 160 ms chunk per session.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.asr.features import check_pcm, mel_frame_windows

DEFAULT_MAX_BATCH_SIZE = 8
# One request costs ~0.3-0.5 ms of CPU: waiting longer than a few ms only adds latency.
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005
# Must be >= max_batch_size or batches can never fill (NOTES.md); configs may raise it.
DEFAULT_MAX_ONGOING_REQUESTS = 32


class AudioFeaturesConfig(BaseModel):
    """The ``user_config`` of :class:`AudioFeatures`; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1)
    batch_wait_timeout_s: float = Field(default=DEFAULT_BATCH_WAIT_TIMEOUT_S, ge=0.0)


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS,
)
class AudioFeatures:
    """Mel windows for lip sync, batched across callers.

    Call as ``await handle.mel_windows.remote(pcm, n_frames)``; see
    :func:`deployments.asr.features.mel_frame_windows` for the layout of ``pcm``.
    """

    def __init__(self) -> None:
        """Start with zeroed counters; batching defaults come from the decorator."""
        self._batches = 0
        self._requests = 0
        self._largest_batch = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (see :class:`AudioFeaturesConfig`) without a restart.

        Raises:
            pydantic.ValidationError: Unknown key or out-of-range value.
        """
        config = AudioFeaturesConfig.model_validate(user_config)
        self._mel_windows_batch.set_max_batch_size(config.max_batch_size)
        self._mel_windows_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def mel_windows(self, pcm: np.ndarray, n_frames: int) -> np.ndarray:
        """Return the (n_frames, 80, 16) float32 mel windows for one buffer.

        Args:
            pcm: ``LEFT_CONTEXT_SAMPLES + n_frames * 640 + RIGHT_CONTEXT_SAMPLES`` float
                samples at 16 kHz; may arrive read-only and is never written.
            n_frames: Video frames covered by the middle part of ``pcm``.

        Raises:
            ValueError: Malformed request; raised before batching so it fails only this caller.
        """
        check_pcm(pcm, n_frames)
        result: np.ndarray = await self._mel_windows_batch(pcm, n_frames)
        return result

    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
    )
    async def _mel_windows_batch(
        self, pcms: list[np.ndarray], n_frames: list[int]
    ) -> list[np.ndarray]:
        """Batched body: one result per request, in order (each may have its own n_frames)."""
        self._batches += 1
        self._requests += len(pcms)
        self._largest_batch = max(self._largest_batch, len(pcms))
        # A numpy batch over equal lengths measured slower than this loop (cache-bound STFT).
        return [mel_frame_windows(pcm, n) for pcm, n in zip(pcms, n_frames, strict=True)]

    async def stats(self) -> dict[str, int]:
        """Counters since start: batches run, requests served, largest batch seen."""
        return {
            "batches": self._batches,
            "requests": self._requests,
            "largest_batch": self._largest_batch,
        }
