"""Parity of ``deployments.avatar.models.ultralight`` with Ultralight-Digital-Human ``unet.Model``.

Goldens: ``tests/parity/ultralight_{hubert,wenet}.{npz,json}`` (kit README §4.3), made by running
upstream anliyuan/Ultralight-Digital-Human 5aa8b5a8 ``Model(6, mode)`` on CPU with weights from
the kit's fill rule. ``output`` was made with weights filled by the head key names,
``output_legacy_keys`` with weights filled by the legacy (LiveTalking) names. Every checkpoint
here goes through ``load_model``, so the key mapping and both file layouts are tested too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from deployments.avatar.models import load_model
from deployments.avatar.models.ultralight import Ultralight
from deployments.common.errors import CheckpointError
from deployments.common.models import lipsync_model

pytestmark = pytest.mark.unit

MODES = ("hubert", "wenet")
PARITY_TOL = 1e-4  # the kit's float32 tolerance (README §3)



@pytest.fixture(scope="module")
def goldens(parity_dir: Path) -> dict[str, tuple[dict[str, Any], Any]]:
    """Per mode: (json metadata, npz arrays)."""
    return {m: (json.loads((parity_dir / f"ultralight_{m}.json").read_text()),
                np.load(parity_dir / f"ultralight_{m}.npz")) for m in MODES}


@pytest.fixture(scope="module")
def filled(weights_rule: ModuleType, goldens: dict[str, tuple[dict[str, Any], Any]]):
    """``fill(mode, column)``: the rule's tensors for every entry, keyed and seeded by `column`.

    The rule seeds each tensor with its name, so filling by ``key`` (head) and by ``legacy_key``
    gives different weights for the renamed entries. Cached: each fill is ~12M values.
    """
    cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def fill(mode: str, column: str) -> dict[str, torch.Tensor]:
        if (mode, column) not in cache:
            entries = goldens[mode][0]["state_dict"]["entries"]
            cache[mode, column] = {
                e[column]: torch.from_numpy(weights_rule.state_dict_value(
                    e[column], tuple(e["shape"]), np.int64 if e["dtype"] == "int64" else np.float32))
                for e in entries}
        return dict(cache[mode, column])

    return fill


def _max_err(got: torch.Tensor, want: np.ndarray) -> float:
    assert tuple(got.shape) == want.shape, f"shape {tuple(got.shape)} != {want.shape}"
    return float(np.abs(got.numpy() - want).max())


def _run(model: torch.nn.Module, meta: dict[str, Any], arrays: Any) -> torch.Tensor:
    """Call the model with the kit inputs in the json's ``forward_call`` order (image first)."""
    names = re.search(r"model\((.*)\)", meta["forward_call"]).group(1).split(",")
    with torch.no_grad():
        return model(*(torch.from_numpy(arrays[n.strip()]) for n in names))


@pytest.mark.parametrize("mode", MODES)
def test_head_names_shapes_and_order_match_upstream(mode: str, goldens) -> None:
    meta, _ = goldens[mode]
    entries = meta["state_dict"]["entries"]
    model = Ultralight(mode)
    own = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert own == [(e["key"], tuple(e["shape"])) for e in entries]
    assert sum(p.numel() for p in model.parameters()) == meta["state_dict"]["total_parameter_count"]
    # Legacy names map onto head names; head names pass through unchanged.
    assert [model.checkpoint_key(e["legacy_key"]) for e in entries] == [e["key"] for e in entries]
    assert [model.checkpoint_key(e["key"]) for e in entries] == [e["key"] for e in entries]


@pytest.mark.parametrize("mode", MODES)
def test_head_checkpoint_matches_output_and_audio_branch(mode: str, goldens, filled,
                                                         tmp_path: Path) -> None:
    meta, arrays = goldens[mode]
    path = tmp_path / "last.pth"
    # The layout of head train.py's save_checkpoint().
    torch.save({"epoch": 1, "model": filled(mode, "key"), "optimizer": {}}, path)
    model = load_model(f"ultralight_{mode}", path)
    assert not model.training

    err = _max_err(_run(model, meta, arrays), arrays["output"])
    assert err <= PARITY_TOL, f"{mode} output: max abs error {err:.3g} > {PARITY_TOL}"
    # The audio changes `output` by < 1e-3, so check the branch on its own.
    with torch.no_grad():
        audio = model.audio_branch(torch.from_numpy(arrays["input_audio"]))
    err = _max_err(audio, arrays["audio_branch_output"])
    assert err <= PARITY_TOL, f"{mode} audio_branch_output: max abs error {err:.3g} > {PARITY_TOL}"


@pytest.mark.parametrize("mode", MODES)
def test_bare_legacy_checkpoint_matches_output_legacy_keys(mode: str, goldens, filled,
                                                           tmp_path: Path) -> None:
    meta, arrays = goldens[mode]
    path = tmp_path / "ultralight.pth"
    state = filled(mode, "legacy_key")
    assert any(k.startswith("inc.inconv.0.") for k in state)  # really the legacy layout
    torch.save(state, path)  # LiveTalking's data/avatars/<id>/ultralight.pth: a bare state dict
    model = load_model(f"ultralight_{mode}", path)

    err = _max_err(_run(model, meta, arrays), arrays["output_legacy_keys"])
    assert err <= PARITY_TOL, f"{mode} output_legacy_keys: max abs error {err:.3g} > {PARITY_TOL}"


def test_hubert_weights_do_not_load_into_wenet(filled, tmp_path: Path) -> None:
    path = tmp_path / "hubert.pth"
    torch.save(filled("hubert", "key"), path)
    with pytest.raises(CheckpointError) as info:
        load_model("ultralight_wenet", path)
    msg = str(info.value)
    # Same key names, other shapes: the error names the file to supply and the first offender.
    assert lipsync_model("ultralight_wenet").checkpoint_layout in msg and str(path) in msg
    assert "audio_model.conv1.conv.0.weight (32, 16, 1, 1) != (256, 128, 1, 1)" in msg, msg


def test_missing_and_unexpected_keys_are_named(filled, tmp_path: Path) -> None:
    path = tmp_path / "partial.pth"
    state = filled("hubert", "key")
    del state["outc.conv.bias"]
    state["outc.conv.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model("ultralight_hubert", path)
    msg = str(info.value)
    assert lipsync_model("ultralight_hubert").checkpoint_layout in msg
    assert "1 missing, first ['outc.conv.bias']" in msg, msg
    assert "1 unexpected, first ['outc.conv.extra']" in msg, msg


def test_missing_file_names_the_expected_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "ultralight.pth"
    with pytest.raises(CheckpointError, match="checkpoint not found") as info:
        load_model("ultralight_hubert", path)
    assert lipsync_model("ultralight_hubert").checkpoint_layout in str(info.value)
    assert str(path) in str(info.value)
