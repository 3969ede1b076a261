"""Ultralight with HuBERT features runs the whole pipeline, on the CPU, with deterministic weights.

The avatar is built for Ultralight (168 px crops) and its `ultralight.pth` (the parity kit's
rule-filled weights, LiveTalking's legacy bare state dict) sits in the avatar's folder, where the
renderer finds it. The HuBERT folder is built offline from a config in
`facebook/hubert-large-ls960-ft`'s layout (as tests/unit/test_hubert_features.py does) with
HuBERT-large's width (hidden 1024, 16 heads, FFN 4096, 512-channel layer-norm convs, so windows
are the (16, 32, 32) the engine and the UNet expect) but 2 of its 24 transformer layers: all 24
take ~390 ms per 160 ms chunk on 2 cores and a 1.3 GB folder, 2 take ~60 ms.

With untrained weights the mouths are noise, so this asserts structure: speech audio arrives,
the renderer computed "hubert" windows and rendered frames, video keeps its rate, both networks
ran on every core of the renderer replica (not Ray's one thread), and frames have the avatar's
size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ray import serve

from deployments.avatar.builder import build_avatar
from deployments.common.models import lipsync_model
from deployments.common.threads import available_cores
from serve_app import AppArgs

pytestmark = pytest.mark.integration
PORT = 8125
AVATAR_ID = "ultraface"
HUBERT_LARGE_WIDTH = {"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096,
                      "feat_extract_norm": "layer", "do_stable_layer_norm": True}
HUBERT_LAYERS = 2  # of hubert-large's 24: the same windows' shape, real time on 2 cores


@pytest.fixture(scope="module")
def ultralight_data_dir(tmp_path_factory, parity_dir, weights_rule):
    """An Ultralight avatar with the kit's weights in LiveTalking's layout (legacy keys, bare dict)."""
    root = tmp_path_factory.mktemp("avatars")
    folder = build_avatar(AVATAR_ID, astronaut=True, out_dir=root, face_size=168, idle_seconds=1.0,
                          model="ultralight_hubert", progress=False)
    entries = json.loads((parity_dir / "ultralight_hubert.json").read_text())["state_dict"]["entries"]
    state = {
        e["legacy_key"]: torch.from_numpy(weights_rule.state_dict_value(
            e["legacy_key"], tuple(e["shape"]), np.int64 if e["dtype"] == "int64" else np.float32))
        for e in entries
    }
    torch.save(state, folder / lipsync_model("ultralight").avatar_checkpoint)
    return root


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    """A random-weight HuBERT in hubert-large-ls960-ft's folder layout (see the module docstring)."""
    from transformers import HubertConfig, HubertForCTC, Wav2Vec2FeatureExtractor

    path = tmp_path_factory.mktemp("hubert")
    torch.manual_seed(0)
    HubertForCTC(HubertConfig(vocab_size=32, num_hidden_layers=HUBERT_LAYERS, **HUBERT_LARGE_WIDTH)
                 ).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def app_url(start_app, ultralight_data_dir, hubert_dir):
    cfg = AppArgs(data_dir=str(ultralight_data_dir), avatar_id=AVATAR_ID, model="ultralight_hubert",
                  feature_model_dirs={"hubert": str(hubert_dir)}, ice_host_addresses=["127.0.0.1"],
                  render_late_s=60)  # not real time on this CPU: seconds per chunk, not the 1 s default
    return start_app(cfg, PORT)


async def test_ultralight_hubert_frames_flow_through_the_whole_pipeline(app_url, say_and_render):
    stats = await say_and_render(app_url, AVATAR_ID)  # speech, 8+ frames, 20-30 fps, the frame size
    assert stats["feature_kind"] == "hubert", stats
    # Ray gives this num_cpus-0 replica OMP_NUM_THREADS=1; it took every core instead.
    assert stats["torch_threads"] == available_cores(), stats
    info = await serve.get_deployment_handle("AvatarRenderer", app_name="avatar").avatar_info.remote(AVATAR_ID)
    assert info["face_size"] == 168 and info["model"] == "ultralight_hubert"
