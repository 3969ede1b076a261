"""Fixtures shared by every tier."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
KIT_DIR = REPO / "tests" / "parity"  # the parity kit's goldens, in the repo


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The parity kit's goldens, kept in the repo at `tests/parity` (see its README.md)."""
    path = KIT_DIR
    if not (path / "wav2lip96.npz").is_file():
        pytest.fail(f"parity goldens missing from {path}")
    return path


@pytest.fixture(scope="session")
def kit(parity_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The wav2lip_mel arrays and metadata."""
    meta = json.loads((parity_dir / "wav2lip_mel.json").read_text())
    return np.load(parity_dir / "wav2lip_mel.npz"), meta


@pytest.fixture(scope="session")
def weights_rule() -> ModuleType:
    """The kit's deterministic fill rule, re-implemented in `tests/parity/fill_rule.py`."""
    from tests.parity import fill_rule

    return fill_rule


def rule_state_dict(weights_rule: ModuleType, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Float32 tensors filled by the kit's rule, one per (upstream key, shape)."""
    import torch

    return {k: torch.from_numpy(weights_rule.state_dict_value(k, shape, np.float32))
            for k, shape in shapes.items()}


@pytest.fixture(scope="session")
def musetalk_models(weights_rule: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `models/` folder in LiveTalking's MuseTalk layout, with rule-filled weights:
    `musetalkV15/unet.pth` (bare UNet state dict, 3.4 GB), `musetalkV15/musetalk.json`, and the
    `sd-vae-ft-mse/` diffusers folder. Written once per run (about 30 s)."""
    import torch
    from diffusers import AutoencoderKL

    from deployments.avatar.models.musetalk import (
        MUSETALK_V15_UNET_CONFIG,
        MuseTalkUNet,
    )
    from deployments.avatar.models.vae import SD_VAE_FT_MSE_CONFIG

    root = tmp_path_factory.mktemp("models")
    (root / "musetalkV15").mkdir()
    with torch.device("meta"):  # names and shapes only: no memory, no random init
        shapes = {k: tuple(v.shape) for k, v in MuseTalkUNet().checkpoint_target().state_dict().items()}
    torch.save(rule_state_dict(weights_rule, shapes), root / "musetalkV15" / "unet.pth")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in MUSETALK_V15_UNET_CONFIG.items()}
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(config))
    vae = AutoencoderKL(**SD_VAE_FT_MSE_CONFIG)
    vae.load_state_dict(rule_state_dict(weights_rule, {k: tuple(v.shape) for k, v in vae.state_dict().items()}))
    vae.save_pretrained(root / "sd-vae-ft-mse")
    return root


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """whisper-tiny's encoder dims (d_model 384, 4 layers, 6 heads, 80 mel bins, 1500 positions;
    a tiny vocabulary: the decoder is dropped), random weights, saved with a default
    ``WhisperFeatureExtractor`` in the ``openai/whisper-tiny`` folder layout."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64, d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
        decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )
    path = tmp_path_factory.mktemp("whisper")
    WhisperForConditionalGeneration(config).save_pretrained(path)  # openai/whisper-tiny's class
    WhisperFeatureExtractor().save_pretrained(path)  # defaults: 80 log-mels, 30 s padding
    return path



_session_status: dict[str, int] = {}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with pytest's own status once every result is reported.

    Native libraries the tests load (Ray's core worker after several init/shutdown cycles, torch,
    onnxruntime, aiortc's codecs) have crashed in interpreter teardown after a fully green run
    (a segfault after the summary line); skipping that teardown keeps CI's verdict the tests'.
    """
    if "code" in _session_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session_status["code"])
