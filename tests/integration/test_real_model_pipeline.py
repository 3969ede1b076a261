"""Selecting a real lip-sync model runs the whole pipeline, on the CPU, with rule-filled weights.

With deterministic (not trained) weights the mouths are noise, so this asserts structure: the
app starts with the checkpoint, video keeps flowing at 25 fps, speech audio arrives, and the
renderer produced frames of the avatar's crop size from the model's own features.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.avatar.models import build_model
from deployments.common.threads import available_cores
from serve_app import AppArgs

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
def app_url(start_app, avatar_data_dir, wav2lip96_checkpoint):
    return start_app(AppArgs(data_dir=str(avatar_data_dir), avatar_id="testface", model="wav2lip96",
                             checkpoint=str(wav2lip96_checkpoint), ice_host_addresses=["127.0.0.1"],
                             render_late_s=10), PORT)  # CPU torch under a loaded test run: seconds late at worst


async def test_wav2lip96_frames_flow_through_the_whole_pipeline(app_url, say_and_render):
    stats = await say_and_render(app_url, "testface")  # speech, 8+ frames, 20-30 fps, the frame size
    assert stats["torch_threads"] == available_cores(), "not Ray's OMP_NUM_THREADS=1"
