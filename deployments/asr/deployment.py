"""``AudioFeatures``: Serve deployment turning session PCM into per-frame mel windows.

Serve concerns only (batching, ``user_config``); the maths is in ``features.py``. Requests
from many sessions are gathered with ``@serve.batch`` so a replica handles one batch per
event-loop turn instead of one task per 160 ms chunk per session.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.asr.feature_engines import FeatureEngine, make_feature_engine

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

    def __init__(self, kinds: tuple[str, ...] = ("mel",), model_dirs: dict[str, str] | None = None,
                 device: str = "cpu") -> None:
        """Load the feature engines of `kinds` ("mel", "whisper", "hubert"); missing weights fail here.

        Args:
            kinds: The per-frame features the configured lip-sync model needs.
            model_dirs: Local model folders by kind (whisper, hubert); defaults in models/README.md.
            device: Torch device for the network-based features.
        """
        self._engines: dict[str, FeatureEngine] = {
            kind: make_feature_engine(kind, (model_dirs or {}).get(kind), device) for kind in dict.fromkeys(kinds)
        }
        self._batches = 0
        self._requests = 0
        self._largest_batch = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (see :class:`AudioFeaturesConfig`) without a restart.

        Raises:
            pydantic.ValidationError: Unknown key or out-of-range value.
        """
        config = AudioFeaturesConfig.model_validate(user_config)
        self._features_batch.set_max_batch_size(config.max_batch_size)
        self._features_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def mel_windows(self, pcm: np.ndarray, n_frames: int) -> np.ndarray:
        """Return the (n_frames, 80, 16) float32 mel windows for one buffer.

        Args:
            pcm: ``LEFT_CONTEXT_SAMPLES + n_frames * 640 + RIGHT_CONTEXT_SAMPLES`` float
                samples at 16 kHz; may arrive read-only and is never written.
            n_frames: Video frames covered by the middle part of ``pcm``.

        Raises:
            ValueError: Malformed request; raised before batching so it fails only this caller.
        """
        return await self.features("mel", pcm, n_frames)

    async def features(self, kind: str, pcm: np.ndarray, n_frames: int) -> np.ndarray:
        """Per-frame features of `kind` for one buffer (left context + frames + right context).

        Raises:
            ValueError: Unknown kind or malformed request; raised before batching so it fails
                only this caller.
        """
        engine = self._engines.get(kind)
        if engine is None:
            raise ValueError(f"feature kind {kind!r} is not loaded here (have {', '.join(self._engines)})")
        engine.check(pcm, n_frames)
        result: np.ndarray = await self._features_batch(kind, pcm, n_frames)
        return result

    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
    )
    async def _features_batch(
        self, kinds: list[str], pcms: list[np.ndarray], n_frames: list[int]
    ) -> list[np.ndarray]:
        """Batched body: one result per request, in order; one engine call per kind."""
        self._batches += 1
        self._requests += len(pcms)
        self._largest_batch = max(self._largest_batch, len(pcms))
        results: list[np.ndarray | None] = [None] * len(pcms)
        for kind in dict.fromkeys(kinds):
            members = [i for i, k in enumerate(kinds) if k == kind]
            # Off the event loop: networks take milliseconds to seconds; the next batch gathers.
            outs = await asyncio.to_thread(
                self._engines[kind].batch, [pcms[i] for i in members], [n_frames[i] for i in members])
            for i, out in zip(members, outs, strict=True):
                results[i] = out
        return results  # type: ignore[return-value]  # every slot was filled

    async def stats(self) -> dict[str, int]:
        """Counters since start: batches run, requests served, largest batch seen."""
        return {
            "batches": self._batches,
            "requests": self._requests,
            "largest_batch": self._largest_batch,
        }
