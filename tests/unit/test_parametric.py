"""ParametricLipSync: silence is bit-exact, speech opens the mouth, batching changes nothing."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from deployments.avatar.parametric import ENERGY_BINS, ParametricLipSync

pytestmark = pytest.mark.unit

S = 128
SILENCE = -4.0


def _face(seed: int = 0) -> np.ndarray:
    """A smooth skin-like crop with darker lips, so warps visibly move pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S
    base = 150 + 40 * np.sin(6 * xx + 3 * yy)[..., None] + rng.normal(0, 6, (S, S, 3))
    lips = np.exp(-(((yy - 0.73) / 0.04) ** 2 + ((xx - 0.5) / 0.2) ** 2))[..., None]
    face = base * (1 - 0.5 * lips) + np.array([60.0, 60.0, 140.0]) * 0.5 * lips
    return np.clip(face, 0, 255).astype(np.uint8)


def _speech(level: float, n: int = 1, tilt: float = 0.0) -> np.ndarray:
    """Mel windows with the speech bins lifted `level` above silence (tilt: more mid, less low)."""
    f = np.full((n, 80, 16), SILENCE, np.float32)
    bins = np.arange(80)[ENERGY_BINS]
    f[:, bins, :] += level + tilt * (bins - 30)[None, :, None] / 30
    return np.clip(f, -4, 4)


@pytest.fixture(scope="module")
def lips() -> ParametricLipSync:
    return ParametricLipSync(S)


def test_silence_leaves_crops_bit_exact(lips: ParametricLipSync) -> None:
    crops = np.stack([_face(i) for i in range(3)])
    rng = np.random.default_rng(1)
    quiet = SILENCE + rng.uniform(0, 0.3, (3, 80, 16)).astype(np.float32)  # noise floor
    for feats in (np.full((3, 80, 16), SILENCE, np.float32), quiet):
        assert (lips.mouth_params(feats) == 0).all()
        out = lips.render(crops, feats)
        assert out is not crops and np.array_equal(out, crops)


def test_mouth_opens_monotonically_with_energy(lips: ParametricLipSync) -> None:
    levels = np.linspace(0, 5, 11)
    openness = [float(lips.mouth_params(_speech(lv))[0, 0]) for lv in levels]
    assert openness[0] == 0 and openness[-1] > 0.8
    assert all(b >= a for a, b in pairwise(openness))
    face = _face()[None]
    change = [np.abs(lips.render(face, _speech(lv)).astype(int) - face).sum() for lv in levels]
    assert change[0] == 0 and change[-1] > 0
    assert all(b >= a for a, b in pairwise(change))
    # The opening is dark: the mouth centre gets darker as it opens.
    centre = (slice(int(0.73 * S), int(0.73 * S) + 4), slice(S // 2 - 4, S // 2 + 4))
    assert lips.render(face, _speech(5.0))[0][centre].mean() < face[0][centre].mean() - 40


def test_width_follows_spectral_tilt(lips: ParametricLipSync) -> None:
    spread = lips.mouth_params(_speech(3.5, tilt=1.0))[0, 1]
    rounded = lips.mouth_params(_speech(3.5, tilt=-1.0))[0, 1]
    assert -1 <= rounded < 0 < spread <= 1


def test_lookahead_taper_opens_before_the_sound(lips: ParametricLipSync) -> None:
    onset = np.full((1, 80, 16), SILENCE, np.float32)
    onset[:, 10:50, 4:] = 1.0  # speech starts 50 ms after the frame's own audio
    later = np.full((1, 80, 16), SILENCE, np.float32)
    later[:, 10:50, 8:] = 1.0  # ... or 100 ms after: beyond the taper
    assert 0 < lips.mouth_params(onset)[0, 0] < 0.5
    assert lips.mouth_params(later)[0, 0] == 0


def test_batched_equals_unbatched(lips: ParametricLipSync) -> None:
    rng = np.random.default_rng(7)
    n = 13
    crops = np.stack([_face(i) for i in range(n)])
    feats = np.clip(SILENCE + rng.uniform(0, 6, (n, 80, 16)), -4, 4).astype(np.float32)
    feats[3] = SILENCE  # a silent frame inside the batch
    whole = lips.render(crops, feats)
    singles = np.concatenate([lips.render(crops[i : i + 1], feats[i : i + 1]) for i in range(n)])
    chunks = np.concatenate([lips.render(crops[i : i + 5], feats[i : i + 5]) for i in (0, 5, 10)])
    assert np.array_equal(whole, singles) and np.array_equal(whole, chunks)
    assert np.array_equal(whole[3], crops[3])


def test_changes_stay_in_the_mouth_region(lips: ParametricLipSync) -> None:
    r0, r1, c0, c1 = lips.region
    assert r0 > S // 2 and 0 < c0 < c1 < S  # lower face only
    face = _face()[None]
    out = lips.render(face, _speech(5.0, tilt=1.0))
    outside = np.ones((S, S), bool)
    outside[r0:r1, c0:c1] = False
    assert np.array_equal(out[0][outside], face[0][outside])
    changed = np.argwhere(np.any(out[0] != face[0], axis=-1))
    assert changed.size and changed[:, 0].min() >= r0


def test_inputs_are_never_written(lips: ParametricLipSync) -> None:
    crops, feats = _face()[None].copy(), _speech(4.0)
    crops.setflags(write=False)  # as Ray delivers large arrays
    feats.setflags(write=False)
    before = crops.copy()
    out = lips.render(crops, feats)
    assert out.flags.writeable and np.array_equal(crops, before)


def test_bad_inputs_are_rejected(lips: ParametricLipSync) -> None:
    face = _face()[None]
    with pytest.raises(ValueError, match="features must be"):
        lips.render(face, np.zeros((1, 80, 15), np.float32))
    with pytest.raises(ValueError, match="crops must be"):
        lips.render(face[:, :64], _speech(1.0))
    with pytest.raises(ValueError, match="1 crops but 2"):
        lips.render(face, _speech(1.0, n=2))
    with pytest.raises(ValueError, match="mouth_box"):
        ParametricLipSync(S, (0.5, 0.5, 0.7, 0.2))
