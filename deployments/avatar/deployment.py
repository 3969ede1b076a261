"""`AvatarRenderer`: the lip-sync Serve deployment (Serve concerns only; engines do the work).

A request is one session's chunk: frame indices and the chunk's PCM window. Requests from many
sessions are batched (`batching.Batcher`: a batch is taken when the renderer is free, so batches
grow with load); the batch's audio features come from one feature engine call (the kind the
model reads, computed here where they are consumed: one round trip per chunk, docs/decisions.md),
and all its frames go through one lip-sync call per avatar. On a GPU two batches are in flight:
the next one's features are computed while this one's network runs.
Avatars are loaded on first use and kept in a per-replica LRU.

With `simulated_gpu` the network is replaced by `SimulatedGpuEngine`, whose batches take the time
a stated GPU cost model gives (`avatar.gpu_cost`): the control plane can be driven at hundreds of
sessions without a GPU (bench/control_plane_bench.py).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from deployments.asr import make_feature_engine
from deployments.avatar.assets import Avatar, load_avatar
from deployments.avatar.batching import Batcher
from deployments.avatar.gpu_cost import SimulatedGpu
from deployments.avatar.lipsync import LipSyncEngine, make_engine
from deployments.avatar.lipsync.simulated import SimulatedGpuEngine, ZeroFeatures
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import BadRequest, NotConfigured
from deployments.common.features import FeatureEngine, check_pcm
from deployments.common.logs import adopt_serve_logging
from deployments.common.models import FEATURE_MODELS, LipSyncModel, served_model
from deployments.common.threads import set_torch_threads

AVATAR_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")  # a folder name, no paths
MAX_ONGOING_REQUESTS = 512  # talking sessions one replica can batch (bench/control_plane_bench.py)


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


def _simulated_gpu(value: dict[str, Any] | str | None, spec: LipSyncModel) -> SimulatedGpu | None:
    """The validated `simulated_gpu` argument, or NotConfigured saying what is wrong with it."""
    if value is None:
        return None
    try:
        sim = SimulatedGpu.model_validate(value)
        sim.cost_model(spec, face_size=256)  # a model without a GPU cost fails `serve run` here
    except (ValidationError, ValueError) as exc:
        raise NotConfigured(f"simulated_gpu: {exc}") from exc
    return sim


# Probed every second (Serve's default is 10 s), so a dead replica is replaced within ~1 s plus
# its start-up. A real model on a CPU replica may hold the event loop for a batch: a generous
# timeout (3 misses in a row mark it unhealthy) keeps slow batches from being taken for a hang.
# Each talking session has one chunk in flight: a replica batches only the requests it holds, so
# max_ongoing_requests caps its batches and its sessions (more wait in the callers' routers).
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS,
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
        simulated_gpu: A `gpu_cost.SimulatedGpu` (or a GPU profile's name): no network, each batch
            sleeps as long as that GPU would take; the checkpoint is ignored. None: the real model.
    """

    def __init__(
        self, data_dir: str = "data/avatars", model: str = "parametric", checkpoint: str | None = None,
        device: str = "auto", feature_model_dir: str | None = None, max_cached_avatars: int = 4,
        simulated_gpu: dict[str, Any] | str | None = None,
    ) -> None:
        adopt_serve_logging()
        try:
            self._spec = served_model(model)
        except ValueError as exc:
            raise NotConfigured(str(exc)) from exc
        features = FEATURE_MODELS.get(self._spec.feature_kind)
        self._simulated = _simulated_gpu(simulated_gpu, self._spec)
        real_features = self._simulated is None or self._simulated.computes_features(features.kind)
        self._data_dir = Path(data_dir)
        self._model, self._checkpoint = self._spec.name, checkpoint
        uses_torch = (self._spec.needs_torch and self._simulated is None) or (features.needs_torch and real_features)
        self._device = _resolve_device(device) if uses_torch else "cpu"
        self._config = RendererConfig()
        self._max_cached = max(1, max_cached_avatars)
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}
        self._stats = {"batches": 0, "requests": 0, "frames": 0, "largest_batch": 0, "loads": 0,
                       "torch_threads": 0, "features_s": 0.0, "render_s": 0.0}
        self._batch_sizes: Counter[int] = Counter()  # requests per batch -> batches
        self._device_lock = threading.Lock()  # one network pass at a time on this replica's device
        # A network on the CPU gets every core by default (docs/decisions.md); parametric + mel: no torch.
        cpu_net = uses_torch and self._device.split(":")[0] == "cpu"
        self._torch_threads = set_torch_threads() if cpu_net else None
        # Missing feature weights fail `serve run` here, not at the first chunk.
        self._features: FeatureEngine = (make_feature_engine(features.kind, feature_model_dir, self._device)
                                         if real_features else ZeroFeatures(features.kind))
        if self._spec.needs_torch and checkpoint is not None and self._simulated is None:
            # Fail `serve run` now, not at the first chunk, when the weights are missing or wrong.
            make_engine(self._model, face_size=256, checkpoint=checkpoint, device=self._device)
        # A GPU (or a simulated one) runs one batch while the CPU makes the next one's features;
        # on the CPU both would fight for the same cores.
        slots = 2 if self._simulated is not None or self._device.startswith("cuda") else 1
        self._batcher: Batcher[_Job, RenderResult] = Batcher(
            self._render_jobs, max_batch_size=self._config.max_batch_size,
            batch_wait_s=self._config.batch_wait_timeout_s, slots=slots)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a validated `RendererConfig`: batching, threads now; fp16 for avatars loaded from now on."""
        cfg = RendererConfig.model_validate(user_config or {})
        self._batcher.configure(max_batch_size=cfg.max_batch_size, batch_wait_s=cfg.batch_wait_timeout_s)
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
                             latents=self._spec.needs_latents and self._simulated is None)
        engine = self._make_engine(avatar, avatar_id)
        engine.frame_inputs(avatar)  # an avatar the engine cannot use fails here, clearly
        self._stats["loads"] += 1
        return _Loaded(avatar, engine)

    def _make_engine(self, avatar: Avatar, avatar_id: str) -> LipSyncEngine:
        if self._simulated is not None:  # crops in, crops out: no weights, no latents
            cost = self._simulated.cost_model(self._spec, avatar.face_size)
            return SimulatedGpuEngine(self._model, avatar.face_size, cost)
        checkpoint = self._checkpoint
        if checkpoint is None and self._spec.avatar_checkpoint is not None:
            checkpoint = str(self._data_dir / avatar_id / self._spec.avatar_checkpoint)
        return make_engine(self._model, face_size=avatar.face_size, mouth_box=avatar.mouth_box,
                           checkpoint=checkpoint, device=self._device, fp16=self._config.fp16)

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
        return await self._batcher.submit(_Job(req, entry))

    async def render_many(self, reqs: list[RenderRequest]) -> list[RenderResult | Exception]:
        """`render` of several sessions' chunks in one call: one Serve round trip for all the
        chunks a SessionHost has due at once, instead of one each (a call costs milliseconds of
        CPU on both sides, docs/PERFORMANCE.md). Each item is its chunk's result, or the error
        `render` raised for it: a bad chunk fails only itself.
        """
        return await asyncio.gather(*(self.render(req) for req in reqs), return_exceptions=True)

    async def _render_jobs(self, jobs: list[_Job]) -> list[RenderResult]:
        """Features and frames of all jobs in one worker thread, split back per job."""
        # Off the event loop: numpy, cv2 and torch release the GIL and the next batch can gather.
        crops, features_s, render_s = await asyncio.to_thread(self._run_batch, jobs)
        self._stats["batches"] += 1
        self._stats["requests"] += len(jobs)
        self._stats["frames"] += sum(len(job.req.frame_indices) for job in jobs)
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(jobs))
        self._stats["features_s"] += features_s
        self._stats["render_s"] += render_s
        self._batch_sizes[len(jobs)] += 1
        return [RenderResult(crops=c) for c in crops]

    def _run_batch(self, jobs: list[_Job]) -> tuple[list[np.ndarray], float, float]:
        """One feature call for the whole batch, then one lip-sync call per avatar (worker thread).

        Returns the crops per job and the seconds spent in features and in the lip-sync calls
        (holding the device; not waiting for it while another batch holds it).
        """
        if self._torch_threads is not None:  # torch's threads are per calling thread (threads.py)
            self._stats["torch_threads"] = set_torch_threads(self._torch_threads)
        t0 = time.perf_counter()
        feats = self._features.batch([job.req.pcm for job in jobs], [len(job.req.frame_indices) for job in jobs])
        t1 = time.perf_counter()
        groups: dict[int, list[int]] = {}
        for j, job in enumerate(jobs):
            groups.setdefault(id(job.entry), []).append(j)
        results: list[np.ndarray] = [np.empty(0)] * len(jobs)
        render_s = 0.0
        for members in groups.values():
            entry = jobs[members[0]].entry
            index = [i for j in members for i in jobs[j].req.frame_indices]
            frame_inputs = entry.renderer.frame_inputs(entry.avatar)[index]
            features = np.concatenate([feats[j] for j in members])
            with self._device_lock:
                t2 = time.perf_counter()
                out = entry.renderer.render(frame_inputs, features)
                render_s += time.perf_counter() - t2
            start = 0
            for j in members:
                k = len(jobs[j].req.frame_indices)
                results[j] = out[start : start + k]
                start += k
        return results, t1 - t0, render_s

    async def stats(self) -> dict[str, Any]:
        """Counters since start: batches, requests, frames, largest_batch, loads, cached,
        torch_threads (what torch used in the last render thread; 0 without a CPU network),
        features_s and render_s (seconds in the feature and lip-sync calls), batch_sizes
        (requests per batch -> batches), the model, the feature kind it computes, and
        simulated_gpu (the GPU profile, or None for the real model).
        """
        return {**self._stats, "cached": len(self._cache), "model": self._model, "feature_kind": self._features.kind,
                "batch_sizes": dict(self._batch_sizes),
                "simulated_gpu": None if self._simulated is None else self._simulated.gpu}

    async def avatar_info(self, avatar_id: str) -> dict[str, Any]:
        """The avatar's metadata (`avatar.json` schema: face_size, frames, frame_size, ...)."""
        return dict((await self._get(avatar_id)).avatar.meta)
