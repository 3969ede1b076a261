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
from deployments.common.threads import set_torch_threads

DEFAULT_MAX_BATCH_SIZE = 8
# One request costs ~0.3-0.5 ms of CPU: waiting longer than a few ms only adds latency.
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005
# Must be >= max_batch_size or batches can never fill (NOTES.md); configs may raise it.
DEFAULT_MAX_ONGOING_REQUESTS = 32
NETWORK_KINDS = ("hubert", "whisper")  # torch models; "mel" is numpy


class AudioFeaturesConfig(BaseModel):
    """The ``user_config`` of :class:`AudioFeatures`; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1)
    batch_wait_timeout_s: float = Field(default=DEFAULT_BATCH_WAIT_TIMEOUT_S, ge=0.0)
    # Torch threads for network kinds on the CPU; None: every core the replica may use (Ray gives 1).
    torch_threads: int | None = Field(default=None, ge=1, le=256)


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
        self._by_kind = dict.fromkeys(self._engines, 0)
        self._threads_seen = 0
        # A network on the CPU gets every core by default (docs/decisions.md); "mel" imports no torch.
        cpu_net = any(k in NETWORK_KINDS for k in self._engines) and device.split(":")[0] == "cpu"
        self._torch_threads = set_torch_threads() if cpu_net else None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (see :class:`AudioFeaturesConfig`) without a restart.

        Raises:
            pydantic.ValidationError: Unknown key or out-of-range value.
        """
        config = AudioFeaturesConfig.model_validate(user_config)
        self._features_batch.set_max_batch_size(config.max_batch_size)
        self._features_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if self._torch_threads is not None:
            self._torch_threads = set_torch_threads(config.torch_threads)

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
            self._by_kind[kind] += len(members)
            args = (kind, [pcms[i] for i in members], [n_frames[i] for i in members])
            if kind in NETWORK_KINDS:  # off the event loop: a network takes 50 ms to seconds
                outs = await asyncio.to_thread(self._run_engine, *args)
            else:  # mel: ~0.4 ms a request, less than a thread hop
                outs = self._run_engine(*args)
            for i, out in zip(members, outs, strict=True):
                results[i] = out
        return results  # type: ignore[return-value]  # every slot was filled

    def _run_engine(self, kind: str, pcms: list[np.ndarray], n_frames: list[int]) -> list[np.ndarray]:
        """One engine call; for a network, torch's threads are set in the calling thread (threads.py)."""
        if self._torch_threads is not None and kind in NETWORK_KINDS:
            self._threads_seen = set_torch_threads(self._torch_threads)
        return self._engines[kind].batch(pcms, n_frames)

    async def stats(self) -> dict[str, Any]:
        """Counters since start: batches run, requests served (in all and ``by_kind``), largest
        batch seen, and ``torch_threads`` (what torch used in the last network call; 0: none yet)."""
        return {
            "batches": self._batches,
            "requests": self._requests,
            "largest_batch": self._largest_batch,
            "by_kind": dict(self._by_kind),
            "torch_threads": self._threads_seen,
        }
