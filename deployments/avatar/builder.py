"""Build an avatar folder (LiveTalking's layout for the model + avatar.json) from an image or a video.

    python -m deployments.avatar.builder --astronaut --avatar-id astronaut
    python -m deployments.avatar.builder --image me.jpg --avatar-id me --idle-seconds 4
    python -m deployments.avatar.builder --video me.mp4 --avatar-id me --max-frames 250
    python -m deployments.avatar.builder --video me.mp4 --avatar-id me --model musetalk

An image becomes a synthetic idle loop (`idle.py`); a video keeps its own frames. Faces are
found with OpenCV's Haar cascade (no weights to download). Exit status 2 means no face.
MuseTalk avatars also get VAE latents and blending masks (`musetalk_assets.py`): that step needs
the VAE weights in `models/sd-vae-ft-mse/` (or `--vae-dir`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from deployments.avatar.assets import (
    DEFAULT_MOUTH_BOX,
    META_FILE,
    META_FORMAT,
    MUSETALK_FACE_SIZE,
    XYXY_FROM_YYXX,
    is_complete,
    write_avatar,
)
from deployments.avatar.idle import DEFAULT_IDLE_S, FaceBox, synthesize_idle
from deployments.common.errors import AvatarError
from deployments.common.models import LIPSYNC_MODELS, lipsync_model
from deployments.common.timing import FPS

DEFAULT_OUT_DIR = Path("data/avatars")
DEFAULT_FACE_SIZE = 256  # wav2lip256 and the parametric renderer; wav2lip96 needs 96
DEFAULT_MAX_FRAMES = 500  # 20 s of video; all frames stay in memory when serving
# LiveTalking pads S3FD boxes 10% at the bottom; a Haar box ends at the lower lip, well above
# the chin, so it needs more for the jaw to be inside the crop.
PAD_BOTTOM_FRAC = 0.2
SMOOTH_FRAMES = 5  # LiveTalking averages each box with the next 4 (unless --nosmooth)
DETECT_MAX_SIDE_PX = 640  # Haar runs on a downscaled copy of larger frames (speed)
MIN_FACE_FRAC = 0.08  # of the shorter image side; smaller hits are background noise
LATENT_BATCH = 8  # crops per VAE encoder call when building MuseTalk latents
NO_FACE_HINT = "use a frontal, well-lit face that fills at least a tenth of the picture"

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    """No face was found in the source."""


def detect_face(image: np.ndarray) -> FaceBox | None:
    """The largest frontal face (x, y, w, h) in a BGR image, or None."""
    scale = min(1.0, DETECT_MAX_SIDE_PX / max(image.shape[:2]))
    small = image
    if scale < 1:
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    min_side = max(24, int(MIN_FACE_FRAC * min(gray.shape)))
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    hits = cascade.detectMultiScale(gray, 1.1, 5, minSize=(min_side, min_side))
    if len(hits) == 0:
        return None
    x, y, w, h = max(hits, key=lambda b: b[2] * b[3])
    return round(x / scale), round(y / scale), round(w / scale), round(h / scale)


def face_coords(face: FaceBox, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Crop box (y1, y2, x1, x2): the face padded down to the chin, squared, clamped to the frame.

    Square so that the S x S crop keeps the face's aspect ratio.
    """
    x, y, w, h = face
    y1, y2 = y, y + h + round(PAD_BOTTOM_FRAC * h)
    grow = max(0, (y2 - y1) - w)
    x1, x2 = x - grow // 2, x + w + grow - grow // 2
    rows, cols = frame_hw
    return max(0, y1), min(rows, y2), max(0, x1), min(cols, x2)


def smooth_boxes(boxes: np.ndarray) -> np.ndarray:
    """LiveTalking's box smoothing: mean of boxes[i:i+5] (the last 5 near the end), truncated."""
    out = boxes.copy()
    n = len(boxes)
    for i in range(n):
        start = n - SMOOTH_FRAMES if i + SMOOTH_FRAMES > n else i
        out[i] = np.mean(boxes[max(0, start) : start + SMOOTH_FRAMES], axis=0).astype(boxes.dtype)
    return out


def _read_video(path: Path, max_frames: int) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    try:
        for _ in range(max_frames):
            ok, frame = cap.read()
            if not ok:
                break
            yield frame
    finally:
        cap.release()


