"""Parity of ``deployments.avatar.models.wav2lip`` with upstream Wav2Lip (96) and LiveTalking (256).

Goldens: ``tests/parity/wav2lip{96,256}.{npz,json}`` (kit README §2–§4.2), made by running the
upstream classes with every weight filled by the kit's fill rule
(``tests/parity/fill_rule.py``). The weights go through the real
loader (``load_model``) in the published checkpoint layout, so key names, the ``module.`` prefix
and the strict load are covered along with the numerics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from deployments.avatar.models import build_model, load_model
from deployments.common.errors import CheckpointError
from deployments.common.models import lipsync_model

pytestmark = pytest.mark.unit

MODELS = ("wav2lip96", "wav2lip256")
PARITY_TOL = 1e-4  # the kit's float32 tolerance; the upstream f32-vs-f64 floor is ~1e-6
LAYOUTS = ("module_prefix", "bare_keys")



class Case:
    """One network's kit files, rule-filled weights and checkpoint files (built lazily, once)."""

    def __init__(self, name: str, parity_dir: Path, rule: ModuleType, tmp: Path) -> None:
        self.name, self.rule, self.tmp = name, rule, tmp
        self.meta: dict[str, Any] = json.loads((parity_dir / f"{name}.json").read_text())
        self.arrays = dict(np.load(parity_dir / f"{name}.npz"))
        self.entries = [(e["key"], tuple(e["shape"])) for e in self.meta["state_dict"]["entries"]]
        self.loaded: dict[str, torch.nn.Module] = {}

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """Every upstream state_dict entry (json order, no prefix) filled by the rule."""
        fill = self.rule.state_dict_value
        return {e["key"]: torch.from_numpy(fill(e["key"], tuple(e["shape"]), np.dtype(e["dtype"])))
                for e in self.meta["state_dict"]["entries"]}

    def checkpoint(self, layout: str) -> Path:
        """The weights saved as ``save_checkpoint`` writes them, with or without ``module.``."""
        path = self.tmp / f"{self.name}_{layout}.pth"
        if not path.exists():
            prefix = "module." if layout == "module_prefix" else ""
            state = {prefix + k: v for k, v in self.state.items()}
            torch.save({"state_dict": state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path)
        return path

    def load(self, layout: str) -> torch.nn.Module:
        """``load_model`` on that checkpoint file, cached (a load costs about a second)."""
        if layout not in self.loaded:
            self.loaded[layout] = load_model(self.name, self.checkpoint(layout))
        return self.loaded[layout]


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """Use every core for the convolutions, then restore the process-wide setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cases(parity_dir: Path, weights_rule: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    rule = weights_rule
    tmp = tmp_path_factory.mktemp("wav2lip_ckpt")
    return {name: Case(name, parity_dir, rule, tmp) for name in MODELS}


def _errors(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error of ``output`` and the ``audio_embedding`` intermediate vs the goldens."""
    audio, face = torch.from_numpy(arrays["input_audio"]), torch.from_numpy(arrays["input_face"])
    with torch.no_grad():
        got = {"output": model(audio, face), "audio_embedding": model.audio_embedding(audio)}
    errors = {}
    for key, value in got.items():
        assert tuple(value.shape) == arrays[key].shape, f"{key}: {tuple(value.shape)} != {arrays[key].shape}"
        errors[key] = float(np.abs(value.numpy() - arrays[key]).max())
    return errors


def test_rule_reproduces_readme_vectors(cases: dict[str, Case]) -> None:
    # Guards the fill itself: a wrong rule would make every golden comparison meaningless.
    rule = cases["wav2lip96"].rule
    np.testing.assert_array_equal(rule.tensor("input.audio", (2, 1, 80, 16)).ravel()[:3],
                                  np.float32([-1.6044894456863403, 0.1681508868932724, 1.2362579107284546]))
    np.testing.assert_array_equal(cases["wav2lip96"].arrays["input_audio"], rule.tensor("input.audio", (2, 1, 80, 16)))


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_names_and_shapes_match_upstream(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    model = build_model(name)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert set(ours) == set(case.entries), (
        f"missing {sorted(set(case.entries) - set(ours))[:5]}, extra {sorted(set(ours) - set(case.entries))[:5]}")
    assert ours == case.entries, "same entries, different order than upstream"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == case.meta["state_dict"]["total_parameter_count"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_reproduces_goldens(cases: dict[str, Case], name: str, layout: str,
                                      record_property: Any) -> None:
    case = cases[name]
    model = case.load(layout)
    assert not model.training, "load_model must return an eval-mode model (BatchNorm running stats)"
    errors = _errors(model, case.arrays)
    report = ", ".join(f"{k} max|err| = {v:.3g}" for k, v in errors.items())
    for key, value in errors.items():  # kept in junit XML / shown with -s, to track the margin
        record_property(f"max_abs_error_{key}", value)
    print(f"{name} ({layout}): {report}")
    assert max(errors.values()) <= PARITY_TOL, f"{name} ({layout}): {report} (tolerance {PARITY_TOL})"


def test_wav2lip256_audio_branch_is_wav2lip96s(cases: dict[str, Case]) -> None:
    # README §4.2: same audio-encoder keys and weights, so the embeddings are the same array.
    np.testing.assert_array_equal(cases["wav2lip96"].arrays["audio_embedding"],
                                  cases["wav2lip256"].arrays["audio_embedding"])


def test_time_axis_fold_matches_per_frame_calls(cases: dict[str, Case]) -> None:
    case = cases["wav2lip96"]
    model = case.load("module_prefix")
    audio, face = torch.from_numpy(case.arrays["input_audio"]), torch.from_numpy(case.arrays["input_face"])
    # T=2: frame 0 as given, frame 1 with the batch reversed; (B,T,1,80,16) and (B,6,T,96,96).
    audio5, face5 = torch.stack([audio, audio.flip(0)], 1), torch.stack([face, face.flip(0)], 2)
    with torch.no_grad():
        out5, out4 = model(audio5, face5), model(audio, face)
    assert out5.shape == (2, 3, 2, 96, 96)
    torch.testing.assert_close(out5[:, :, 0], out4, rtol=0, atol=1e-6)
    torch.testing.assert_close(out5[:, :, 1], out4.flip(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("source", "target", "kind"), [
    ("wav2lip96", "wav2lip256", "missing"),
    ("wav2lip256", "wav2lip96", "unexpected"),
])
def test_wrong_checkpoint_names_expected_file_and_keys(
        cases: dict[str, Case], source: str, target: str, kind: str) -> None:
    src, dst = cases[source], cases[target]
    src_keys, dst_keys = {k for k, _ in src.entries}, {k for k, _ in dst.entries}
    first = next(k for k, _ in (dst.entries if kind == "missing" else src.entries)
                 if k not in (src_keys if kind == "missing" else dst_keys))
    with pytest.raises(CheckpointError) as info:
        load_model(target, src.checkpoint("module_prefix"))
    msg = str(info.value)
    assert lipsync_model(target).checkpoint_layout in msg and f"{kind}, first" in msg and first in msg, msg


def test_missing_checkpoint_names_expected_file(tmp_path: Path) -> None:
    path = tmp_path / "models" / "wav2lip.pth"
    with pytest.raises(CheckpointError) as info:
        load_model("wav2lip256", path)
    msg = str(info.value)
    assert lipsync_model("wav2lip256").checkpoint_layout in msg and str(path) in msg, msg
