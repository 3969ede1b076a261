"""Parity of ``deployments.avatar.models.musetalk`` with MuseTalk v1.5's UNet and PositionalEncoding.

Goldens: ``tests/parity/musetalk.{npz,json}`` (kit README §4.4), made by running upstream
TMElyralab/MuseTalk 0a89dec45a0192b824e3cf4daf96c239440c5ed8 (diffusers 0.30.2
``UNet2DConditionModel`` with the musetalk.json config) on deterministic rule-filled weights.

The full-numerics test loads all 849,947,844 rule-filled UNet parameters (3.4 GB in float32,
written once as a bare ``unet.pth`` by conftest's ``musetalk_models``) through the real registry,
so it takes tens of seconds and about 7 GB of memory. Tests that only need names, shapes or error paths build the network on the
``meta`` device, which allocates nothing and skips the 15 s random initialisation.
"""

from __future__ import annotations

import gc
import json
import re
import resource
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from deployments.avatar.models import CheckpointError, load_model
from deployments.avatar.models.musetalk import (
    EXPECTED_CONFIG_FILE,
    MUSETALK_V15_UNET_CONFIG,
    MuseTalkUNet,
    PositionalEncoding,
)

pytestmark = pytest.mark.unit

PARITY_TOL = 1e-4  # the kit's float32 tolerance (upstream f32-vs-f64 noise floor is 6.3e-6)
# The sinusoid and the prompt are a handful of float32 ops, but torch's vectorised sin/cos of
# arguments up to ~60 rad differ by an ulp or two across CPUs (1.9e-6 on one machine, 0 on
# another): a few ulps still tells a wrong formula (errors of 1e-2 and more) from a right one.
PE_TOL = 5e-6
TRACE_REL_TOL = 1e-4  # module_trace statistics are compared loosely (json's advice)
TRACE_DEPTH = 4  # module_trace covers UNet modules up to this name depth
PEAK_RSS_LIMIT_GB = 12.0  # the fill/save/load path must stay well under 16 GB
EXPECTED_CHECKPOINT = "models/musetalkV15/unet.pth"


@pytest.fixture(scope="module")
def meta(parity_dir: Path) -> dict[str, Any]:
    """The kit's musetalk.json."""
    return json.loads((parity_dir / "musetalk.json").read_text())


@pytest.fixture(scope="module")
def arrays(parity_dir: Path) -> dict[str, np.ndarray]:
    """The kit's musetalk.npz, read eagerly."""
    with np.load(parity_dir / "musetalk.npz") as z:
        return {k: z[k] for k in z.files}



def meta_model() -> MuseTalkUNet:
    """The network on the meta device: real names and shapes, no memory, no random init."""
    with torch.device("meta"):
        return MuseTalkUNet()


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


# --- configuration and names -------------------------------------------------------------------


def test_config_constant_is_kit_musetalk_json(meta: dict[str, Any]) -> None:
    published = {k: v for k, v in meta["upstream"]["musetalk_json"].items() if not k.startswith("_")}
    assert published == meta["upstream"]["constructor_args"]
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in MUSETALK_V15_UNET_CONFIG.items()}
    assert as_lists == published


def test_state_dict_names_and_shapes_match_upstream(meta: dict[str, Any]) -> None:
    model = meta_model()
    bare = model.checkpoint_target().state_dict()
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in bare.items()]
    upstream = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in meta["state_dict"]["entries"]]
    assert len(upstream) == meta["state_dict"]["n_entries"] == 686
    # Order too: diffusers registers modules in the same order, and it makes a diff readable.
    assert ours == upstream
    assert sum(p.numel() for p in model.unet.parameters()) == meta["state_dict"]["total_parameter_count"]
    # The sinusoid table is rebuilt in __init__ and never in a checkpoint (README §1).
    assert not any(k == "pe" or k.endswith(".pe") for k in model.state_dict())
    assert set(model.state_dict()) == {f"unet.{k}" for k in bare}
    assert [name for name, _ in model.named_buffers()] == ["pe.pe"]


# --- positional encoding -----------------------------------------------------------------------