def _video_frames_and_boxes(
    path: Path, max_frames: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    frames, faces = [], []
    reader = _read_video(path, max_frames)
    for frame in tqdm(reader, desc="detect", unit="frame", disable=not progress):
        frames.append(frame)
        faces.append(detect_face(frame))
    if not frames:
        raise FileNotFoundError(f"video {path} has no readable frames")
    found = [f for f in faces if f is not None]
    if not found:
        raise NoFaceError(f"no face found in {path}: {NO_FACE_HINT}")
    last = found[0]  # frames before the first hit borrow it; later misses keep the previous box
    boxes = []
    for face in faces:
        last = face or last
        boxes.append(face_coords(last, frames[0].shape[:2]))
    return np.stack(frames), smooth_boxes(np.asarray(boxes, np.int64))


def _read_still(
    image: np.ndarray | Path | None, astronaut: bool, source: str | None
) -> tuple[np.ndarray, str]:
    """The BGR still and how avatar.json names it."""
    if astronaut:
        from skimage import data  # only this source needs scikit-image

        return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), source or "skimage:astronaut"
    if isinstance(image, (str, Path)):
        still = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if still is None:
            raise FileNotFoundError(f"cannot read image {image}")
        return still, source or f"image:{image}"
    return np.ascontiguousarray(image), source or "array"


