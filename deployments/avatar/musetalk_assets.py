"""MuseTalk avatar files: LiveTalking's `musetalk` layout on top of the common one.

A LiveTalking MuseTalk avatar (`musetalk/genavatar.py`, read by `musereal.py` `load_avatar`)::

    full_imgs/00000000.png ...   every video frame, BGR
    coords.pkl                   per frame the face box (x1, y1, x2, y2): NOT wav2lip's order
    latents.pt                   torch list of (1, 8, 32, 32) VAE latents [masked, reference]
    mask/00000000.png ...        per frame the blending mask, the size of its mask box
    mask_coords.pkl              per frame the mask box (x_s, y_s, x_e, y_e), 1.5x the face box

Our builder writes the same files, plus `face_imgs/` (the 256 x 256 crops the latents were
encoded from) and `avatar.json`. The masks come from BiSeNet face parsing upstream
(`get_image_prepare_material`, "jaw" mode); that network is not in our offline set, so the builder
draws the lower-face region as a blurred ellipse inside the face box instead, with upstream's
box expansion, upper boundary and blur (docs/decisions.md). Existing masks are used as they are.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np

LATENTS_FILE = "latents.pt"
MASK_DIR = "mask"
MASK_COORDS_FILE = "mask_coords.pkl"
LATENT_SHAPE = (8, 32, 32)
# get_image_prepare_material's defaults: the mask box is the face box grown 1.5x about its
# centre; the mask is zero above half its height and blurred over a tenth of its side.
MASK_EXPAND = 1.5
MASK_UPPER_BOUNDARY = 0.5
# The lower-face ellipse inside the face box (fractions of the box): centre and half-axes.
JAW_CENTRE_Y, JAW_HALF_W, JAW_HALF_H = 0.58, 0.42, 0.40


def is_musetalk_layout(path: Path) -> bool:
    """Whether the folder holds MuseTalk's files (and so (x1, y1, x2, y2) coords)."""
    return (path / LATENTS_FILE).exists() or (path / MASK_COORDS_FILE).exists()


def mask_box(face_box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Upstream's crop box (x_s, y_s, x_e, y_e) around face box (x1, y1, x2, y2), before clipping."""
    x1, y1, x2, y2 = face_box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * MASK_EXPAND)
    return xc - s, yc - s, xc + s, yc + s


def jaw_mask(face_box: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The blending mask over `box` (uint8, its size): the lower face, blurred, zero on top.

    Args:
        face_box: (x1, y1, x2, y2) in frame pixels.
        box: The mask box (x_s, y_s, x_e, y_e) from `mask_box`, unclipped.
    """
    x1, y1, x2, y2 = face_box
    xs, ys, xe, ye = box
    w, h = x2 - x1, y2 - y1
    mask = np.zeros((ye - ys, xe - xs), np.uint8)
    centre = (round(x1 - xs + w / 2), round(y1 - ys + JAW_CENTRE_Y * h))
    axes = (round(JAW_HALF_W * w), round(JAW_HALF_H * h))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
    inside = np.zeros_like(mask)  # upstream pastes the parsing result of the face box only
    inside[y1 - ys:y2 - ys, x1 - xs:x2 - xs] = mask[y1 - ys:y2 - ys, x1 - xs:x2 - xs]
    inside[: int(inside.shape[0] * MASK_UPPER_BOUNDARY)] = 0
    k = int(0.1 * inside.shape[0] // 2 * 2) + 1
    return cv2.GaussianBlur(inside, (k, k), 0)


def clip_mask(mask: np.ndarray, box: tuple[int, int, int, int], frame_hw: tuple[int, int]
              ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The part of `mask` (over `box`) inside the frame, and that part's box.

    Upstream slices `body[y_s:y_e, x_s:x_e]` with the unclipped box, which breaks for faces near
    an edge (negative starts wrap around); clipping keeps those avatars usable.
    """
    xs, ys, xe, ye = box
    h, w = frame_hw
    cx, cy = max(0, xs), max(0, ys)
    return mask[cy - ys:min(ye, h) - ys, cx - xs:min(xe, w) - xs], (cx, cy, min(xe, w), min(ye, h))


def write_musetalk_files(path: Path, latents: np.ndarray, masks: list[np.ndarray],
                         mask_boxes: list[tuple[int, int, int, int]]) -> None:
    """Write latents.pt, mask/ and mask_coords.pkl into `path` (coords.pkl: `write_avatar`)."""
    import torch  # only MuseTalk avatars need it

    (path / MASK_DIR).mkdir()
    for i, mask in enumerate(masks):
        cv2.imwrite(str(path / MASK_DIR / f"{i:08d}.png"), mask)
    with open(path / MASK_COORDS_FILE, "wb") as f:
        pickle.dump([[int(v) for v in box] for box in mask_boxes], f)
    torch.save([torch.from_numpy(np.ascontiguousarray(lat[None])) for lat in latents], path / LATENTS_FILE)


def read_latents(path: Path, n: int) -> np.ndarray:
    """`latents.pt` as (n, 8, 32, 32) float32 (CUDA or fp16 tensors saved upstream are fine).

    Raises:
        ValueError: Unreadable, or not n latents of MuseTalk's shape (message says which).
    """
    import torch

    try:
        items = torch.load(path / LATENTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"unreadable {LATENTS_FILE}: {exc}") from exc
    if isinstance(items, torch.Tensor):
        items = list(items)
    if not isinstance(items, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in items):
        raise ValueError(f"{LATENTS_FILE} must hold a list of tensors")
    if len(items) != n:
        raise ValueError(f"{LATENTS_FILE} holds {len(items)} latents for {n} frames")
    out = np.empty((n, *LATENT_SHAPE), np.float32)
    for i, t in enumerate(items):
        if t.numel() != out[i].size:
            raise ValueError(f"{LATENTS_FILE}: latent {i} is {tuple(t.shape)}, expected (1, 8, 32, 32)")
        out[i] = t.float().reshape(LATENT_SHAPE).numpy()
    return out


def read_masks(path: Path, files: list[Path], frame_hw: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The masks (gray uint8, one array per frame) and their boxes, clipped to the frame.

    Returns:
        An object array of (h_i, w_i) uint8 masks and an (n, 4) int32 array of (x_s, y_s, x_e, y_e).

    Raises:
        ValueError: Counts or sizes disagree with mask_coords.pkl, or a mask does not decode.
    """
    try:
        with open(path / MASK_COORDS_FILE, "rb") as f:
            boxes = np.asarray(pickle.load(f), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"unreadable {MASK_COORDS_FILE}: {exc}") from None
    if boxes.shape != (len(files), 4):
        raise ValueError(f"{MASK_COORDS_FILE} holds {boxes.shape} boxes for {len(files)} masks")
    masks = np.empty(len(files), dtype=object)
    clipped = np.empty((len(files), 4), np.int32)
    for i, (file, box) in enumerate(zip(files, boxes, strict=True)):
        mask = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)  # upstream: BGR read, then to gray
        if mask is None:
            raise ValueError(f"cannot decode mask {file.name}")
        xs, ys, xe, ye = (int(v) for v in box)
        if mask.shape != (ye - ys, xe - xs):
            raise ValueError(f"mask {file.name} is {mask.shape}, its box {tuple(box)} is {(ye - ys, xe - xs)}")
        masks[i], clipped[i] = clip_mask(mask, (xs, ys, xe, ye), frame_hw)
    return masks, clipped