def test_positional_encoding_matches_golden(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    pe = PositionalEncoding(d_model=384, max_len=5000)
    assert pe.pe.dtype == torch.float32 and tuple(pe.pe.shape) == tuple(meta["positional_encoding_state_dict"][0]["shape"])
    assert pe.state_dict() == {}
    table_err = np.abs(pe.pe[0, :64].numpy() - arrays["pe_first_64_positions"]).max()
    assert table_err <= PE_TOL, f"pe[0, :64] max abs error {table_err:.3g}"
    with torch.no_grad():
        prompt = pe(torch.from_numpy(arrays["input_audio"])).numpy()
    prompt_err = np.abs(prompt - arrays["audio_prompt_after_pe"]).max()
    assert prompt_err <= PE_TOL, f"audio_prompt_after_pe max abs error {prompt_err:.3g}"


def test_inputs_follow_the_fill_rule(weights_rule: ModuleType, arrays: dict[str, np.ndarray]) -> None:
    # Guards the rule import: if these differ, every weight below would be wrong too.
    for name, key in (("input.latent", "input_latent"), ("input.audio", "input_audio")):
        np.testing.assert_array_equal(weights_rule.tensor(name, arrays[key].shape, 0.0, 1.0), arrays[key])


# --- full numerics through the real loader -----------------------------------------------------


def trace_hooks(model: MuseTalkUNet, records: list[tuple[str, tuple[int, ...], float, float]]) -> list[Any]:
    """Forward hooks recording (name, shape, mean, absmax) for UNet modules up to TRACE_DEPTH."""
    handles = []
    for name, module in model.unet.named_modules():
        if name and name.count(".") < TRACE_DEPTH:
            def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                # Blocks return tuples (hidden states first) or diffusers outputs (`.sample`).
                out = getattr(out, "sample", out)
                if isinstance(out, tuple) and out:
                    out = out[0]
                if isinstance(out, torch.Tensor):
                    o = out.detach().double()
                    records.append((name, tuple(out.shape), o.mean().item(), o.abs().max().item()))
            handles.append(module.register_forward_hook(hook))
    return handles


def first_trace_divergence(records: list[tuple[str, tuple[int, ...], float, float]], meta: dict[str, Any]) -> str:
    """The first module whose output statistics differ from upstream's module_trace, for messages."""
    seen: dict[str, int] = {}
    ours: dict[tuple[str, int], tuple[tuple[int, ...], float, float]] = {}
    for name, shape, mean, absmax in records:
        ours[(name, seen.setdefault(name, 0))] = (shape, mean, absmax)
        seen[name] += 1
    count: dict[str, int] = {}
    for entry in meta["module_trace"]["entries"]:
        name = entry["module"]
        idx = count.setdefault(name, 0)
        count[name] += 1
        if (name, idx) not in ours:  # e.g. diffusers 0.30 shares one SiLU for time_embedding.act and conv_act
            continue
        shape, mean, absmax = ours[(name, idx)]
        scale = max(1.0, abs(entry["absmax"]))
        if (shape != tuple(entry["shape"]) or abs(mean - entry["mean"]) > TRACE_REL_TOL * scale
                or abs(absmax - entry["absmax"]) > TRACE_REL_TOL * scale):
            return (f"first divergence at {name} (#{idx}): ours shape {shape} mean {mean:.6g} absmax {absmax:.6g}, "
                    f"upstream shape {tuple(entry['shape'])} mean {entry['mean']:.6g} absmax {entry['absmax']:.6g}")
    return "module_trace statistics agree"


def test_rule_weights_through_load_model_match_golden(
    musetalk_models: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray],
) -> None:
    # conftest's `musetalk_models` fills every tensor by the rule and saves the bare unet.pth.
    gc.collect()
    t1 = time.perf_counter()
    model = load_model("musetalk", musetalk_models / "musetalkV15" / "unet.pth")
    t2 = time.perf_counter()
    assert isinstance(model, MuseTalkUNet) and not model.training

    latent, audio = torch.from_numpy(arrays["input_latent"]), torch.from_numpy(arrays["input_audio"])
    with torch.inference_mode():
        out = model(latent, audio)
    t3 = time.perf_counter()

    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 4, 32, 32)
    err = float(np.abs(out.numpy() - arrays["output"]).max())
    peak = peak_rss_gb()
    timings = (f"load_model {t2 - t1:.1f}s, forward {t3 - t2:.1f}s, "
               f"peak RSS {peak:.1f} GB, max abs error {err:.3g}")
    print(f"\nmusetalk parity: {timings}")
    if err > PARITY_TOL:
        # Only on failure: a second, hooked forward says where the mismatch starts (hooks double it).
        records: list[tuple[str, tuple[int, ...], float, float]] = []
        handles = trace_hooks(model, records)
        with torch.inference_mode():
            model(latent, audio)
        for handle in handles:
            handle.remove()
        pytest.fail(f"output max abs error {err:.3g} > {PARITY_TOL} ({timings}); "
                    + first_trace_divergence(records, meta))
    assert peak < PEAK_RSS_LIMIT_GB, f"peak RSS {peak:.1f} GB ({timings})"


