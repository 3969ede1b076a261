"""Weight-free lip sync: open the avatar's own mouth in proportion to the speech energy.

Per frame, two numbers come from the Wav2Lip mel window: openness in [0, 1] and a width
factor in [-1, 1] (rounded "oo" < 0 < spread "ee"). The face crop's mouth region is then
warped with one `cv2.remap` (upper lip up a little, lower lip and jaw down, corners in or
out) and a dark mouth interior with a hint of upper teeth fills the opening.

Everything is computed per frame from that frame's inputs alone, with sums in a fixed order,
so a batch renders exactly what the frames would render one by one. Openness 0 leaves the
crop bit-exact, and nothing outside `region` ever changes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from deployments.avatar.assets import DEFAULT_MOUTH_BOX
from deployments.common.features import FEATURE_SHAPES

N_MELS, MEL_STEPS = FEATURE_SHAPES["mel"]  # one Wav2Lip window: 80 bins x 200 ms
MEL_FLOOR = -4.0  # silence
# Columns 0..3 are the frame's own 40 ms; the taper looks 30 ms ahead so the mouth moves
# smoothly (windows of consecutive frames overlap) and opens just before the sound.
TAPER = np.array([1.0, 1.0, 1.0, 1.0, 0.6, 0.3, 0.1])
ENERGY_BINS = range(2, 60)  # ~160 Hz .. 3.6 kHz: voicing and the first two formants
# ~380 Hz .. 1.1 kHz (F1) vs ~1.2 .. 3 kHz (F2): spectral tilt -> mouth width ("ee" vs "oo")
LOW_BINS, MID_BINS = range(8, 28), range(30, 55)
ENERGY_CLOSED = 0.6  # mean lift above the floor (mel units) still read as silence or noise
ENERGY_OPEN = 5.2  # lift of a loud vowel: fully open (normal speech reaches 0.3-0.8)
WIDTH_BIAS, WIDTH_SPAN = 0.4, 1.0  # mid-minus-low tilt of a neutral vowel, and of a full spread
# Mouth geometry in units of the mouth box's half height (v) and half width (u).
DROP_MAX = 0.8  # lower-lip drop at full openness
LIFT_MAX = 0.25  # upper-lip lift at full openness
JAW_V = 3.2  # the drop fades out this far below the lip line (or at the crop bottom)
FLAT_V = 1.0  # ... after staying whole down to here, so the lower lip moves rigidly
UP_V, FLAT_UP_V = 1.4, 0.3  # the same for the upper lip, upwards
CHIN_U = 1.6  # half width of the chin that follows the jaw
LENS_U = 0.8  # half width of the opening: the lip corners themselves stay closed
SPREAD_MAX = 0.12  # corner shift at width +-1
SPREAD_U, SPREAD_V = 1.8, 2.0  # extent of the horizontal warp
EDGE_PX_AT_256 = 2.5  # soft edge of the opening, scaled with the crop
MOUTH_DARK = np.array([28.0, 28.0, 58.0], np.float32)  # BGR, the throat: dark red-brown
MOUTH_LIP = np.array([92.0, 98.0, 160.0], np.float32)  # BGR, the inner lips at the rim
TEXTURE = 0.15  # share of the stretched lip texture kept in the opening (no flat sticker)
TEETH = np.array([190.0, 198.0, 208.0], np.float32)  # BGR
TEETH_ALPHA, TEETH_FRAC, TEETH_U = 0.5, 0.3, 0.5  # upper teeth: opacity, share of height, u


def smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic between (elementwise, exact in any batch shape)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _fade(t: np.ndarray) -> np.ndarray:
    """Cosine fade: 1 for t <= 0, 0 for t >= 1."""
    return 0.5 + 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def _spread(u: np.ndarray) -> np.ndarray:
    """Odd horizontal profile of the corner shift: grows to the corners, 0 beyond SPREAD_U."""
    return u * np.clip(1 - (u / SPREAD_U) ** 2, 0, 1) ** 2


def _band_mean(lift: np.ndarray, bins: range) -> np.ndarray:
    """Tapered mean over `bins` of (B, 80, len(TAPER)) data, summed in a fixed order."""
    cols = np.zeros((lift.shape[0], len(TAPER)), np.float64)
    for b in bins:  # a Python loop: numpy's reduction order may depend on the batch shape
        cols += lift[:, b]
    acc = np.zeros(lift.shape[0], np.float64)
    for c, weight in enumerate(TAPER):
        acc += weight * cols[:, c]
    return acc / (TAPER.sum() * len(bins))


class ParametricLipSync:
    """Pure, batched renderer of (B, S, S, 3) uint8 BGR face crops from (B, 80, 16) mel windows.

    Args:
        face_size: Side S of the crops in pixels.
        mouth_box: The lips' box (x, y, w, h) as fractions of the crop; its middle row is taken
            as the line where the lips part.
    """

    def __init__(
        self, face_size: int, mouth_box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX
    ) -> None:
        x1, y1, bw, bh = mouth_box
        x2, y2 = x1 + bw, y1 + bh
        if not (0 <= y1 < y2 <= 1 and 0 <= x1 < x2 <= 1):
            raise ValueError(f"mouth_box {mouth_box} must be (x, y, w, h) fractions inside [0, 1]")
        s = self.face_size = int(face_size)
        cy, cx = (y1 + y2) / 2 * s, (x1 + x2) / 2 * s
        h, w = max((y2 - y1) / 2 * s, 1.0), max((x2 - x1) / 2 * s, 1.0)
        jaw_v = max(min(JAW_V, (s - 1 - cy) / h), FLAT_V + 0.5)  # reach zero at the crop bottom
        r0, r1 = max(0, math.floor(cy - UP_V * h)), min(s, math.ceil(cy + jaw_v * h) + 1)
        c0, c1 = max(0, math.floor(cx - SPREAD_U * w)), min(s, math.ceil(cx + SPREAD_U * w) + 1)
        self.region = (r0, r1, c0, c1)  # rows/cols outside it are never touched
        self._y, self._x = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        self._cy, self._h, self._edge = cy, h, EDGE_PX_AT_256 * s / 256
        band = (cy - LIFT_MAX * h - 2 * self._edge, cy + DROP_MAX * h + 2 * self._edge)
        self._band = (max(0, math.floor(band[0]) - r0), min(r1, math.ceil(band[1]) + 1) - r0)
        # Fixed fields: how much each pixel follows the lips (1 at the lip line, 0 at the rim).
        u, v = (self._x[0] - cx) / w, (self._y[:, :1] - cy) / h  # (C,) and (R, 1)
        self._u = u
        self._down = np.where(v >= 0, _fade((v - FLAT_V) / (jaw_v - FLAT_V)), 0).astype(np.float32)
        up = _fade((-v - FLAT_UP_V) / (UP_V - FLAT_UP_V))
        self._up = np.where(v < 0, up, 0).astype(np.float32)
        self._chin = (smoothstep(v - FLAT_V) * (v >= 0)).astype(np.float32)  # whole chin moves
        self._chin_u = (np.clip(1 - (u / CHIN_U) ** 2, 0, 1) ** 2).astype(np.float32)
        win_v = _fade(np.abs(v) / min(SPREAD_V, jaw_v))
        self._shift_x = (-SPREAD_MAX * w * _spread(u) * win_v).astype(np.float32)  # (R, C)
        self._corner = float(SPREAD_MAX * _spread(np.float64(1.0)))  # corner shift / w

    def mouth_params(self, features: np.ndarray) -> np.ndarray:
        """Openness in [0, 1] and width in [-1, 1] per frame, (B, 2) float32; silence -> (0, 0)."""
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 3 or f.shape[1:] != (N_MELS, MEL_STEPS):
            raise ValueError(f"features must be (B, {N_MELS}, {MEL_STEPS}), got {f.shape}")
        lift = np.clip(f[:, :, : len(TAPER)].astype(np.float64) - MEL_FLOOR, 0.0, 8.0)
        energy = _band_mean(lift, ENERGY_BINS)
        openness = np.clip((energy - ENERGY_CLOSED) / (ENERGY_OPEN - ENERGY_CLOSED), 0.0, 1.0)
        tilt = _band_mean(lift, MID_BINS) - _band_mean(lift, LOW_BINS)
        # Width only matters while the mouth moves; it fades in with openness.
        width = np.clip((tilt + WIDTH_BIAS) / WIDTH_SPAN, -1, 1) * np.minimum(1.0, 3.0 * openness)
        return np.stack([openness, width], axis=1).astype(np.float32)

    def render(self, crops: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Render a batch; returns a new (B, S, S, 3) uint8 array (inputs are never written)."""
        crops = np.asarray(crops)
        s = self.face_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
            want = f"(B, {s}, {s}, 3) uint8"
            raise ValueError(f"crops must be {want}, not {crops.dtype} {crops.shape}")
        params = self.mouth_params(features)
        if len(params) != len(crops):
            raise ValueError(f"{len(crops)} crops but {len(params)} feature windows")
        out = crops.copy()
        active = np.flatnonzero(params[:, 0] > 0)
        if active.size:
            r0, r1, c0, c1 = self.region
            out[active, r0:r1, c0:c1] = self._mouths(crops[active], params[active])
        return out

    def _mouths(self, crops: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The warped and filled mouth regions of frames with openness > 0."""
        o = params[:, 0, None, None]  # (B, 1, 1) float32
        k = params[:, 1, None, None]
        # The lens-shaped opening, stretched with the corners when the mouth spreads.
        u = self._u[None, None, :] / (LENS_U * (1 + k * self._corner))  # (B, 1, C)
        lens = np.sqrt(np.clip(1 - u * u, 0, 1))
        drop, lift = o * np.float32(DROP_MAX * self._h), o * np.float32(LIFT_MAX * self._h)
        follow = lens * (1 - self._chin) + self._chin_u * self._chin  # lips -> chin profile
        map_y = self._y - drop * follow * self._down + lift * lens * self._up
        map_x = self._x + k * self._shift_x
        warped = np.stack([
            cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for c, mx, my in zip(crops, map_x, map_y, strict=True)
        ])
        b0, b1 = self._band  # only these rows can be inside the opening
        warped[:, b0:b1] = self._fill(warped[:, b0:b1], o, u, lens, drop, lift)
        return warped

    def _fill(
        self, warped: np.ndarray, o: np.ndarray, u: np.ndarray, lens: np.ndarray,
        drop: np.ndarray, lift: np.ndarray,
    ) -> np.ndarray:
        """Blend the mouth interior (depth shading, upper teeth, soft rim) into the opening."""
        b0, b1 = self._band
        y = self._y[None, b0:b1]
        top, bottom = self._cy - lift * lens, self._cy + drop * lens  # (B, 1, C)
        gap = bottom - top
        inside = np.minimum(y - top, bottom - y)
        alpha = np.clip(inside / self._edge + 0.5, 0, 1) * np.clip(gap / (2 * self._edge), 0, 1)
        depth = np.clip((y - top) / np.maximum(gap, 1e-3), 0, 1)
        shade = np.sqrt(4 * depth * (1 - depth))[..., None]  # 1 mid-opening, 0 at the rim
        colour = MOUTH_LIP + (MOUTH_DARK - MOUTH_LIP) * shade
        teeth_h = np.maximum(TEETH_FRAC * gap, 1e-3)
        teeth = (
            TEETH_ALPHA
            * np.clip((top + teeth_h - y) / teeth_h, 0, 1)  # fades downwards
            * np.sqrt(np.clip(1 - (u / TEETH_U) ** 2, 0, 1))
            * smoothstep((o - 0.15) / 0.3)
        )[..., None]
        colour += (TEETH - colour) * teeth
        src = warped.astype(np.float32)
        colour = (1 - TEXTURE) * colour + (TEXTURE / MOUTH_LIP.mean()) * src * colour
        a = alpha[..., None]
        return np.clip(src + (colour - src) * a + 0.5, 0, 255).astype(np.uint8)
