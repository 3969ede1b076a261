"""`AvatarRenderer`: the lip-sync Serve deployment (Serve concerns only; engines do the work).

A request is one session's chunk: frame indices and the chunk's PCM window. Requests from many
sessions are batched with `@serve.batch`; the batch's audio features come from one feature
engine call (the kind the model reads, computed here where they are consumed: one round trip
per chunk, docs/decisions.md), and all its frames go through one lip-sync call per avatar.
Avatars are loaded on first use and kept in a per-replica LRU.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from deployments.asr import make_feature_engine
from deployments.avatar.assets import Avatar, load_avatar
from deployments.avatar.lipsync import LipSyncEngine, make_engine
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import BadRequest, NotConfigured
from deployments.common.features import check_pcm
from deployments.common.logs import adopt_serve_logging
from deployments.common.models import FEATURE_MODELS, served_model
from deployments.common.threads import set_torch_threads

AVATAR_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")  # a folder name, no paths


class RendererConfig(BaseModel):
    """`user_config` of the deployment, changed without a restart; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=1.0)
    fp16: bool = False  # half precision for networks on CUDA
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0)  # Ray does not cap GPU memory
    # Torch threads for a network on the CPU; None: every core the replica may use (Ray would give 1).
    torch_threads: int | None = Field(None, ge=1, le=256)


@dataclass(eq=False)
class _Loaded:
    avatar: Avatar
    renderer: LipSyncEngine


@dataclass(eq=False)
class _Job:
    """One request with its avatar pinned, so LRU eviction cannot race the batch."""

    req: RenderRequest
    entry: _Loaded


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# Probed every second (Serve's default is 10 s), so a dead replica is replaced within ~1 s plus
# its start-up. A real model on a CPU replica may hold the event loop for a batch: a generous
# timeout (3 misses in a row mark it unhealthy) keeps slow batches from being taken for a hang.
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32,
                  health_check_period_s=1, health_check_timeout_s=10)
