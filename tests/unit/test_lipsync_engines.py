"""The lip-sync engines (`deployments.avatar.lipsync`) on real avatar crops.

Each network gets every weight from the parity kit's fill rule (`tests/parity/fill_rule.py`),
saved in its real published checkpoint layout and loaded through `make_engine`. The tests check the
engine contract (shapes, purity, batched == one by one), that the model inputs are exactly the
tensors LiveTalking / Ultralight build by hand, and how the network's crop goes back into the
avatar's crop. `weights_rule` comes from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import torch

from deployments.avatar.assets import Avatar, load_avatar
from deployments.avatar.builder import build_avatar
from deployments.avatar.lipsync import LipSyncEngine, make_engine
from deployments.avatar.lipsync.ultralight import INNER
from deployments.avatar.models import build_model
from deployments.avatar.parametric import ParametricLipSync
from deployments.common.errors import CheckpointError
from deployments.common.features import FEATURE_SHAPES
from deployments.common.models import LIPSYNC_MODELS, SERVED_MODELS, lipsync_model

pytestmark = pytest.mark.unit

NETWORKS = ("wav2lip96", "wav2lip256", "ultralight_hubert")
BATCH = 2  # wav2lip256 costs ~1.3 s a frame on 2 CPU cores
FLOAT_TOL = 1e-5  # on the network's [0, 1] output
EngineFactory = Callable[..., LipSyncEngine]


@pytest.fixture(scope="module")
def avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    """A real avatar: the astronaut's 5-frame idle loop with 256 x 256 face crops."""
    out = tmp_path_factory.mktemp("avatars")
    return load_avatar(build_avatar("t", astronaut=True, out_dir=out, idle_seconds=0.2, progress=False),
                       full_frames=False)


@pytest.fixture(scope="module")
def checkpoint(weights_rule: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`checkpoint(name)`: the path of rule-filled weights in the real layout (written once)."""
    folder, paths = tmp_path_factory.mktemp("checkpoints"), {}

    def get(name: str) -> str:
        if name not in paths:
            state = {k: torch.from_numpy(weights_rule.state_dict_value(
                         k, tuple(v.shape), np.int64 if v.dtype == torch.int64 else np.float32))
                     for k, v in build_model(name).state_dict().items()}
            if name.startswith("wav2lip"):  # save_checkpoint of an nn.DataParallel model
                obj = {"state_dict": {f"module.{k}": v for k, v in state.items()},
                       "optimizer": {}, "global_step": 0, "global_epoch": 0}
            else:  # Ultralight's head train.py, head key names
                obj = {"epoch": 0, "model": state, "optimizer": {}}
            paths[name] = str(folder / f"{name}.pth")
            torch.save(obj, paths[name])
        return paths[name]

    return get


@pytest.fixture(scope="module")
def engine(checkpoint: Callable[[str], str]) -> EngineFactory:
    """`engine(name, face_size=256, fp16=False)`: a CPU engine, built once per arguments."""
    cache: dict[tuple, LipSyncEngine] = {}

    def get(name: str, face_size: int = 256, fp16: bool = False) -> LipSyncEngine:
        if (name, face_size, fp16) not in cache:
            cache[name, face_size, fp16] = make_engine(
                name, face_size=face_size, checkpoint=checkpoint(name), device="cpu", fp16=fp16)
        return cache[name, face_size, fp16]

    return get


def features_for(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Random feature windows of the model's kind (mel in its [-4, 4] range)."""
    rng = np.random.default_rng(seed)
    kind = lipsync_model(name).feature_kind
    shape = (n, *FEATURE_SHAPES[kind])
    if kind == "mel":
        return rng.uniform(-4, 4, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def truncate(pred: np.ndarray) -> np.ndarray:
    """Upstream's `(pred * 255).astype(np.uint8)` of a [0, 255] float array."""
    return np.clip(pred, 0, 255).astype(np.uint8)


def livetalking_inputs(name: str, crop: np.ndarray, feature: np.ndarray) -> tuple[torch.Tensor, ...]:
    """One crop's model inputs built the upstream way, step by step (README §4.1–4.3)."""
    if name.startswith("wav2lip"):
        size = 96 if name == "wav2lip96" else 256
        face = cv2.resize(crop, (size, size))  # genavatar: the box cv2.resize'd to img_size
        img_batch = np.asarray([face])
        img_masked = img_batch.copy()
        img_masked[:, face.shape[0] // 2:] = 0
        img_batch = np.concatenate((img_masked, img_batch), axis=3) / 255.
        mel_batch = np.reshape(np.asarray([feature]), [1, 80, 16, 1])
        return (torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2))),
                torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2))))
    crop_img = cv2.resize(crop, (168, 168), cv2.INTER_AREA)  # sic: upstream's positional flag
    img_real_ex = crop_img[4:164, 4:164].copy()
    img_masked = cv2.rectangle(img_real_ex.copy(), (5, 5, 150, 145), (0, 0, 0), -1)
    img_masked = img_masked.transpose(2, 0, 1).astype(np.float32)
    img_real_ex = img_real_ex.transpose(2, 0, 1).astype(np.float32)
    img_concat_t = torch.cat([torch.from_numpy(img_real_ex / 255.0),
                              torch.from_numpy(img_masked / 255.0)], dim=0)[None]
    return img_concat_t, torch.from_numpy(feature[None])


