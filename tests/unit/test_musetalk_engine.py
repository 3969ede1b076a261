"""MuseTalk serving: VAE steps, avatar layouts (ours and LiveTalking's), the engine, the paste-back.

Weights come from conftest's `musetalk_models` (rule-filled UNet and VAE in their published
layouts); with them the faces are noise, so the tests compare against upstream's own code, copied
verbatim where it can run here: MuseTalk `musetalk/models/vae.py` (`preprocess_img`,
`encode_latents`, `decode_latents`), `musetalk/utils/blending.py` (`get_image_blending`) and
LiveTalking `musereal.py` (`inference`, `process_frames`). The VAE costs seconds a frame on this
CPU, so batches are 1–3 frames.
"""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deployments.avatar.assets import Avatar, InvalidAvatar, load_avatar
from deployments.avatar.builder import build_avatar, main
from deployments.avatar.lipsync import make_engine
from deployments.avatar.lipsync.musetalk import MuseTalkEngine
from deployments.avatar.models import CheckpointError
from deployments.avatar.models.vae import decode_latents, latents_for_unet, load_vae
from deployments.avatar.musetalk_assets import LATENTS_FILE, MASK_COORDS_FILE, MASK_DIR
from deployments.avatar.paste import FeatheredPaster, MaskBlendPaster, make_paster

pytestmark = pytest.mark.unit

N_FRAMES = 3  # idle_seconds 0.12 at 25 fps
BATCH_TOL = 1e-5  # batched vs unbatched network output, relative to its largest value


@pytest.fixture(scope="module")
def vae_dir(musetalk_models: Path) -> Path:
    return musetalk_models / "sd-vae-ft-mse"


@pytest.fixture(scope="module")
def vae(vae_dir: Path):
    return load_vae(vae_dir)