def _idle_frames_and_boxes(
    still: np.ndarray, source: str, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    face = detect_face(still)
    if face is None:
        raise NoFaceError(f"no face found in {source.split(':', 1)[-1]}: {NO_FACE_HINT}")
    frames = synthesize_idle(still, face, n_frames)
    # One box for the whole loop: the idle motion stays within MAX_MOTION_PX.
    return frames, np.asarray([face_coords(face, still.shape[:2])] * n_frames, np.int64)


def build_avatar(
    avatar_id: str,
    *,
    image: np.ndarray | Path | None = None,
    video: Path | None = None,
    astronaut: bool = False,
    out_dir: Path = DEFAULT_OUT_DIR,
    face_size: int = DEFAULT_FACE_SIZE,
    idle_seconds: float = DEFAULT_IDLE_S,
    max_frames: int = DEFAULT_MAX_FRAMES,
    model: str = "parametric",
    mouth_box: tuple[float, float, float, float] = DEFAULT_MOUTH_BOX,
    source: str | None = None,
    force: bool = False,
    progress: bool = True,
    vae_dir: Path | str | None = None,
) -> Path:
    """Build `out_dir/avatar_id` from exactly one source.

    Args:
        avatar_id: The folder name.
        image: A still (BGR array or image file): becomes an idle loop of `idle_seconds`.
        video: A video file: its first `max_frames` frames are used as they are.
        astronaut: Use scikit-image's astronaut photo as the still.
        out_dir: Where avatar folders live.
        face_size: Side of the square face crops in pixels.
        idle_seconds: Length of a still's idle loop.
        max_frames: Cap on the frames taken from a video.
        model: The lip-sync model the avatar is for (recorded in avatar.json).
        mouth_box: The lips' box (x, y, w, h) as fractions of the face crop.
        source: How avatar.json names the source (default: derived from the arguments).
        force: Rebuild even if the folder already holds a complete avatar for `model`.
        progress: Show tqdm progress bars.
        vae_dir: MuseTalk only: the sd-vae-ft-mse folder (default `models/sd-vae-ft-mse`).

    Returns:
        The avatar folder. If it already holds a complete avatar for `model` and not `force`,
        it is returned untouched.

    Raises:
        NoFaceError: No face in the image or in any video frame.
        FileNotFoundError: The source cannot be read.
        CheckpointError: MuseTalk without the VAE (the message says what to put where).
    """
    if (image is not None) + (video is not None) + astronaut != 1:
        raise ValueError("give exactly one of image=, video= and astronaut=True")
    model = lipsync_model(model).name  # LiveTalking's aliases too
    musetalk = lipsync_model(model).needs_latents  # MuseTalk's layout: VAE latents and masks
    if musetalk and face_size != MUSETALK_FACE_SIZE:
        raise ValueError(f"MuseTalk avatars have {MUSETALK_FACE_SIZE} px face crops, not {face_size}")
    target = Path(out_dir) / avatar_id
    if not force and is_complete(target) and _built_for(target) == model:
        log.info("avatar %s is complete: nothing to do (force=True rebuilds it)", target)
        return target
    vae = _musetalk_vae(vae_dir) if musetalk else None  # fail before the slow steps
    if video is not None:
        source = source or f"video:{video}"
        frames, coords = _video_frames_and_boxes(Path(video), max_frames, progress)
    else:
        still, source = _read_still(image, astronaut, source)
        frames, coords = _idle_frames_and_boxes(still, source, max(1, round(idle_seconds * FPS)))
    size = (face_size, face_size)
    # MuseTalk encodes Lanczos-resized crops (realtime_inference.py); LiveTalking's wav2lip crops
    # are cv2's default bilinear.
    interp = cv2.INTER_LANCZOS4 if musetalk else cv2.INTER_LINEAR
    crops = np.stack([cv2.resize(f[a:b, c:d], size, interpolation=interp)
                      for f, (a, b, c, d) in zip(frames, coords, strict=True)])
    meta = {
        "format": META_FORMAT,
        "avatar_id": avatar_id,
        "model": model,
        "face_size": face_size,
        "frames": len(frames),
        "fps": FPS,
        "frame_size": [int(frames.shape[1]), int(frames.shape[2])],
        "source": source,
        "mouth_box": [float(v) for v in mouth_box],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a half-built avatar in place.
    tmp = Path(tempfile.mkdtemp(prefix=f".{avatar_id}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        if vae is not None:
            _write_musetalk_extras(tmp, vae, frames, crops, coords, progress)
        bar = tqdm(frames, desc="write", unit="frame", disable=not progress)
        write_avatar(tmp, bar, crops, coords, meta, xyxy_coords=musetalk)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _built_for(path: Path) -> str | None:
    """The model recorded in a folder's avatar.json (None: none recorded)."""
    try:
        return json.loads((path / META_FILE).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def _musetalk_vae(vae_dir: Path | str | None) -> Any:
    from deployments.avatar.models.vae import (  # torch + diffusers
        DEFAULT_VAE_DIR,
        load_vae,
    )

    return load_vae(vae_dir or DEFAULT_VAE_DIR)


def _write_musetalk_extras(path: Path, vae: Any, frames: np.ndarray, crops: np.ndarray,
                           coords: np.ndarray, progress: bool) -> None:
    """latents.pt (VAE-encoded crops), mask/ and mask_coords.pkl, as MuseTalk's avatar prep."""
    from deployments.avatar import musetalk_assets as mt
    from deployments.avatar.models.vae import latents_for_unet

    latents = np.concatenate([
        latents_for_unet(vae, crops[i:i + LATENT_BATCH], seed=i)
        for i in tqdm(range(0, len(crops), LATENT_BATCH), desc="latents", unit="batch", disable=not progress)
    ])
    masks, boxes = [], []
    for frame, box in zip(frames, coords[:, XYXY_FROM_YYXX], strict=True):
        x1, y1, x2, y2 = (int(v) for v in box)
        full_box = mt.mask_box((x1, y1, x2, y2))
        mask, clipped = mt.clip_mask(mt.jaw_mask((x1, y1, x2, y2), full_box), full_box,
                                     (frame.shape[0], frame.shape[1]))
        masks.append(mask)
        boxes.append(clipped)
    mt.write_musetalk_files(path, latents, masks, boxes)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2: no face found)."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.avatar.builder", description=(__doc__ or "").split("\n")[0]
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="a still photo: becomes an idle loop")
    src.add_argument("--video", type=Path, help="a video of the person (frames used as they are)")
    src.add_argument("--astronaut", action="store_true", help="skimage's astronaut test image")
    parser.add_argument("--avatar-id", required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--face-size", type=int, default=None,
                        help="face crop side in pixels (default: the model's own, e.g. 96 for wav2lip96)")
    parser.add_argument("--idle-seconds", type=float, default=DEFAULT_IDLE_S)
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES)
    parser.add_argument("--model", default="parametric", choices=[*LIPSYNC_MODELS.names, *LIPSYNC_MODELS.aliases],
                        help="the lip-sync model the avatar is for (LiveTalking's crop size for it)")
    parser.add_argument(
        "--mouth-box", type=float, nargs=4, metavar=("X", "Y", "W", "H"),
        default=DEFAULT_MOUTH_BOX, help="the lips' box as fractions of the face crop",
    )
    parser.add_argument("--force", action="store_true", help="rebuild a complete avatar")
    parser.add_argument("--vae-dir", type=Path, default=None,
                        help="musetalk: the sd-vae-ft-mse folder (default models/sd-vae-ft-mse)")
    args = parser.parse_args(argv)
    model = lipsync_model(args.model)
    face_size = args.face_size or model.native_face_size or DEFAULT_FACE_SIZE
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_avatar(
            args.avatar_id, image=args.image, video=args.video, astronaut=args.astronaut,
            out_dir=args.out,
            face_size=face_size, idle_seconds=args.idle_seconds, max_frames=args.max_frames,
            model=model.name, mouth_box=tuple(args.mouth_box), force=args.force,
            vae_dir=args.vae_dir,
        )
    except NoFaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, AvatarError) as exc:  # AvatarError: no VAE for musetalk
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
