"""Avatar builder (astronaut image -> idle loop -> LiveTalking layout) and avatar loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployments.avatar.assets import (
    AvatarNotFound,
    InvalidAvatar,
    is_complete,
    load_avatar,
    mirror_index,
)
from deployments.avatar.builder import NoFaceError, build_avatar, main
from deployments.avatar.idle import MAX_MOTION_PX, blink_schedule

pytestmark = pytest.mark.unit

ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, w, h: where Haar finds it (NOTES.md)
FACE_SIZE = 128


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("avatars")
    return build_avatar(
        "astronaut", astronaut=True, out_dir=out, face_size=FACE_SIZE, idle_seconds=3.0,
        progress=False,
    )


@pytest.fixture(scope="module")
def frames(astronaut: Path) -> np.ndarray:
    return load_avatar(astronaut).full_frames


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32)


def test_layout_is_livetalking(astronaut: Path) -> None:
    names = sorted(p.name for p in (astronaut / "full_imgs").iterdir())
    assert names == [f"{i:08d}.png" for i in range(75)]
    assert sorted(p.name for p in (astronaut / "face_imgs").iterdir()) == names
    with open(astronaut / "coords.pkl", "rb") as f:
        coords = pickle.load(f)
    assert isinstance(coords, list) and len(coords) == 75
    assert all(isinstance(c, tuple) and len(c) == 4 for c in coords)
    assert all(type(v) is int for c in coords for v in c)  # Python ints, as genavatar writes
    meta = json.loads((astronaut / "avatar.json").read_text())
    assert meta["format"] == 1 and meta["model"] == "parametric" and meta["fps"] == 25
    assert meta["face_size"] == FACE_SIZE and meta["frames"] == 75
    assert meta["frame_size"] == [512, 512] and meta["source"] == "skimage:astronaut"
    mx, my, mw, mh = meta["mouth_box"]  # (x, y, w, h) fractions of the crop
    assert 0 < mx < 0.5 < mx + mw < 1 and 0.5 < my < my + mh < 1
    face = cv2.imread(str(astronaut / "face_imgs" / names[0]))
    assert face.shape == (FACE_SIZE, FACE_SIZE, 3)


def test_face_box_contains_the_face_and_is_square(astronaut: Path) -> None:
    avatar = load_avatar(astronaut)
    assert (avatar.coords == avatar.coords[0]).all()  # one fixed box for a still's idle loop
    y1, y2, x1, x2 = avatar.coords[0].tolist()
    fx, fy, fw, fh = ASTRONAUT_FACE
    assert y1 <= fy + 3 and y2 >= fy + fh + 10  # padded below: the chin is in
    assert x1 <= fx + 3 and x2 >= fx + fw - 3
    assert y2 - y1 < 1.5 * fh and abs((y2 - y1) - (x2 - x1)) <= 2
    crop = cv2.resize(avatar.full_frames[0][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
    assert np.array_equal(crop, avatar.face_crops[0])


def test_idle_frames_move_a_little_and_loop_seamlessly(frames: np.ndarray) -> None:
    step = [np.abs(_gray(frames[k + 1]) - _gray(frames[k])).mean() for k in range(len(frames) - 1)]
    assert min(step) > 0.02  # alive: every frame differs
    assert max(step) < 3.0  # but only slightly
    wrap = np.abs(_gray(frames[0]) - _gray(frames[-1])).mean()
    assert wrap < 1.5 * float(np.median(step))  # the loop closes like any other step
    # Global motion of the face region relative to frame 0 stays within the bound.
    region = (slice(40, 200), slice(150, 300))
    ref = _gray(frames[0])[region]
    for k in range(0, len(frames), 5):
        (dx, dy), _ = cv2.phaseCorrelate(ref, _gray(frames[k])[region])
        assert np.hypot(dx, dy) <= MAX_MOTION_PX + 0.25


def test_blinks_close_the_eyes(frames: np.ndarray) -> None:
    closed = max(blink_schedule(75), key=lambda k: blink_schedule(75)[k])
    eyes = (slice(85, 120), slice(185, 265))  # both eyes of the astronaut
    open_diff = np.abs(_gray(frames[closed - 3])[eyes] - _gray(frames[closed - 4])[eyes]).mean()
    blink_diff = np.abs(_gray(frames[closed])[eyes] - _gray(frames[closed - 4])[eyes]).mean()
    assert blink_diff > 4 * open_diff


def test_build_is_idempotent_unless_forced(astronaut: Path) -> None:
    stamp = (astronaut / "avatar.json").stat().st_mtime_ns
    again = build_avatar("astronaut", image=np.zeros((8, 8, 3), np.uint8), out_dir=astronaut.parent)
    assert again == astronaut and (astronaut / "avatar.json").stat().st_mtime_ns == stamp
    assert is_complete(astronaut)


def test_no_face_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="no face found in .*grey.png: use a frontal"):
        build_avatar("grey", image=grey, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "grey").exists() and not list(tmp_path.glob(".grey*"))
    status = main(["--image", str(grey), "--avatar-id", "grey", "--out", str(tmp_path)])
    assert status == 2
    assert "no face found" in capsys.readouterr().err


def test_cli_builds_the_astronaut(tmp_path: Path) -> None:
    args = ["--astronaut", "--avatar-id", "a", "--out", str(tmp_path), "--idle-seconds", "0.4"]
    assert main([*args, "--face-size", "96"]) == 0
    avatar = load_avatar(tmp_path / "a")
    assert avatar.n_frames == 10 and avatar.face_size == 96


def _livetalking_folder(root: Path, n: int = 12, size: int = 32) -> Path:
    """A folder as genavatar writes it (no avatar.json), numbered without zero padding."""
    path = root / "lt_avatar"
    (path / "full_imgs").mkdir(parents=True)
    (path / "face_imgs").mkdir()
    coords = []
    for i in range(n):
        frame = np.full((60, 80, 3), i, np.uint8)  # pixel value = frame number
        cv2.imwrite(str(path / "full_imgs" / f"{i}.png"), frame)
        cv2.imwrite(str(path / "face_imgs" / f"{i}.png"), np.full((size, size, 3), i, np.uint8))
        coords.append((10, 50, 20, 60))
    with open(path / "coords.pkl", "wb") as f:
        pickle.dump(coords, f)
    return path


def test_loads_livetalking_folder_without_metadata(tmp_path: Path) -> None:
    avatar = load_avatar(_livetalking_folder(tmp_path))
    assert avatar.id == "lt_avatar" and avatar.n_frames == 12 and avatar.face_size == 32
    # Sorted by int(basename): 2.png before 10.png.
    assert [int(f[0, 0, 0]) for f in avatar.full_frames] == list(range(12))
    assert [int(f[0, 0, 0]) for f in avatar.face_crops] == list(range(12))
    assert avatar.coords.dtype == np.int32 and avatar.coords.shape == (12, 4)
    assert avatar.meta["model"] == "wav2lip" and avatar.meta["face_size"] == 32
    assert avatar.meta["frames"] == 12 and avatar.meta["frame_size"] == [60, 80]
    crops_only = load_avatar(avatar_path := tmp_path / "lt_avatar", full_frames=False)
    assert crops_only.full_frames.shape == (1, 60, 80, 3) and crops_only.n_frames == 12
    assert np.array_equal(crops_only.face_crops, load_avatar(avatar_path).face_crops)


def test_load_errors_name_the_folder_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        load_avatar(tmp_path / "nope")
    path = _livetalking_folder(tmp_path)
    (path / "face_imgs" / "11.png").unlink()
    with pytest.raises(ValueError, match="12 images in full_imgs/ but 11 in face_imgs/"):
        load_avatar(path)
    cv2.imwrite(str(path / "face_imgs" / "11.png"), np.zeros((32, 32, 3), np.uint8))
    with open(path / "coords.pkl", "wb") as f:
        pickle.dump([(10, 50, 20, 90)] * 12, f)  # x2 beyond the 80 px frame
    with pytest.raises(InvalidAvatar, match="outside the 60x80 frame"):
        load_avatar(path)
    (path / "coords.pkl").unlink()
    with pytest.raises(AvatarNotFound, match="has no coords.pkl"):
        load_avatar(path)


def test_mirror_index_ping_pongs() -> None:
    assert [mirror_index(3, i) for i in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]


@pytest.mark.parametrize(("model", "size"), [("wav2lip96", 96), ("ultralight_hubert", 168)])
def test_cli_model_option_writes_that_models_crop_size(tmp_path: Path, model: str, size: int) -> None:
    assert main(["--astronaut", "--avatar-id", "m", "--out", str(tmp_path), "--model", model,
                 "--idle-seconds", "0.2"]) == 0
    avatar = load_avatar(tmp_path / "m")
    assert avatar.meta["model"] == model and avatar.face_crops.shape[1:] == (size, size, 3)