# --- errors -----------------------------------------------------------------------------------
# load_model builds the network before reading the file; on the meta device that costs nothing,
# and both failures below happen before any tensor would be copied into it.


def test_missing_checkpoint_names_expected_file(tmp_path: Path) -> None:
    with torch.device("meta"), pytest.raises(CheckpointError, match=re.escape(EXPECTED_CHECKPOINT)) as info:
        load_model("musetalk", tmp_path / "unet.pth")
    assert "not found" in str(info.value)


def test_unreadable_checkpoint_names_expected_file(tmp_path: Path) -> None:
    path = tmp_path / "unet.pth"
    path.write_bytes(b"not a torch file")
    with torch.device("meta"), pytest.raises(CheckpointError, match=re.escape(EXPECTED_CHECKPOINT)):
        load_model("musetalk", path)


def test_wrong_keys_name_expected_file_and_keys(tmp_path: Path, meta: dict[str, Any]) -> None:
    # A plausible mistake: a state dict of MuseTalk's wrapper class (keys under `model.`), with a
    # Stable Diffusion conv_in (4 input channels instead of 8). Tiny tensors: only names matter.
    entries = meta["state_dict"]["entries"]
    state = {f"model.{e['key']}": torch.zeros(1) for e in entries[1:]}
    state["conv_in.weight"] = torch.zeros(320, 4, 3, 3)
    path = tmp_path / "unet.pth"
    torch.save(state, path)
    with torch.device("meta"), pytest.raises(CheckpointError, match=re.escape(EXPECTED_CHECKPOINT)) as info:
        load_model("musetalk", path)
    msg = str(info.value)
    assert "685 missing" in msg and "685 unexpected" in msg and "model.conv_in.bias" in msg
    assert "conv_in.weight (320, 4, 3, 3) != (320, 8, 3, 3)" in msg


# --- musetalk.json --------------------------------------------------------------------------------


def test_from_config_file_accepts_published_json(tmp_path: Path, meta: dict[str, Any]) -> None:
    path = tmp_path / "musetalk.json"
    path.write_text(json.dumps(meta["upstream"]["musetalk_json"]))  # with its '_' metadata keys
    with torch.device("meta"):
        model = MuseTalkUNet.from_config_file(path)
    assert isinstance(model, MuseTalkUNet) and model.unet.config.cross_attention_dim == 384


def test_from_config_file_rejects_other_configs(tmp_path: Path, meta: dict[str, Any]) -> None:
    config = dict(meta["upstream"]["musetalk_json"], cross_attention_dim=768, use_linear_projection=True)
    path = tmp_path / "musetalk.json"
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="cross_attention_dim: 768 != 384") as info:
        MuseTalkUNet.from_config_file(path)
    assert "use_linear_projection: unexpected key" in str(info.value)
    assert EXPECTED_CONFIG_FILE in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        MuseTalkUNet.from_config_file(tmp_path / "absent.json")
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        MuseTalkUNet.from_config_file(path)