class AvatarRenderer:
    """Renders face crops of cached avatars from each chunk's speech.

    Args:
        data_dir: Folder holding one sub-folder per avatar id.
        model: Lip-sync model: a served name or alias in `deployments.common.models`.
        checkpoint: The network's weights (Wav2Lip: `models/wav2lip.pth`); per-avatar weights
            (Ultralight's `<avatar folder>/ultralight.pth`) are used when this is None.
            Ignored by "parametric".
        device: Torch device for networks: "auto" is CUDA when this replica has a GPU.
        feature_model_dir: Folder of the feature network (HuBERT, whisper); None: the registry's.
        max_cached_avatars: How many avatars one replica keeps decoded (LRU).
    """

    def __init__(
        self, data_dir: str = "data/avatars", model: str = "parametric", checkpoint: str | None = None,
        device: str = "auto", feature_model_dir: str | None = None, max_cached_avatars: int = 4,
    ) -> None:
        adopt_serve_logging()
        try:
            self._spec = served_model(model)
        except ValueError as exc:
            raise NotConfigured(str(exc)) from exc
        features = FEATURE_MODELS.get(self._spec.feature_kind)
        self._data_dir = Path(data_dir)
        self._model, self._checkpoint = self._spec.name, checkpoint
        uses_torch = self._spec.needs_torch or features.needs_torch
        self._device = _resolve_device(device) if uses_torch else "cpu"
        self._config = RendererConfig()
        self._max_cached = max(1, max_cached_avatars)
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}
        self._stats = {"batches": 0, "requests": 0, "frames": 0, "largest_batch": 0, "loads": 0,
                       "torch_threads": 0}
        # A network on the CPU gets every core by default (docs/decisions.md); parametric + mel: no torch.
        cpu_net = uses_torch and self._device.split(":")[0] == "cpu"
        self._torch_threads = set_torch_threads() if cpu_net else None
        # Missing feature weights fail `serve run` here, not at the first chunk.
        self._features = make_feature_engine(features.kind, feature_model_dir, self._device)
        if self._spec.needs_torch and checkpoint is not None:
            # Fail `serve run` now, not at the first chunk, when the weights are missing or wrong.
            make_engine(self._model, face_size=256, checkpoint=checkpoint, device=self._device)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a validated `RendererConfig`: batching, threads now; fp16 for avatars loaded from now on."""
        cfg = RendererConfig.model_validate(user_config or {})
        self._render_batch.set_max_batch_size(cfg.max_batch_size)
        self._render_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        if self._torch_threads is not None:
            self._torch_threads = set_torch_threads(cfg.torch_threads)
        if cfg.gpu_memory_fraction is not None and self._device.startswith("cuda"):
            from deployments.avatar.lipsync import limit_gpu_memory

            limit_gpu_memory(cfg.gpu_memory_fraction, self._device)
        if cfg.fp16 != self._config.fp16:
            self._cache.clear()  # engines are rebuilt with the new precision on next use
        self._config = cfg

    async def _get(self, avatar_id: str) -> _Loaded:
        """The cached avatar, loaded off the event loop on first use (LRU eviction)."""
        if not AVATAR_ID_RE.match(avatar_id):
            raise BadRequest(f"invalid avatar id {avatar_id!r}")
        if avatar_id in self._cache:
            self._cache.move_to_end(avatar_id)
            return self._cache[avatar_id]
        task = self._loading.get(avatar_id)
        if task is None:  # one load per id, however many requests wait for it
            task = asyncio.ensure_future(asyncio.to_thread(self._load, avatar_id))
            self._loading[avatar_id] = task
            task.add_done_callback(lambda _: self._loading.pop(avatar_id, None))
        entry = await asyncio.shield(task)
        self._cache[avatar_id] = entry
        self._cache.move_to_end(avatar_id)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return entry

    def _load(self, avatar_id: str) -> _Loaded:
        """Decode one avatar folder and build its renderer (runs in a worker thread)."""
        # Only the crops (or latents): full frames stay with SessionHost. AvatarNotFound (404) if unknown.
        avatar = load_avatar(self._data_dir / avatar_id, full_frames=False,
                             latents=self._spec.needs_latents)
        checkpoint = self._checkpoint
        if checkpoint is None and self._spec.avatar_checkpoint is not None:
            checkpoint = str(self._data_dir / avatar_id / self._spec.avatar_checkpoint)
        engine = make_engine(self._model, face_size=avatar.face_size, mouth_box=avatar.mouth_box,
                             checkpoint=checkpoint, device=self._device, fp16=self._config.fp16)
        engine.frame_inputs(avatar)  # an avatar the engine cannot use fails here, clearly
        self._stats["loads"] += 1
        return _Loaded(avatar, engine)

    async def render(self, req: RenderRequest) -> RenderResult:
        """Render the K crops of one session chunk (batched with other sessions' chunks).

        Raises:
            BadRequest: Unknown avatar id, frame indices out of range, or a PCM window that is
                not the `common.features` layout for K frames (raised before batching, so it
                fails only this caller).
        """
        entry = await self._get(req.avatar_id)
        n, k = entry.avatar.n_frames, len(req.frame_indices)
        if k == 0 or any(not 0 <= i < n for i in req.frame_indices):
            raise BadRequest(f"frame_indices must be 1+ indices in 0..{n - 1} for {req.avatar_id}")
        try:
            check_pcm(req.pcm, k)
        except ValueError as exc:
            raise BadRequest(f"bad render request: {exc}") from exc
        return await self._render_batch(_Job(req, entry))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _render_batch(self, jobs: list[_Job]) -> list[RenderResult]:
        """Features and frames of all jobs in one worker thread, split back per job."""
        # Off the event loop: numpy, cv2 and torch release the GIL and the next batch can gather.
        crops = await asyncio.to_thread(self._run_batch, jobs)
        self._stats["batches"] += 1
        self._stats["requests"] += len(jobs)
        self._stats["frames"] += sum(len(job.req.frame_indices) for job in jobs)
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(jobs))
        return [RenderResult(crops=c) for c in crops]

    def _run_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        """One feature call for the whole batch, then one lip-sync call per avatar (worker thread)."""
        if self._torch_threads is not None:  # torch's threads are per calling thread (threads.py)
            self._stats["torch_threads"] = set_torch_threads(self._torch_threads)
        feats = self._features.batch([job.req.pcm for job in jobs], [len(job.req.frame_indices) for job in jobs])
        groups: dict[int, list[int]] = {}
        for j, job in enumerate(jobs):
            groups.setdefault(id(job.entry), []).append(j)
        results: list[np.ndarray] = [np.empty(0)] * len(jobs)
        for members in groups.values():
            entry = jobs[members[0]].entry
            index = [i for j in members for i in jobs[j].req.frame_indices]
            frame_inputs = entry.renderer.frame_inputs(entry.avatar)[index]
            out = entry.renderer.render(frame_inputs, np.concatenate([feats[j] for j in members]))
            start = 0
            for j in members:
                k = len(jobs[j].req.frame_indices)
                results[j] = out[start : start + k]
                start += k
        return results

    async def stats(self) -> dict[str, Any]:
        """Counters since start: batches, requests, frames, largest_batch, loads, cached,
        torch_threads (what torch used in the last render thread; 0 without a CPU network), and
        the model and the feature kind it computes.
        """
        return {**self._stats, "cached": len(self._cache), "model": self._model, "feature_kind": self._features.kind}

    async def avatar_info(self, avatar_id: str) -> dict[str, Any]:
        """The avatar's metadata (`avatar.json` schema: face_size, frames, frame_size, ...)."""
        return dict((await self._get(avatar_id)).avatar.meta)
