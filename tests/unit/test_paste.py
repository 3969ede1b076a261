"""FeatheredPaster: soft edges, nothing outside the box changes, inputs stay untouched."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deployments.avatar.assets import Avatar
from deployments.avatar.paste import FeatheredPaster, feather_mask

pytestmark = pytest.mark.unit

H, W, S = 120, 160, 64
BOX = (30, 100, 40, 110)  # y1, y2, x1, x2: 70 x 70


def _avatar(n: int = 3, frame_hw: tuple[int, int] = (H, W), box: tuple = BOX) -> Avatar:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, (n, *frame_hw, 3), dtype=np.uint8)  # dark, noisy
    coords = np.array([box] * n, np.int32)
    coords[-1] = (box[0], box[1] - 6, box[2] + 2, box[3])  # another box size
    crops = np.zeros((n, S, S, 3), np.uint8)
    return Avatar("t", frames, crops, coords, {})


def test_mask_is_one_over_the_lower_face_and_zero_at_the_border() -> None:
    m = feather_mask(70, 70)
    assert m.shape == (70, 70) and m.dtype == np.float32
    assert m[45:60, 15:55].min() > 0.99  # mouth area: the crop wins
    border = np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]])
    assert border.max() < 0.02
    assert m[:15].max() < 0.01  # eyes and forehead keep the original pixels
    assert np.abs(np.diff(m, axis=0)).max() < 0.2 and np.abs(np.diff(m, axis=1)).max() < 0.2


def test_paste_is_feathered_and_confined() -> None:
    avatar = _avatar()
    paster = FeatheredPaster(avatar)
    frame = avatar.full_frames[0]
    white = np.full((S, S, 3), 255, np.uint8)
    out = paster.paste(frame, white, 0)
    y1, y2, x1, x2 = BOX
    outside = np.ones((H, W), bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], frame[outside])
    diff = out.astype(int) - frame
    assert diff[y1 + 45 : y1 + 60, x1 + 15 : x2 - 15].min() > 190  # solid inside
    # No seam: on the box's edge rows/cols the change is tiny.
    edges = np.concatenate([diff[y1], diff[y2 - 1], diff[:, x1], diff[:, x2 - 1]])
    assert np.abs(edges).max() <= 6


def test_inputs_are_not_modified() -> None:
    avatar = _avatar()
    paster = FeatheredPaster(avatar)
    frame = avatar.full_frames[2]
    frame.setflags(write=False)  # idle frames are shared between sessions
    crop = np.full((S, S, 3), 200, np.uint8)
    crop.setflags(write=False)
    before = frame.copy()
    out = paster.paste(frame, crop, 2)  # the second box size
    assert out is not frame and np.array_equal(frame, before)
    assert not np.array_equal(out, frame)


def test_errors_and_speed() -> None:
    avatar = _avatar(frame_hw=(512, 512), box=(66, 181, 166, 281))
    paster = FeatheredPaster(avatar)
    frame, crop = avatar.full_frames[0], np.full((S, S, 3), 90, np.uint8)
    with pytest.raises(IndexError, match="out of range"):
        paster.paste(frame, crop, 3)
    with pytest.raises(ValueError, match="do not match"):
        paster.paste(frame[:100], crop, 0)
    t0 = time.perf_counter()
    for _ in range(50):
        paster.paste(frame, crop, 0)
    per_frame_ms = (time.perf_counter() - t0) / 50 * 1e3
    assert per_frame_ms < 2.0 * 5  # budget 2 ms; slack for a noisy shared box
