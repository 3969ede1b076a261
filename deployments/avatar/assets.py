"""Avatar assets on disk: LiveTalking's wav2lip folder layout plus our `avatar.json`.

Layout of `data/avatars/<id>/` (ARCHITECTURE.md §6, parity/README.md §4.6)::

    full_imgs/00000000.png ...   every video frame, BGR (same size)
    face_imgs/00000000.png ...   the face box of each frame, cv2.resize'd to S x S
    coords.pkl                   pickled list of (y1, y2, x1, x2) Python-int tuples, one per frame
    avatar.json                  ours, optional (LiveTalking folders have none)

`avatar.json` (format 1)::

    {"format": 1, "avatar_id": "astronaut", "model": "parametric", "face_size": 256,
     "frames": 75, "fps": 25, "frame_size": [512, 512], "source": "skimage:astronaut",
     "mouth_box": [0.30, 0.64, 0.40, 0.18]}

`mouth_box` is the lips' (x, y, w, h) box as fractions of the face crop (OpenCV's box order;
note that `coords` use LiveTalking's (y1, y2, x1, x2) pixels).

MuseTalk avatars add VAE latents and blending masks, and store their boxes as (x1, y1, x2, y2):
see `musetalk_assets.py`. `load_avatar` reads both layouts into the same `Avatar`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployments.common.errors import AvatarError
from deployments.common.timing import FPS

META_FILE = "avatar.json"
META_FORMAT = 1
FULL_DIR = "full_imgs"
FACE_DIR = "face_imgs"
COORDS_FILE = "coords.pkl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # LiveTalking globs *.[jpJP][pnPN]*[gG]
# Lips (x, y, w, h) in a face crop whose box is a frontal face padded to include the chin.
DEFAULT_MOUTH_BOX = (0.30, 0.64, 0.40, 0.18)
LIVETALKING_MODEL = "wav2lip"  # what a folder without avatar.json was made for
MUSETALK_MODEL = "musetalk"  # ... and one with MuseTalk's files
MUSETALK_FACE_SIZE = 256  # MuseTalk's crops (its VAE's input)
XYXY_FROM_YYXX = [2, 0, 3, 1]  # column order turning (y1, y2, x1, x2) into (x1, y1, x2, y2)
YYXX_FROM_XYXY = [1, 3, 0, 2]  # and back


class AvatarNotFound(AvatarError, FileNotFoundError):
    """No avatar folder (or a required file in it): the client named an unknown avatar."""

    status = 404


class InvalidAvatar(AvatarError, ValueError):
    """An avatar folder whose files disagree with each other or with `avatar.json`."""

    status = 500


@dataclass(eq=False)
class Avatar:
    """One avatar's frames, face crops and face boxes (and MuseTalk's extras), index-aligned.

    Attributes:
        id: The folder name.
        full_frames: (N, H, W, 3) uint8 BGR video frames (only frame 0 if loaded without).
        face_crops: (N, S, S, 3) uint8 BGR face crops.
        coords: (N, 4) int32 face boxes (y1, y2, x1, x2) in `full_frames` pixels.
        meta: `avatar.json` content, completed with inferred values.
    """

    id: str
    full_frames: np.ndarray
    face_crops: np.ndarray
    coords: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    latents: np.ndarray | None = None  # MuseTalk: (N, 8, 32, 32) float32 [masked, reference]
    blend_masks: np.ndarray | None = None  # MuseTalk: N (h_i, w_i) uint8 masks (object array)
    blend_boxes: np.ndarray | None = None  # MuseTalk: (N, 4) int32 mask boxes (x_s, y_s, x_e, y_e)

    @property
    def n_frames(self) -> int:
        """Number of frames N."""
        return int(self.face_crops.shape[0])

    @property
    def face_size(self) -> int:
        """Side S of the square face crops in pixels."""
        return int(self.face_crops.shape[1])

    @property
    def mouth_box(self) -> tuple[float, float, float, float]:
        """The lips' box (x, y, w, h) as fractions of a face crop."""
        x, y, w, h = (float(v) for v in self.meta.get("mouth_box", DEFAULT_MOUTH_BOX))
        return x, y, w, h


def mirror_index(size: int, index: int) -> int:
    """LiveTalking's ping-pong frame cycling: forwards on even passes, backwards on odd ones."""
    turn, res = divmod(index, size)
    return res if turn % 2 == 0 else size - res - 1


