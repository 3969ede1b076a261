"""Selecting a real lip-sync model runs the whole pipeline, on the CPU, with rule-filled weights.

With deterministic (not trained) weights the mouths are noise, so this asserts structure: the
app starts with the checkpoint, video keeps flowing at 25 fps, speech audio arrives, and the
renderer produced frames of the avatar's crop size from the model's own features.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import ray
import torch
from ray import serve

from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.avatar.models import build_model
from serve_app import AppArgs, bind_graph

pytestmark = pytest.mark.integration
PORT = 8124


@pytest.fixture(scope="module")
def wav2lip96_checkpoint(tmp_path_factory, weights_rule):
    """The parity kit's deterministic weights, saved in Wav2Lip's published layout."""
    state = {
        "module." + k: torch.from_numpy(weights_rule.state_dict_value(
            k, tuple(v.shape), np.int64 if v.dtype == torch.int64 else np.float32))
        for k, v in build_model("wav2lip96").state_dict().items()
    }
    path = tmp_path_factory.mktemp("models") / "wav2lip.pth"
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def app_url(avatar_data_dir, wav2lip96_checkpoint):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    cfg = AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", model="wav2lip96",
                  checkpoint=str(wav2lip96_checkpoint), ice_host_addresses=["127.0.0.1"])
    serve.run(bind_graph(cfg), name="avatar", route_prefix="/")
    yield f"http://127.0.0.1:{PORT}"
    serve.shutdown()
    ray.shutdown()


async def test_wav2lip96_frames_flow_through_the_whole_pipeline(app_url):
    client = AvatarClient(app_url)
    try:
        await client.connect()
        t_send = time.monotonic()
        res = await client.post("/human", text="Hello there.", type="echo")
        assert res.status_code == 200, res.text
        renderer = serve.get_deployment_handle("AvatarRenderer", app_name="avatar")
        for _ in range(120):  # wav2lip96 renders a few frames per second on this CPU
            stats = await renderer.stats.remote()
            if stats["frames"] >= 8 and analysis.first_speech_after(client.rec, t_send):
                break
            await asyncio.sleep(0.5)
        assert stats["frames"] >= 8, stats
        assert analysis.first_speech_after(client.rec, t_send) is not None, "speech audio arrived"
        fps, gap = analysis.video_rate(client.rec, time.monotonic() - 3.0, time.monotonic())
        assert 20 <= fps <= 30, f"video kept its rate while the model rendered: {fps:.1f} fps"
        info = await renderer.avatar_info.remote("testface")
        assert client.rec.last_frame.shape[:2] == tuple(info["frame_size"])
    finally:
        await client.close()
