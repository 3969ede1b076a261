"""MuseTalk runs the whole pipeline, on the CPU, with deterministic weights: whisper prompts, UNet
+ VAE decode in `AvatarRenderer`, MuseTalk's mask blending in `SessionHost`.

One MuseTalk frame takes seconds on 2 cores, so the session renders 2-frame chunks one at a time
(`chunk_frames: 2, lead_chunks: 1`) and the test waits for the first chunk only; idle frames keep
the video at 25 fps meanwhile. Weights: conftest's rule-filled UNet and VAE (the layout
LiveTalking users have in `models/`) and a random whisper-tiny, so the faces are noise: the test
asserts structure (speech arrives, frames flow at the rate and size, each part ran).
"""

from __future__ import annotations

import pytest
from ray import serve

from deployments.avatar.builder import build_avatar
from serve_app import AppArgs

pytestmark = pytest.mark.integration
PORT = 8126
AVATAR_ID = "museface"
FIRST_CHUNK_TIMEOUT_S = 300  # UNet load + whisper + 2 frames of UNet and VAE on a busy 2-core box


@pytest.fixture(scope="module")
def app_url(start_app, tmp_path_factory, musetalk_models, whisper_dir):
    root = tmp_path_factory.mktemp("avatars")
    build_avatar(AVATAR_ID, astronaut=True, out_dir=root, face_size=256, idle_seconds=0.2,
                 model="musetalk", vae_dir=musetalk_models / "sd-vae-ft-mse", progress=False)
    cfg = AppArgs(data_dir=str(root), avatar_id=AVATAR_ID, model="musetalk",
                  checkpoint=str(musetalk_models / "musetalkV15" / "unet.pth"),
                  feature_model_dirs={"whisper": str(whisper_dir)}, ice_host_addresses=["127.0.0.1"],
                  chunk_frames=2, lead_chunks=1, render_late_s=FIRST_CHUNK_TIMEOUT_S)  # seconds a chunk
    return start_app(cfg, PORT)


async def test_musetalk_frames_flow_through_the_whole_pipeline(app_url, say_and_render):
    stats = await say_and_render(app_url, AVATAR_ID, min_frames=2, timeout_s=FIRST_CHUNK_TIMEOUT_S)
    assert stats["feature_kind"] == "whisper", stats
    info = await serve.get_deployment_handle("AvatarRenderer", app_name="avatar").avatar_info.remote(AVATAR_ID)
    assert info["model"] == "musetalk" and info["face_size"] == 256 and stats["loads"] == 1