def list_images(folder: Path) -> list[Path]:
    """Image files of `folder` sorted by int(basename), as LiveTalking's loader does."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        return sorted(files, key=lambda p: int(p.stem))
    except ValueError as exc:
        raise InvalidAvatar(f"{folder}: image names must be frame numbers ({exc})") from None


def is_complete(path: Path) -> bool:
    """Whether `path` holds a full avatar layout with matching file counts (cheap: no decoding)."""
    try:
        n_full = len(list_images(path / FULL_DIR))
        n_face = len(list_images(path / FACE_DIR))
        with open(path / COORDS_FILE, "rb") as f:
            n_coords = len(pickle.load(f))
    except (OSError, ValueError, pickle.UnpicklingError, EOFError):
        return False
    return n_full > 0 and n_full == n_face == n_coords


def write_avatar(
    path: Path,
    full_frames: Iterable[np.ndarray],
    face_crops: np.ndarray,
    coords: np.ndarray,
    meta: dict[str, Any],
    *,
    xyxy_coords: bool = False,
) -> None:
    """Write the layout into `path` (which must exist); `avatar.json` last, marking completion.

    Args:
        path: The avatar's folder.
        full_frames: (H, W, 3) uint8 BGR frames, written to `full_imgs/`.
        face_crops: (N, S, S, 3) uint8 BGR crops, written to `face_imgs/`.
        coords: (N, 4) boxes (y1, y2, x1, x2).
        meta: The `avatar.json` content.
        xyxy_coords: Store them as MuseTalk's (x1, y1, x2, y2) instead.
    """
    (path / FULL_DIR).mkdir()
    (path / FACE_DIR).mkdir()
    for i, (full, face) in enumerate(zip(full_frames, face_crops, strict=True)):
        cv2.imwrite(str(path / FULL_DIR / f"{i:08d}.png"), full)
        cv2.imwrite(str(path / FACE_DIR / f"{i:08d}.png"), face)
    order = XYXY_FROM_YYXX if xyxy_coords else [0, 1, 2, 3]
    with open(path / COORDS_FILE, "wb") as f:
        pickle.dump([tuple(int(box[j]) for j in order) for box in coords], f)
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _read_stack(files: list[Path], what: str, folder: Path) -> np.ndarray:
    images = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidAvatar(f"{folder}: cannot decode {what} image {p.name}")
        if images and img.shape != images[0].shape:
            raise InvalidAvatar(
                f"{folder}: {what} images differ in size ({p.name} is {img.shape[:2]}, "
                f"{files[0].name} is {images[0].shape[:2]})"
            )
        images.append(img)
    return np.stack(images)


def _read_coords(path: Path, n: int, frame_hw: tuple[int, int], *, xyxy: bool = False) -> np.ndarray:
    """The boxes as (n, 4) int32 (y1, y2, x1, x2); `xyxy`: the file holds MuseTalk's order."""
    order = "x1, y1, x2, y2" if xyxy else "y1, y2, x1, x2"
    try:
        with open(path / COORDS_FILE, "rb") as f:
            coords = np.asarray(pickle.load(f), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise InvalidAvatar(f"{path}: unreadable {COORDS_FILE}: {exc}") from None
    if coords.shape != (n, 4):
        raise InvalidAvatar(
            f"{path}: {COORDS_FILE} holds {coords.shape} boxes, expected ({n}, 4) ({order})"
        )
    if xyxy:
        coords = coords[:, YYXX_FROM_XYXY]
    h, w = frame_hw
    y1, y2, x1, x2 = coords.T
    bad = np.flatnonzero((y1 < 0) | (x1 < 0) | (y2 > h) | (x2 > w) | (y2 <= y1) | (x2 <= x1))
    if bad.size:
        raise InvalidAvatar(
            f"{path}: box {bad[0]} {tuple(coords[bad[0]])} is empty or outside the {h}x{w} frame "
            f"(order must be {order})"
        )
    return coords.astype(np.int32)


def _read_meta(path: Path, n: int, face_size: int, frame_hw: tuple[int, int], model: str
               ) -> dict[str, Any]:
    """`avatar.json` checked against the files, with LiveTalking defaults for what it lacks."""
    meta: dict[str, Any] = {}
    if (path / META_FILE).exists():
        try:
            meta = json.loads((path / META_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise InvalidAvatar(f"{path}: {META_FILE} is not JSON: {exc}") from None
        if meta.get("format", META_FORMAT) != META_FORMAT:
            raise InvalidAvatar(f"{path}: {META_FILE} format {meta['format']} != {META_FORMAT}")
        actual = {"frames": n, "face_size": face_size, "frame_size": list(frame_hw)}
        for key, value in actual.items():
            if key in meta and meta[key] != value:
                raise InvalidAvatar(f"{path}: {META_FILE} has {key}={meta[key]}, files {value}")
    defaults = {
        "format": META_FORMAT,
        "avatar_id": path.name,
        "model": model,
        "face_size": face_size,
        "frames": n,
        "fps": FPS,
        "frame_size": list(frame_hw),
        "source": "livetalking",
        "mouth_box": list(DEFAULT_MOUTH_BOX),
    }
    return {**defaults, **meta}


def load_avatar(path: Path | str, *, full_frames: bool = True, latents: bool = False) -> Avatar:
    """Load an avatar folder (ours or LiveTalking's wav2lip or musetalk layout, as it is).

    Args:
        path: The avatar folder, e.g. `data/avatars/astronaut`.
        full_frames: Decode the full frames (and MuseTalk's blending masks) too. A renderer needs
            only the face crops: without them `full_frames` holds just frame 0 (to check the
            boxes against its size).
        latents: Read MuseTalk's `latents.pt` (what a MuseTalk renderer needs), if the folder
            has MuseTalk's layout.

    Returns:
        The decoded avatar; `meta` always has the keys of the `avatar.json` schema.

    Raises:
        AvatarNotFound: (a FileNotFoundError) the folder or one of its parts is missing.
        InvalidAvatar: (a ValueError) the parts disagree in count, size or box format.
    """
    from deployments.avatar import musetalk_assets as mt  # it imports this module

    path = Path(path)
    if not path.is_dir():
        raise AvatarNotFound(f"avatar folder {path} does not exist")
    musetalk = mt.is_musetalk_layout(path)
    # LiveTalking's MuseTalk avatars have no face_imgs/: the crops are cut from the frames.
    derive_crops = musetalk and not (path / FACE_DIR).exists()
    required = [FULL_DIR, COORDS_FILE] + ([] if derive_crops else [FACE_DIR])
    required += [mt.MASK_DIR, mt.MASK_COORDS_FILE] * (musetalk and full_frames)
    for part in required:
        if not (path / part).exists():
            raise AvatarNotFound(f"avatar folder {path} has no {part}")
    full_files = list_images(path / FULL_DIR)
    face_files = [] if derive_crops else list_images(path / FACE_DIR)
    if not full_files:
        raise AvatarNotFound(f"avatar folder {path} has no images in {FULL_DIR}/")
    if not derive_crops and len(full_files) != len(face_files):
        raise InvalidAvatar(
            f"{path}: {len(full_files)} images in {FULL_DIR}/ but {len(face_files)} in {FACE_DIR}/"
        )
    full = _read_stack(full_files if full_frames or derive_crops else full_files[:1], FULL_DIR, path)
    n, frame_hw = len(full_files), (int(full.shape[1]), int(full.shape[2]))
    coords = _read_coords(path, n, frame_hw, xyxy=musetalk)
    if derive_crops:
        faces = np.stack([cv2.resize(f[y1:y2, x1:x2], (MUSETALK_FACE_SIZE,) * 2, interpolation=cv2.INTER_LANCZOS4)
                          for f, (y1, y2, x1, x2) in zip(full, coords, strict=True)])
        full = full if full_frames else full[:1]
    else:
        faces = _read_stack(face_files, FACE_DIR, path)
    if faces.shape[1] != faces.shape[2]:
        raise InvalidAvatar(f"{path}: face crops are {faces.shape[1:3]}, expected square")
    model = MUSETALK_MODEL if musetalk else LIVETALKING_MODEL
    meta = _read_meta(path, n, int(faces.shape[1]), frame_hw, model)
    avatar = Avatar(id=path.name, full_frames=full, face_crops=faces, coords=coords, meta=meta)
    try:
        if latents and musetalk:  # other folders have none: the engine says how to build them
            avatar.latents = mt.read_latents(path, n)
        if musetalk and full_frames:
            mask_files = list_images(path / mt.MASK_DIR)
            if len(mask_files) != n:
                raise ValueError(f"{len(mask_files)} images in {mt.MASK_DIR}/ for {n} frames")
            avatar.blend_masks, avatar.blend_boxes = mt.read_masks(path, mask_files, frame_hw)
    except ValueError as exc:
        raise InvalidAvatar(f"{path}: {exc}") from None
    return avatar