@pytest.fixture(scope="module")
def avatar_dir(tmp_path_factory: pytest.TempPathFactory, vae_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("avatars")
    return build_avatar("mt", astronaut=True, out_dir=out, face_size=256, idle_seconds=0.12,
                        model="musetalk", vae_dir=vae_dir, progress=False)


@pytest.fixture(scope="module")
def avatar(avatar_dir: Path) -> Avatar:
    return load_avatar(avatar_dir, latents=True)


@pytest.fixture(scope="module")
def engine(musetalk_models: Path) -> MuseTalkEngine:
    eng = make_engine("musetalk", face_size=256, checkpoint=str(musetalk_models / "musetalkV15" / "unet.pth"))
    assert isinstance(eng, MuseTalkEngine)
    return eng


# --- upstream, verbatim (module-level state turned into arguments) --------------------------------

def upstream_preprocess_img(img: np.ndarray, half_mask: bool) -> torch.Tensor:
    """MuseTalk `VAE.preprocess_img` for an array input (resized_img 256)."""
    mask_tensor = torch.zeros((256, 256))
    mask_tensor[:256 // 2, :] = 1
    window = [cv2.cvtColor(img, cv2.COLOR_BGR2RGB)]
    x = np.asarray(window) / 255.
    x = np.transpose(x, (3, 0, 1, 2))
    x = torch.squeeze(torch.FloatTensor(x))
    if half_mask:
        x = x * (mask_tensor > 0.5)
    x = (x - 0.5) / 0.5  # transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3)
    return torch.unsqueeze(x, 0)


def upstream_latents_for_unet(vae, img: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """`VAE.get_latents_for_unet`; `.sample()` given our generator so the noise is comparable."""
    def encode_latents(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            init_latent_dist = vae.encode(image.to(vae.dtype)).latent_dist
        return vae.config.scaling_factor * init_latent_dist.sample(generator=generator)

    masked_latents = encode_latents(upstream_preprocess_img(img, half_mask=True))
    ref_latents = encode_latents(upstream_preprocess_img(img, half_mask=False))
    return torch.cat([masked_latents, ref_latents], dim=1)


def upstream_decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """`VAE.decode_latents`."""
    latents = (1 / vae.config.scaling_factor) * latents
    image = vae.decode(latents.to(vae.dtype)).sample
    image = (image / 2 + 0.5).clamp(0, 1)
    image = image.detach().cpu().permute(0, 2, 3, 1).float().numpy()
    image = (image * 255).round().astype("uint8")
    return image[..., ::-1]


def upstream_inference(engine: MuseTalkEngine, latents: np.ndarray, whisper: np.ndarray) -> np.ndarray:
    """LiveTalking `musereal.inference` for one batch (float32: no `.half()` on a CPU)."""
    timesteps = torch.tensor([0])
    with torch.no_grad():
        audio_feature_batch = engine.net.pe(torch.from_numpy(whisper))
        latent_batch = torch.from_numpy(latents)
        pred_latents = engine.net.unet(latent_batch, timesteps, encoder_hidden_states=audio_feature_batch).sample
        return upstream_decode_latents(engine.vae, pred_latents)


def upstream_get_image_blending(image, face, face_box, mask_array, crop_box):
    body = image
    x, y, x1, y1 = face_box
    x_s, y_s, x_e, y_e = crop_box
    face_large = copy.deepcopy(body[y_s:y_e, x_s:x_e])
    face_large[y - y_s:y1 - y_s, x - x_s:x1 - x_s] = face
    mask_image = cv2.cvtColor(mask_array, cv2.COLOR_BGR2GRAY)
    mask_image = (mask_image / 255).astype(np.float32)
    body[y_s:y_e, x_s:x_e] = cv2.blendLinear(face_large, body[y_s:y_e, x_s:x_e], mask_image, 1 - mask_image)
    return body


# --- VAE ------------------------------------------------------------------------------------------

def test_latents_equal_musetalk_get_latents_for_unet(vae, avatar: Avatar) -> None:
    crop = avatar.face_crops[1]
    want = upstream_latents_for_unet(vae, crop, torch.Generator().manual_seed(7)).numpy()
    got = latents_for_unet(vae, crop[None], seed=7)
    assert got.shape == (1, 8, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_decode_equals_musetalk_decode_latents(vae) -> None:
    latents = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (1, 4, 32, 32)).astype(np.float32))
    with torch.inference_mode():
        got = decode_latents(vae, latents).to(torch.uint8).numpy()
        want = upstream_decode_latents(vae, latents)
    assert got.shape == (1, 256, 256, 3)
    assert np.abs(got.astype(np.int16) - want).max() <= 1 and (got == want).mean() > 0.999


def test_missing_vae_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nothing/ \(HF repo stabilityai/sd-vae-ft-mse"):
        load_vae(tmp_path / "nothing")


# --- avatars --------------------------------------------------------------------------------------

def test_builder_writes_livetalking_musetalk_layout(avatar_dir: Path, avatar: Avatar, vae) -> None:
    assert avatar.meta["model"] == "musetalk" and avatar.n_frames == N_FRAMES and avatar.face_size == 256
    with open(avatar_dir / "coords.pkl", "rb") as f:
        boxes = pickle.load(f)  # MuseTalk's (x1, y1, x2, y2)
    assert [list(b) for b in boxes] == [[x1, y1, x2, y2] for y1, y2, x1, x2 in avatar.coords.tolist()]
    latents = torch.load(avatar_dir / LATENTS_FILE, weights_only=True)
    assert len(latents) == N_FRAMES and all(t.shape == (1, 8, 32, 32) for t in latents)
    np.testing.assert_array_equal(avatar.latents, latents_for_unet(vae, avatar.face_crops, seed=0))
    with open(avatar_dir / MASK_COORDS_FILE, "rb") as f:
        mask_boxes = pickle.load(f)
    for i, ((xs, ys, xe, ye), (x1, y1, x2, y2)) in enumerate(zip(mask_boxes, boxes, strict=True)):
        mask = cv2.imread(str(avatar_dir / MASK_DIR / f"{i:08d}.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (ye - ys, xe - xs)
        assert xs <= x1 < x2 <= xe and ys <= y1 < y2 <= ye
        assert mask[: mask.shape[0] * 2 // 5].max() == 0  # upper half off (the blur reaches 5% in)
        assert mask[y2 - ys - (y2 - y1) // 3, (x1 + x2) // 2 - xs] == 255  # the mouth area is on


def test_livetalking_folder_without_face_imgs_or_metadata(avatar_dir: Path, avatar: Avatar,
                                                           tmp_path: Path) -> None:
    lt = shutil.copytree(avatar_dir, tmp_path / "lt", ignore=shutil.ignore_patterns("face_imgs", "avatar.json"))
    got = load_avatar(lt, full_frames=False, latents=True)
    assert got.meta["model"] == "musetalk" and got.full_frames.shape[0] == 1
    np.testing.assert_array_equal(got.coords, avatar.coords)
    np.testing.assert_array_equal(got.face_crops, avatar.face_crops)  # the same Lanczos crops
    np.testing.assert_array_equal(got.latents, avatar.latents)
    (lt / MASK_DIR / "00000001.png").unlink()
    with pytest.raises(InvalidAvatar, match="2 images in mask/ for 3 frames"):
        load_avatar(lt)
    (lt / LATENTS_FILE).unlink()
    with pytest.raises(InvalidAvatar, match="unreadable latents.pt"):
        load_avatar(lt, full_frames=False, latents=True)


def test_builder_without_vae_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CheckpointError, match="stabilityai/sd-vae-ft-mse"):
        build_avatar("x", astronaut=True, out_dir=tmp_path, face_size=256, model="musetalk",
                     vae_dir=tmp_path / "novae", progress=False)
    assert main(["--astronaut", "--avatar-id", "x", "--out", str(tmp_path), "--model", "musetalk",
                 "--vae-dir", str(tmp_path / "novae")]) == 1
    assert "models/README.md" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- engine and paste-back ------------------------------------------------------------------------

def test_engine_equals_livetalking_inference_batched_or_not(engine: MuseTalkEngine, avatar: Avatar) -> None:
    latents = engine.frame_inputs(avatar)[:2]
    whisper = np.random.default_rng(1).normal(0, 1, (2, 50, 384)).astype(np.float32)
    out = engine.render(latents, whisper)
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8
    for i in range(2):  # upstream, one frame at a time
        want = upstream_inference(engine, latents[i:i + 1], whisper[i:i + 1])[0]
        diff = np.abs(out[i].astype(np.int16) - want)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    # Before the VAE and rounding: the UNet's latents, batched vs one by one, to 1e-5 of their scale.
    with torch.inference_mode():
        inputs = engine.prepare(latents, whisper)
        both = engine.net(*inputs)
        alone = torch.cat([engine.net(*(t[i:i + 1] for t in inputs)) for i in range(2)])
    assert float((both - alone).abs().max()) <= BATCH_TOL * max(1.0, float(alone.abs().max()))


def test_engine_needs_the_latents(engine: MuseTalkEngine, avatar_dir: Path, tmp_path: Path) -> None:
    assert engine.feature_kind == "whisper" and engine.feature_shape == (50, 384)
    with pytest.raises(InvalidAvatar, match="--model musetalk"):
        engine.frame_inputs(load_avatar(avatar_dir, full_frames=False))  # loaded without them
    wav2lip_avatar = build_avatar("w", astronaut=True, out_dir=tmp_path, idle_seconds=0.04, progress=False)
    with pytest.raises(InvalidAvatar, match="--model musetalk"):
        engine.frame_inputs(load_avatar(wav2lip_avatar, full_frames=False, latents=True))
    with pytest.raises(ValueError, match=r"frame inputs must be \(B, 8, 32, 32\) float32"):
        engine.render(np.zeros((1, 256, 256, 3), np.uint8), np.zeros((1, 50, 384), np.float32))


def test_missing_vae_beside_the_unet_is_named(engine: MuseTalkEngine, musetalk_models: Path,
                                              tmp_path: Path) -> None:
    (tmp_path / "musetalkV15").mkdir()
    unet = tmp_path / "musetalkV15" / "unet.pth"
    unet.symlink_to(musetalk_models / "musetalkV15" / "unet.pth")  # same file: the UNet is shared
    with pytest.raises(CheckpointError, match=f"{tmp_path}/sd-vae-ft-mse/"):
        make_engine("musetalk", face_size=256, checkpoint=str(unet))


def test_mask_blend_equals_musetalk_get_image_blending(avatar_dir: Path) -> None:
    avatar = load_avatar(avatar_dir)
    paster = make_paster(avatar)
    assert isinstance(paster, MaskBlendPaster)
    with open(avatar_dir / MASK_COORDS_FILE, "rb") as f:
        mask_boxes = pickle.load(f)
    face = np.random.default_rng(2).integers(0, 256, (256, 256, 3), np.uint8)
    for i in range(avatar.n_frames):
        y1, y2, x1, x2 = (int(v) for v in avatar.coords[i])
        mask_bgr = cv2.imread(str(avatar_dir / MASK_DIR / f"{i:08d}.png"))  # LiveTalking's read_imgs
        res_frame = cv2.resize(face.astype(np.uint8), (x2 - x1, y2 - y1))
        want = upstream_get_image_blending(copy.deepcopy(avatar.full_frames[i]), res_frame,
                                           (x1, y1, x2, y2), mask_bgr, mask_boxes[i])
        before = avatar.full_frames[i].copy()
        got = paster.paste(avatar.full_frames[i], face, i)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(avatar.full_frames[i], before)  # frames are shared: untouched


def test_other_avatars_keep_the_feathered_paste(tmp_path: Path) -> None:
    path = build_avatar("w", astronaut=True, out_dir=tmp_path, idle_seconds=0.04, progress=False)
    assert isinstance(make_paster(load_avatar(path)), FeatheredPaster)