@pytest.mark.parametrize("name", NETWORKS)
def test_render_is_pure_and_batch_invariant(name: str, engine: EngineFactory, avatar: Avatar) -> None:
    eng = engine(name)
    crops, feats = avatar.face_crops[:BATCH], features_for(name, BATCH)
    before = crops.copy()
    out = eng.render(crops, feats)
    assert out.shape == crops.shape and out.dtype == np.uint8
    assert np.array_equal(crops, before), "render wrote into its input"
    assert not np.array_equal(out, crops), "the network changed nothing"
    one = np.concatenate([eng.render(crops[i:i + 1], feats[i:i + 1]) for i in range(BATCH)])
    assert np.abs(out.astype(np.int16) - one).max() <= 1
    pred = eng.predict(crops, feats) / 255
    pred_one = np.concatenate([eng.predict(crops[i:i + 1], feats[i:i + 1]) for i in range(BATCH)]) / 255
    assert np.abs(pred - pred_one).max() <= FLOAT_TOL


@pytest.mark.parametrize("name", NETWORKS)
def test_prepare_equals_livetalking_tensors(name: str, engine: EngineFactory, avatar: Avatar) -> None:
    crop, feat = avatar.face_crops[3], features_for(name, 1, seed=3)[0]
    got = engine(name).prepare(crop[None], feat[None])
    want = livetalking_inputs(name, crop, feat)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape
        assert torch.equal(g, w)


def test_wav2lip_at_native_size_returns_the_prediction(engine: EngineFactory, avatar: Avatar) -> None:
    eng = engine("wav2lip96", face_size=96, fp16=True)  # fp16 is CUDA-only: float32 here
    assert eng.dtype == torch.float32
    assert eng.net is engine("wav2lip96").net  # one copy of the weights for both avatar sizes
    crops = np.stack([cv2.resize(c, (96, 96)) for c in avatar.face_crops[:BATCH]])
    feats = features_for("wav2lip96", BATCH, seed=1)
    assert np.array_equal(eng.render(crops, feats), truncate(eng.predict(crops, feats)))


def test_ultralight_pastes_into_the_inner_160(engine: EngineFactory, avatar: Avatar) -> None:
    eng = engine("ultralight_hubert", face_size=168)
    crops = np.stack([cv2.resize(c, (168, 168)) for c in avatar.face_crops[:BATCH]])
    feats = features_for("ultralight_hubert", BATCH, seed=2)
    out = eng.render(crops, feats)
    assert np.array_equal(out[:, INNER, INNER], truncate(eng.predict(crops, feats)))
    border = np.ones((168, 168), bool)
    border[INNER, INNER] = False
    assert np.array_equal(out[:, border], crops[:, border])


def test_parametric_engine_equals_parametric_lipsync(avatar: Avatar) -> None:
    eng = make_engine("parametric", face_size=avatar.face_size, mouth_box=avatar.mouth_box)
    assert eng.feature_kind == "mel" and eng.face_size == 256
    crops, feats = avatar.face_crops, features_for("parametric", avatar.n_frames, seed=4)
    want = ParametricLipSync(avatar.face_size, avatar.mouth_box).render(crops, feats)
    assert not np.array_equal(want, crops)  # the features do open the mouth
    assert np.array_equal(eng.render(crops, feats), want)


@pytest.mark.parametrize("name", NETWORKS)
def test_missing_checkpoint_names_the_file(name: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=lipsync_model(name).checkpoint_layout.split()[0]):
        make_engine(name, face_size=256, checkpoint=None)
    missing = tmp_path / "nothing_here.pth"
    with pytest.raises(CheckpointError, match="nothing_here.pth"):
        make_engine(name, face_size=256, checkpoint=str(missing))


def test_registry_routes_features() -> None:
    assert set(SERVED_MODELS) == {"parametric", *NETWORKS, "musetalk"}  # musetalk: test_musetalk_engine.py
    assert [lipsync_model(m).feature_kind for m in SERVED_MODELS] == ["mel", "mel", "mel", "hubert", "whisper"]
    assert [lipsync_model(m).needs_torch for m in SERVED_MODELS] == [False, True, True, True, True]
    with pytest.raises(ValueError, match="wav2lip256"):
        make_engine("wav2lip512", face_size=256)


def test_livetalking_names_are_aliases() -> None:
    assert LIPSYNC_MODELS.aliases == {"wav2lip": "wav2lip256", "ultralight": "ultralight_hubert"}
    assert lipsync_model("wav2lip") is lipsync_model("wav2lip256")
    with pytest.raises(CheckpointError, match="models/wav2lip.pth"):
        make_engine("wav2lip", face_size=256, checkpoint=None)


def test_bad_batches_are_rejected(engine: EngineFactory, avatar: Avatar) -> None:
    eng = engine("wav2lip96")
    crops = avatar.face_crops[:2]
    with pytest.raises(ValueError, match="mel features"):
        eng.render(crops, np.zeros((2, 16, 32, 32), np.float32))
    with pytest.raises(ValueError, match="mel features"):
        eng.render(crops, np.zeros((1, 80, 16), np.float32))
    with pytest.raises(ValueError, match=r"frame inputs must be \(B, 256, 256, 3\) uint8"):
        eng.render(crops[:, :128, :128], np.zeros((2, 80, 16), np.float32))
    assert eng.render(crops[:0], np.zeros((0, 80, 16), np.float32)).shape == (0, 256, 256, 3)
