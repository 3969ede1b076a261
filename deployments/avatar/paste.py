"""Paste rendered face crops back into full frames: feathered, or with MuseTalk's masks.

LiveTalking pastes the resized crop as a hard rectangle. Here the crop is alpha-blended: 1 over
the lower face, where lip-sync models change pixels, falling smoothly to 0 at the box edges and
over the upper face, so the eyes keep the sharp original pixels instead of a resampled copy.
"""

from __future__ import annotations

import cv2
import numpy as np

from deployments.avatar.assets import Avatar
from deployments.avatar.parametric import smoothstep

SIDE_FEATHER_FRAC = 0.12  # of the box width, on the left and right
BOTTOM_FEATHER_FRAC = 0.12  # of the box height
# The upper face fades in between these heights (box fractions): 0 above, 1 below.
TOP_CLEAR_FRAC, TOP_SOLID_FRAC = 0.25, 0.5


def feather_mask(height: int, width: int) -> np.ndarray:
    """(height, width) float32 alpha: 1 over the lower face, ~0 on the box border."""
    ys = (np.arange(height) + 0.5) / height  # pixel centres, as box fractions
    xs = (np.arange(width) + 0.5) / width
    vert = smoothstep((ys - TOP_CLEAR_FRAC) / (TOP_SOLID_FRAC - TOP_CLEAR_FRAC))
    vert *= smoothstep((1 - ys) / BOTTOM_FEATHER_FRAC)
    horiz = smoothstep(xs / SIDE_FEATHER_FRAC) * smoothstep((1 - xs) / SIDE_FEATHER_FRAC)
    return np.outer(vert, horiz).astype(np.float32)


class FeatheredPaster:
    """Pastes crops into an avatar's frames; masks are precomputed per distinct box size.

    Args:
        avatar: The avatar whose `coords` locate each frame's face box.
    """

    def __init__(self, avatar: Avatar) -> None:
        self._coords = [tuple(int(v) for v in box) for box in avatar.coords]
        self._crop_shape = avatar.face_crops.shape[1:]
        self._frame_shape = avatar.full_frames.shape[1:]
        self._weights: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}
        for y1, y2, x1, x2 in set(self._coords):
            self._weights.setdefault((y2 - y1, x2 - x1), self._make_weights(y2 - y1, x2 - x1))

    @staticmethod
    def _make_weights(height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
        alpha = feather_mask(height, width)
        first = int(np.argmax(alpha.max(axis=1) > 0))  # rows above it keep the frame as is
        alpha = np.ascontiguousarray(alpha[first:])
        return alpha, 1.0 - alpha, first

    def paste(self, frame: np.ndarray, crop: np.ndarray, index: int) -> np.ndarray:
        """Blend `crop` into a copy of `frame` at the face box of avatar frame `index`.

        Args:
            frame: (H, W, 3) uint8 full frame; never modified (idle frames are shared).
            crop: (S, S, 3) uint8 rendered face crop.
            index: Avatar frame index whose box to use (the frame `crop` was rendered from).

        Returns:
            A new (H, W, 3) uint8 frame.
        """
        if not 0 <= index < len(self._coords):
            raise IndexError(f"frame index {index} out of range 0..{len(self._coords) - 1}")
        if frame.shape != self._frame_shape or crop.shape != self._crop_shape:
            raise ValueError(
                f"frame {frame.shape} / crop {crop.shape} do not match the avatar's "
                f"{self._frame_shape} / {self._crop_shape}"
            )
        y1, y2, x1, x2 = self._coords[index]
        alpha, beta, first = self._weights[(y2 - y1, x2 - x1)]
        resized = cv2.resize(crop, (x2 - x1, y2 - y1))  # as LiveTalking (INTER_LINEAR)
        out = frame.copy()
        roi = out[y1 + first : y2, x1:x2]
        roi[:] = cv2.blendLinear(resized[first:], roi, alpha, beta)
        return out


class MaskBlendPaster:
    """MuseTalk's paste-back (`musetalk/utils/blending.py` `get_image_blending`, as LiveTalking).

    The crop is resized to the face box and put into a copy of the frame's mask box; that box is
    then blended over the frame with the avatar's mask (255 = rendered face): the mask, not the
    rectangle, decides which pixels change.

    Args:
        avatar: A MuseTalk avatar (`blend_masks` and `blend_boxes` loaded).
    """

    def __init__(self, avatar: Avatar) -> None:
        if avatar.blend_masks is None or avatar.blend_boxes is None:
            raise ValueError(f"avatar {avatar.id} has no blending masks (not a MuseTalk avatar)")
        self._coords = [tuple(int(v) for v in box) for box in avatar.coords]
        self._boxes = [tuple(int(v) for v in box) for box in avatar.blend_boxes]
        self._masks = avatar.blend_masks
        self._frame_shape = avatar.full_frames.shape[1:]
        for i, ((y1, y2, x1, x2), (xs, ys, xe, ye)) in enumerate(zip(self._coords, self._boxes, strict=True)):
            if not (xs <= x1 and ys <= y1 and x2 <= xe and y2 <= ye):
                raise ValueError(f"avatar {avatar.id} frame {i}: face box (x1, y1, x2, y2) "
                                 f"{(x1, y1, x2, y2)} is not inside its mask box {(xs, ys, xe, ye)}")

    def paste(self, frame: np.ndarray, crop: np.ndarray, index: int) -> np.ndarray:
        """See `FeatheredPaster.paste`; any square crop size (MuseTalk's is 256)."""
        if not 0 <= index < len(self._coords):
            raise IndexError(f"frame index {index} out of range 0..{len(self._coords) - 1}")
        if frame.shape != self._frame_shape:
            raise ValueError(f"frame {frame.shape} does not match the avatar's {self._frame_shape}")
        y1, y2, x1, x2 = self._coords[index]
        xs, ys, xe, ye = self._boxes[index]
        out = frame.copy()
        body = out[ys:ye, xs:xe]
        face_large = body.copy()
        face_large[y1 - ys : y2 - ys, x1 - xs : x2 - xs] = cv2.resize(crop, (x2 - x1, y2 - y1))
        alpha = (self._masks[index] / 255).astype(np.float32)  # upstream: float64, then float32
        body[:] = cv2.blendLinear(face_large, body, alpha, 1 - alpha)
        return out


def make_paster(avatar: Avatar) -> FeatheredPaster | MaskBlendPaster:
    """MuseTalk's mask blending for avatars that have masks; the feathered paste otherwise."""
    return MaskBlendPaster(avatar) if avatar.blend_masks is not None else FeatheredPaster(avatar)
