"""MuseTalk through Ray Serve: `AvatarRenderer` computes whisper prompts and frames in one call.

Two sessions' requests arrive together and are served in one batch (one whisper pass, one UNet
+ VAE pass); the results equal what the engines give for each session alone (to one level).
Weights: conftest's rule-filled UNet and VAE and a random whisper-tiny, so the faces are noise:
the test checks structure and exactness, not looks. MuseTalk costs ~10 s a frame on this
CPU (VAE decode included), so each session asks for one frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.asr import make_feature_engine
from deployments.avatar.assets import load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.deployment import AvatarRenderer
from deployments.avatar.lipsync import make_engine
from deployments.avatar.types import RenderRequest
from deployments.common.features import pcm_samples_for

pytestmark = pytest.mark.integration

AVATAR_ID = "mt"
SESSIONS = 2
BATCH_WAIT_S = 1.0  # both sessions' calls land in one batch even on a busy 2-core box


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, musetalk_models: Path) -> Path:
    root = tmp_path_factory.mktemp("avatars")
    build_avatar(AVATAR_ID, astronaut=True, out_dir=root, face_size=256, idle_seconds=0.08,
                 model="musetalk", vae_dir=musetalk_models / "sd-vae-ft-mse", progress=False)
    return root


@pytest.fixture(scope="module")
def renderer(data_dir: Path, musetalk_models: Path, whisper_dir: Path) -> Iterator[DeploymentHandle]:
    batching = {"max_batch_size": SESSIONS, "batch_wait_timeout_s": BATCH_WAIT_S}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield serve.run(AvatarRenderer.options(user_config=batching).bind(
            data_dir=str(data_dir), model="musetalk", device="cpu", feature_model_dir=str(whisper_dir),
            checkpoint=str(musetalk_models / "musetalkV15" / "unet.pth")), name="mt-renderer", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_sessions_share_batches_and_get_their_own_frames(
    renderer: DeploymentHandle, data_dir: Path, musetalk_models: Path, whisper_dir: Path,
) -> None:
    rng = np.random.default_rng(0)
    pcms = [(0.1 * rng.standard_normal(pcm_samples_for(1))).astype(np.float32) for _ in range(SESSIONS)]
    # The prompts the renderer computes for itself, made here with the same engine, one by one.
    prompts = [make_feature_engine("whisper", str(whisper_dir)).batch([p], [1])[0] for p in pcms]
    assert prompts[0].shape == (1, 50, 384)

    reqs = [RenderRequest(AVATAR_ID, (i,), pcms[i]) for i in range(SESSIONS)]
    results = [r.result(timeout_s=600) for r in [renderer.render.remote(q) for q in reqs]]
    stats = renderer.stats.remote().result(timeout_s=30)
    assert stats["largest_batch"] == SESSIONS and stats["frames"] == SESSIONS, stats

    avatar = load_avatar(data_dir / AVATAR_ID, full_frames=False, latents=True)
    engine = make_engine("musetalk", face_size=256, checkpoint=str(musetalk_models / "musetalkV15" / "unet.pth"))
    for i, res in enumerate(results):
        assert res.crops.shape == (1, 256, 256, 3) and res.crops.dtype == np.uint8
        alone = engine.render(avatar.latents[i:i + 1], prompts[i])
        assert np.abs(res.crops.astype(np.int16) - alone).max() <= 1
    assert not np.array_equal(results[0].crops, results[1].crops)  # each session got its own frame
