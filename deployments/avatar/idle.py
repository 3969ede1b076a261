"""Synthesise a seamless idle loop (breathing, slight sway, blinks) from one still image.

All motion is periodic over the loop, so both wrap-around and LiveTalking's ping-pong
cycling are seamless, and it stays within `MAX_MOTION_PX` so one fixed face box stays valid
for every frame. The motion is weighted by a soft mask around the person, so the background
far from the head and body stays still instead of shaking like a camera.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from deployments.common.timing import FPS

DEFAULT_IDLE_S = 3.0
# Peak displacement of each motion component at the face, in pixels (their sum is the bound).
BREATH_PX = 0.6  # vertical scale about the bottom row: shoulders and head rise slightly
SWAY_X_PX = 0.6
SWAY_Y_PX = 0.3
TILT_PX = 0.5  # rotation about the neck, measured at the top of the face box
MAX_MOTION_PX = BREATH_PX + SWAY_X_PX + SWAY_Y_PX + TILT_PX  # 2.0
# Eyelid closure per frame of one blink (4 frames = 160 ms at 25 fps, a natural blink).
BLINK_CLOSURE = (0.45, 1.0, 0.75, 0.3)
BLINK_AT = (0.35, 0.8)  # loop fractions where blinks start; the second only in loops >= 2 s
TWO_BLINKS_MIN_FRAMES = 2 * FPS
LASH_DARKEN = 0.3  # the closed lid's lash line is darker than the skin it stretches
# Without a Haar eye hit: eye centres as fractions of the (x, y, w, h) face box.
FALLBACK_EYES = ((0.30, 0.40), (0.70, 0.40))
FaceBox = tuple[int, int, int, int]  # x, y, w, h (OpenCV's detector order)
Eye = tuple[float, float, float, float]  # centre x, centre y, half width, half height (px)


def find_eyes(image: np.ndarray, face: FaceBox) -> list[Eye]:
    """Two eyes in the upper face from the Haar eye cascade, else fixed face fractions."""
    x, y, w, h = face
    gray = cv2.cvtColor(image[y : y + int(h * 0.6), x : x + w], cv2.COLOR_BGR2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
    hits = cascade.detectMultiScale(gray, 1.1, 3, minSize=(max(8, w // 8),) * 2)
    hits = sorted((tuple(int(v) for v in b) for b in hits), key=lambda b: -b[2])[:2]
    if len(hits) == 2 and abs(hits[0][0] - hits[1][0]) > w // 5:
        # A Haar eye box includes brow and lashes: the eye itself is its middle third.
        return [
            (x + ex + ew / 2, y + ey + eh * 0.55, ew * 0.38, eh * 0.16) for ex, ey, ew, eh in hits
        ]
    return [(x + fx * w, y + fy * h, w * 0.11, h * 0.055) for fx, fy in FALLBACK_EYES]


def blink(image: np.ndarray, eyes: list[Eye], closure: float) -> np.ndarray:
    """Close the eyes by `closure` in [0, 1]: each upper eyelid is stretched down over its eye.

    Output row y above the moved lid edge samples the lid skin above the eye (stretched);
    rows below it sample the eye, compressed against the lower lid. The lid edge is arched
    (deepest in the middle) and the warp is continuous, identity at the region borders.
    """
    out = image.copy()
    for cx, cy, a, b in eyes:
        top, lid0, bottom = cy - 3.0 * b, cy - b, cy + 1.8 * b
        x0, x1 = max(0, math.floor(cx - 1.2 * a)), min(image.shape[1], math.ceil(cx + 1.2 * a) + 1)
        y0, y1 = max(0, math.floor(top)), min(image.shape[0], math.ceil(bottom) + 1)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        arch = np.sqrt(np.clip(1.0 - ((xs - cx) / (1.2 * a)) ** 2, 0.0, 1.0))
        lid = lid0 + closure * 2.0 * b * arch  # where the lid edge is drawn now
        above = top + (ys - top) * (lid0 - top) / np.maximum(lid - top, 1e-3)
        below = lid0 + (ys - lid) * (bottom - lid0) / np.maximum(bottom - lid, 1e-3)
        inside = (ys >= top) & (ys <= bottom)
        map_y = np.where(inside, np.where(ys < lid, above, below), ys).astype(np.float32)
        patch = cv2.remap(image, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lash = 1.0 - LASH_DARKEN * closure * arch * np.exp(-(((ys - lid) / max(b * 0.5, 0.7)) ** 2))
        out[y0:y1, x0:x1] = np.clip(patch * lash[..., None] + 0.5, 0, 255).astype(np.uint8)
    return out


def _person_weight(xs: np.ndarray, ys: np.ndarray, face: FaceBox) -> np.ndarray:
    """1 on the head and body below it, falling smoothly to 0 in the background."""
    x, y, w, h = face
    cx, cy = x + w / 2, y + h / 2
    horiz = np.exp(-0.5 * ((xs - cx) / (1.6 * w)) ** 2)
    vert = np.where(ys > cy, 1.0, np.exp(-0.5 * ((ys - cy) / (1.2 * h)) ** 2))
    return (horiz * vert).astype(np.float32)


def _motion_maps(
    xs: np.ndarray, ys: np.ndarray, face: FaceBox, phase: float, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Backward remap maps for one loop phase in [0, 2*pi): breathing, sway and tilt."""
    x, y, w, h = face
    bottom = xs.shape[0] - 1.0
    breath = BREATH_PX / max(bottom - y, 1.0) * 0.5 * (1.0 - math.cos(phase))
    pivot_x, pivot_y = x + w / 2, y + 1.2 * h  # roughly the neck
    tilt = TILT_PX / max(pivot_y - y, 1.0) * math.sin(phase + 1.9)  # radians
    dx = SWAY_X_PX * math.sin(phase + 0.7) - tilt * (ys - pivot_y)
    dy = -breath * (bottom - ys) + SWAY_Y_PX * math.sin(2 * phase) + tilt * (xs - pivot_x)
    # Backward map: the output pixel at p shows the input at p - d (motion d, small).
    return xs - weight * dx, ys - weight * dy


def blink_schedule(n_frames: int) -> dict[int, float]:
    """Frame index -> eyelid closure for the blinks of an `n_frames` loop."""
    starts = BLINK_AT if n_frames >= TWO_BLINKS_MIN_FRAMES else BLINK_AT[:1]
    sched: dict[int, float] = {}
    for frac in starts:
        s = int(round(frac * n_frames))
        for k, c in enumerate(BLINK_CLOSURE):
            if 0 < s + k < n_frames - 1:  # never on the loop's turning points
                sched[s + k] = c
    return sched


def synthesize_idle(
    image: np.ndarray, face: FaceBox, n_frames: int = round(DEFAULT_IDLE_S * FPS)
) -> np.ndarray:
    """Make an idle loop from a still BGR image.

    Args:
        image: (H, W, 3) uint8 BGR still.
        face: The face box (x, y, w, h) from the detector.
        n_frames: Loop length in frames (25 fps).

    Returns:
        (n_frames, H, W, 3) uint8 BGR frames.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float32)
    weight = _person_weight(xs, ys, face)
    eyes = find_eyes(image, face)
    closures = blink_schedule(n_frames)
    frames = np.empty((n_frames, *image.shape), np.uint8)
    for k in range(n_frames):
        src = blink(image, eyes, closures[k]) if k in closures else image
        map_x, map_y = _motion_maps(xs, ys, face, 2 * math.pi * k / n_frames, weight)
        frames[k] = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames
