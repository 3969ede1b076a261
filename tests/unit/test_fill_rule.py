"""The in-repo fill rule (``tests/parity/fill_rule.py``) against the kit it re-implements.

Every parity golden assumes weights and inputs made by this rule, so it is checked three ways: the
kit's published test vectors (exact), a plain-Python big-integer version of the same recipe, and
the inputs stored in the npz files (bit for bit, and by the sha256 recorded in each json).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.parity import fill_rule

pytestmark = pytest.mark.unit

KIT = Path(fill_rule.__file__).resolve().parent
MODEL_JSONS = ["wav2lip96", "wav2lip256", "ultralight_hubert", "ultralight_wenet", "musetalk"]
ALL_JSONS = [*MODEL_JSONS, "wav2lip_mel"]

# The inputs' names and fills (kit README §1); "uniform" is the raw u.
INPUT_FILLS: dict[str, str | tuple[float, float]] = {
    "input.face": "uniform",
    "input.audio": (0.0, 1.0),
    "input.latent": (0.0, 1.0),
    "input.wav": (0.0, 0.1),
}


def _meta(name: str) -> dict:
    return json.loads((KIT / f"{name}.json").read_text())


def _u_reference(name: str, index: int) -> float:
    """The recipe with plain Python integers masked to 64 bits, one element at a time."""
    mask = (1 << 64) - 1
    x = (index + zlib.crc32(name.encode("utf-8")) * 0x9E3779B97F4A7C15) & mask
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & mask
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return (x >> 11) / 2**53


def _rule_input(rule_name: str, shape: tuple[int, ...]) -> np.ndarray:
    fill = INPUT_FILLS[rule_name]
    if fill == "uniform":
        return fill_rule.uniform01(rule_name, shape).astype(np.float32)
    return fill_rule.tensor(rule_name, shape, *fill)


def _stored_inputs() -> list[tuple[str, dict]]:
    """(json name, input record) for every rule-made input the kit stores."""
    out = []
    for name in ALL_JSONS:
        meta = _meta(name)
        for record in meta.get("inputs", [meta.get("golden_input")]):
            if record and "rule_name" in record:
                out.append((name, record))
    return out


# --- the README's test vectors -----------------------------------------------------------------

def test_crc32_seeds() -> None:
    assert fill_rule.seed("input.face") == 2194344239
    assert fill_rule.seed("input.audio") == 1627201605


def test_first_uniform_values() -> None:
    assert fill_rule.uniform01("input.face", (3,)).tolist() == [
        0.7523219893502419, 0.3193231700959138, 0.5357728656165515]
    assert fill_rule.uniform01("input.audio", (3,)).tolist() == [
        0.0368237987318617, 0.5485409787147909, 0.8568769112153739]


def test_float32_tensor_values() -> None:
    audio = fill_rule.tensor("input.audio", (2, 1, 80, 16))
    assert audio.dtype == np.float32 and audio.shape == (2, 1, 80, 16)
    np.testing.assert_array_equal(
        audio.ravel()[:3], np.float32([-1.6044894456863403, 0.1681508868932724, 1.2362579107284546]))
    wav = fill_rule.tensor("input.wav", (32000,), 0, 0.1)
    np.testing.assert_array_equal(
        wav[:3], np.float32([0.15466582775115967, -0.09445730596780777, -0.15333372354507446]))


def test_state_dict_vectors() -> None:
    conv = "face_encoder_blocks.0.0.conv_block.0.weight"
    spec = fill_rule.fill_spec(conv, (16, 6, 7, 7))
    assert spec == {"mean": 0.0, "std": 1 / math.sqrt(294)}
    assert spec["std"] == pytest.approx(0.0583211843519804, rel=1e-15)
    value = fill_rule.state_dict_value(conv, (16, 6, 7, 7), np.float32)
    assert value.dtype == np.float32 and value.shape == (16, 6, 7, 7)
    np.testing.assert_array_equal(
        value.ravel()[:3], np.float32([0.0019961802754551172, 0.04968954250216484, 0.09343097358942032]))
    var = fill_rule.state_dict_value("face_encoder_blocks.0.0.conv_block.1.running_var", (16,))
    np.testing.assert_array_equal(
        var[:3], np.float32([1.069745421409607, 0.8570343255996704, 0.8815761208534241]))


# --- the recipe itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["input.face", "input.wav", "audio_encoder.9.conv_block.0.weight", ""])
def test_matches_plain_integer_version(name: str) -> None:
    n = 300_000  # reaches well past where any uint64 product overflows
    u = fill_rule.uniform01(name, (n,))
    for i in [0, 1, 2, 3, 1000, 65_537, n - 2, n - 1]:
        assert u[i] == _u_reference(name, i), f"{name!r}[{i}]"
    assert u.dtype == np.float64 and 0.0 <= u.min() and u.max() < 1.0


def test_tensor_is_shape_independent_c_order() -> None:
    # The values depend only on the name and the flat index: the shape is a C-order reshape.
    flat = fill_rule.tensor("w", (24,), 0.5, 0.3, np.float64)
    np.testing.assert_array_equal(fill_rule.tensor("w", (2, 3, 4), 0.5, 0.3, np.float64), flat.reshape(2, 3, 4))
    np.testing.assert_array_equal(flat, 0.5 + 0.3 * (fill_rule.uniform01("w", 24) - 0.5) * math.sqrt(12))


@pytest.mark.parametrize(("key", "shape", "want"), [
    ("bn.num_batches_tracked", (), "zeros"),
    ("bn.running_var", (8,), {"mean": 1.0, "std": 0.1}),
    ("bn.running_mean", (8,), {"mean": 0.0, "std": 0.1}),
    ("norm.weight", (8,), {"mean": 1.0, "std": 0.1}),
    ("conv.bias", (8,), {"mean": 0.0, "std": 0.02}),
    ("odd.bias", (8, 4), {"mean": 0.0, "std": 0.02}),  # the bias line comes before the ndim line
    ("linear.weight", (8, 16), {"mean": 0.0, "std": 0.25}),
    ("pos_embed", (1, 4, 9), {"mean": 0.0, "std": 1 / 6}),
    ("scale", (8,), {"mean": 0.0, "std": 0.02}),
    ("scalar", (), {"mean": 0.0, "std": 0.02}),
])
def test_fill_table(key: str, shape: tuple[int, ...], want) -> None:
    assert fill_rule.fill_spec(key, shape) == want


def test_num_batches_tracked_is_int64_zero() -> None:
    value = fill_rule.state_dict_value("a.1.num_batches_tracked", (), np.int64)
    assert value.dtype == np.int64 and value.shape == () and value == 0


@pytest.mark.parametrize("name", MODEL_JSONS)
def test_fill_table_matches_every_kit_entry(name: str) -> None:
    # The json records the fill the kit used for each upstream key (and each legacy Ultralight key).
    entries = _meta(name)["state_dict"]["entries"]
    for e in entries:
        for column in ("key", "legacy_key"):
            if column in e:
                assert fill_rule.fill_spec(e[column], e["shape"]) == e["fill"], (column, e)


# --- the stored inputs -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "record"), _stored_inputs(),
                         ids=[f"{n}-{r['npz_key']}" for n, r in _stored_inputs()])
def test_stored_inputs_are_the_rule(name: str, record: dict) -> None:
    shape = tuple(record["shape"])
    ours = _rule_input(record["rule_name"], shape)
    assert ours.dtype == np.dtype(record["dtype"]) and ours.shape == shape
    assert hashlib.sha256(ours.tobytes()).hexdigest() == record["sha256_of_bytes"]
    with np.load(KIT / f"{name}.npz") as z:
        np.testing.assert_array_equal(ours, z[record["npz_key"]], strict=True)


def test_every_stored_input_is_covered() -> None:
    names = {(n, r["npz_key"]) for n, r in _stored_inputs()}
    assert {("wav2lip96", "input_face"), ("wav2lip96", "input_audio"), ("wav2lip_mel", "input_wav"),
            ("musetalk", "input_latent")} <= names
    assert len(names) == 11  # 2 per Wav2Lip/Ultralight network, 2 for MuseTalk, 1 for the mel


@pytest.mark.parametrize("name", ALL_JSONS)
def test_npz_arrays_match_recorded_sha256(name: str) -> None:
    # The copy in tests/parity is the kit as published: every array the json hashes is intact.
    meta = _meta(name)
    records = [r for section in ("inputs", "outputs", "intermediates") for r in meta.get(section) or []]
    records += [meta["golden_input"]] if "golden_input" in meta else []
    records = [r for r in records if isinstance(r, dict) and "sha256_of_bytes" in r]
    assert records
    with np.load(KIT / f"{name}.npz") as z:
        for r in records:
            array = z[r["npz_key"]]
            assert array.dtype == np.dtype(r["dtype"]) and list(array.shape) == r["shape"], r["npz_key"]
            assert hashlib.sha256(array.tobytes()).hexdigest() == r["sha256_of_bytes"], r["npz_key"]


# --- the fixtures the parity tests use -----------------------------------------------------------

def test_fixtures_use_the_in_repo_kit(parity_dir: Path, weights_rule: ModuleType) -> None:
    assert weights_rule is fill_rule
    repo = Path(__file__).resolve().parents[2]
    assert parity_dir.resolve() == repo / "tests" / "parity" == KIT
