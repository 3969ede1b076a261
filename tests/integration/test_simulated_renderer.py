"""``AvatarRenderer`` with a simulated GPU on a real Ray Serve instance: no weights, the avatar's
own crops back, batches from concurrent calls, `render_many`, and the stats the control-plane
bench reads (bench/control_plane_bench.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.avatar.assets import Avatar, load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.deployment import AvatarRenderer
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import BadRequest
from deployments.common.features import pcm_samples_for

pytestmark = pytest.mark.integration

AVATAR_ID = "sim"
K = 4
CONCURRENT = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avatars")
    build_avatar(AVATAR_ID, astronaut=True, out_dir=root, face_size=64, idle_seconds=0.4, progress=False)
    return root


@pytest.fixture(scope="module")
def avatar(data_dir: Path) -> Avatar:
    return load_avatar(data_dir / AVATAR_ID, full_frames=False)


@pytest.fixture(scope="module")
def handle(data_dir: Path) -> Iterator[DeploymentHandle]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a `ray start` one
    try:
        # A checkpoint that does not exist: the simulated network never reads it.
        app = AvatarRenderer.options(user_config={"max_batch_size": 16, "batch_wait_timeout_s": 0.05}).bind(
            data_dir=str(data_dir), model="wav2lip256", checkpoint=str(data_dir / "missing.pth"),
            simulated_gpu={"gpu": "l4", "features": "compute"})
        yield serve.run(app, name="sim_test", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def _request(avatar: Avatar, seed: int) -> RenderRequest:
    rng = np.random.default_rng(seed)
    indices = tuple(int(i) for i in rng.integers(0, avatar.n_frames, K))
    return RenderRequest(AVATAR_ID, indices, (0.1 * rng.standard_normal(pcm_samples_for(K))).astype(np.float32))


def test_concurrent_chunks_are_batched_and_get_the_avatars_crops(handle: DeploymentHandle, avatar: Avatar) -> None:
    before = handle.stats.remote().result(timeout_s=60)
    reqs = [_request(avatar, seed) for seed in range(CONCURRENT)]
    results = [r.result(timeout_s=60) for r in [handle.render.remote(q) for q in reqs]]
    for req, got in zip(reqs, results, strict=True):
        assert isinstance(got, RenderResult)
        assert np.array_equal(got.crops, avatar.face_crops[list(req.frame_indices)])
    after = handle.stats.remote().result(timeout_s=30)
    assert after["simulated_gpu"] == "l4" and after["model"] == "wav2lip256" and after["feature_kind"] == "mel"
    batches = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == CONCURRENT and batches < CONCURRENT, after
    assert sum(after["batch_sizes"].values()) == after["batches"]
    assert after["render_s"] > before["render_s"] and after["features_s"] > before["features_s"]


def test_render_many_fails_only_the_bad_chunk(handle: DeploymentHandle, avatar: Avatar) -> None:
    good = [_request(avatar, seed) for seed in (10, 11)]
    bad = RenderRequest(AVATAR_ID, (0,), good[0].pcm)  # audio for 4 frames, 1 frame asked
    first, error, second = handle.render_many.remote([good[0], bad, good[1]]).result(timeout_s=60)
    assert np.array_equal(first.crops, avatar.face_crops[list(good[0].frame_indices)])
    assert np.array_equal(second.crops, avatar.face_crops[list(good[1].frame_indices)])
    assert isinstance(error, BadRequest) and "must hold" in str(error)
