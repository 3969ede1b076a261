"""``AvatarRenderer`` on a real Ray Serve instance: features + render in one call, batching,
exactness, errors, metadata.

``@serve.batch`` does not work in ``_local_testing_mode`` (NOTES.md), so this starts Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.asr import mel_frame_windows
from deployments.avatar.assets import Avatar, AvatarNotFound, load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.deployment import AvatarRenderer, RendererConfig
from deployments.avatar.parametric import ParametricLipSync
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import BadRequest
from deployments.common.features import LEFT_CONTEXT_SAMPLES, pcm_samples_for
from deployments.common.timing import SAMPLES_PER_FRAME

pytestmark = pytest.mark.integration

APP_NAME = "avatar_test"
AVATAR_ID = "small"
N_CONCURRENT = 6
BATCH_WAIT_S = 0.05  # long enough that concurrent calls share batches on a busy 2-core box


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avatars")
    build_avatar(
        AVATAR_ID, astronaut=True, out_dir=root, face_size=128, idle_seconds=0.4, progress=False
    )
    return root


@pytest.fixture(scope="module")
def avatar(data_dir: Path) -> Avatar:
    return load_avatar(data_dir / AVATAR_ID)


@pytest.fixture(scope="module")
def handle(data_dir: Path) -> Iterator[DeploymentHandle]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        app = AvatarRenderer.options(
            user_config={"max_batch_size": 8, "batch_wait_timeout_s": BATCH_WAIT_S}
        ).bind(data_dir=str(data_dir))
        yield serve.run(app, name=APP_NAME, route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def _request(avatar: Avatar, k: int, seed: int) -> RenderRequest:
    """K frames of noise bursts at random loudness, the first frame's own audio silent."""
    rng = np.random.default_rng(seed)
    indices = tuple(int(i) for i in rng.integers(0, avatar.n_frames, k))
    pcm = (rng.uniform(0.0, 0.5) * rng.standard_normal(pcm_samples_for(k))).astype(np.float32)
    pcm[: LEFT_CONTEXT_SAMPLES + SAMPLES_PER_FRAME] = 0.0  # frame 0 and the audio before it
    return RenderRequest(AVATAR_ID, indices, pcm)


def test_concurrent_renders_are_batched_and_exact(
    handle: DeploymentHandle, avatar: Avatar
) -> None:
    local = ParametricLipSync(avatar.face_size, avatar.mouth_box)
    before = handle.stats.remote().result(timeout_s=30)
    reqs = [_request(avatar, k, seed=k) for k in range(1, N_CONCURRENT + 1)]
    responses = [handle.render.remote(r) for r in reqs]
    results = [r.result(timeout_s=60) for r in responses]
    for req, got in zip(reqs, results, strict=True):
        assert isinstance(got, RenderResult)
        feats = mel_frame_windows(req.pcm, len(req.frame_indices))
        want = local.render(avatar.face_crops[list(req.frame_indices)], feats)
        assert got.crops.shape == want.shape and np.array_equal(got.crops, want)
        assert not np.array_equal(got.crops, avatar.face_crops[list(req.frame_indices)])  # it speaks
    after = handle.stats.remote().result(timeout_s=30)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == N_CONCURRENT and batches < requests, after
    assert after["frames"] - before["frames"] == sum(range(1, N_CONCURRENT + 1))


def test_bad_requests_fail_alone(handle: DeploymentHandle, avatar: Avatar) -> None:
    good = _request(avatar, 3, seed=42)
    one_frame = good.pcm[: pcm_samples_for(1)]
    unknown = handle.render.remote(RenderRequest("nobody", (0,), one_frame))
    beyond = (avatar.n_frames,)
    out_of_range = handle.render.remote(RenderRequest(AVATAR_ID, beyond, one_frame))
    short = handle.render.remote(RenderRequest(AVATAR_ID, (0, 1), one_frame))  # audio for 1 frame, not 2
    nan = one_frame.copy()
    nan[7] = np.nan
    not_finite = handle.render.remote(RenderRequest(AVATAR_ID, (0,), nan))
    ok = handle.render.remote(good)
    with pytest.raises(FileNotFoundError, match="nobody does not exist") as missing:
        unknown.result(timeout_s=30)
    assert isinstance(missing.value, AvatarNotFound) and missing.value.status == 404
    with pytest.raises(BadRequest, match="frame_indices must be"):
        out_of_range.result(timeout_s=30)
    with pytest.raises(BadRequest, match="must hold .* samples"):
        short.result(timeout_s=30)
    with pytest.raises(BadRequest, match="NaN"):
        not_finite.result(timeout_s=30)
    assert ok.result(timeout_s=30).crops.shape == (3, 128, 128, 3)


def test_avatar_info(handle: DeploymentHandle) -> None:
    info = handle.avatar_info.remote(AVATAR_ID).result(timeout_s=30)
    assert info["face_size"] == 128 and info["frames"] == 10 and info["model"] == "parametric"


def test_user_config_is_validated() -> None:
    assert RendererConfig.model_validate({}).max_batch_size == 8
    with pytest.raises(ValidationError):
        RendererConfig.model_validate({"max_batch_size": 0})
