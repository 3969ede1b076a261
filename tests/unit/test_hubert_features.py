"""Ultralight HuBERT windows: ``HubertFeatureEngine`` on random-weight HuBERT models.

No weights are downloaded: ``HubertForCTC`` (the class of ``facebook/hubert-large-ls960-ft``) is
built from a config, saved with a ``Wav2Vec2FeatureExtractor`` in that repo's layout and loaded
through the engine's own constructor. Most tests use a small model with HuBERT-large's
structure (layer-norm conv encoder, stable layer norm) but width 64, so a window is
(16, 2, 32); one test builds the large width (1024, one layer) for the real (16, 32, 32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deployments.asr.hubert_features import (
    HUBERT_REPO,
    LEFT_CONTEXT_ROWS,
    MIN_RIGHT_CONTEXT_SAMPLES,
    HubertFeatureEngine,
    n_rows_for,
    window_rows,
)
from deployments.avatar.models import CheckpointError
from deployments.common.features import LEFT_CONTEXT_SAMPLES, RIGHT_CONTEXT_SAMPLES, pcm_samples_for

pytestmark = pytest.mark.unit

BATCH_TOL = 1e-5  # batched (padded, masked) vs unbatched: the same maths, other BLAS blockings
FRAMES = 5
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
         "conv_dim": (32,) * 7}


def _save(path: Path, **config: Any) -> Path:
    from transformers import HubertConfig, HubertForCTC, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertForCTC(HubertConfig(vocab_size=32, **config)).save_pretrained(path)
    # hubert-large-ls960-ft's preprocessor_config.json: normalise, attention masks.
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("hubert"), feat_extract_norm="layer", do_stable_layer_norm=True,
                 **SMALL)


@pytest.fixture(scope="module")
def engine(hubert_dir: Path) -> HubertFeatureEngine:
    return HubertFeatureEngine(hubert_dir)


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    audio = np.random.default_rng(0).normal(0, 0.1, pcm_samples_for(FRAMES)).astype(np.float32)
    audio.setflags(write=False)  # as a Ray buffer arrives
    return audio


def _upstream_hubert(engine: HubertFeatureEngine, speech: np.ndarray) -> np.ndarray:
    """LiveTalking ``Audio2Feature.get_hubert_from_16k_speech`` for a buffer under 20 s."""
    input_values = engine.feature_extractor(speech, return_tensors="pt", sampling_rate=16000).input_values
    with torch.no_grad():
        hidden = engine.model(input_values).last_hidden_state[0]
    expected_t = (input_values.shape[1] - (400 - 320)) // 320
    assert abs(hidden.shape[0] - expected_t) <= 1
    return hidden[:expected_t].numpy()


def _livetalking_chunks(features: np.ndarray, batch_size: int, win: list[int], start: float,
                        mult: float) -> list[np.ndarray]:
    """LiveTalking ``BaseASR._get_sliced_feature`` + ``_feature2chunks``, transcribed."""
    chunks = []
    for i in range(batch_size):
        center = int((i + start) * mult)
        left, right = int(center - win[0] * mult), int(center + win[1] * mult)
        rows = [min(len(features) - 1, max(0, idx)) for idx in range(left, right)]
        chunks.append(np.asarray([features[r] for r in rows]))
    return chunks


def test_window_rows_hand_computed() -> None:
    # Default context: frame i's own audio starts at row 10 + 2i; 4 frames before, 3 after.
    assert window_rows(2, 29).tolist() == [list(range(2, 18)), list(range(4, 20))]
    # Near the edges (first_row 2, 12 rows): out-of-range rows repeat the edge row.
    assert window_rows(3, 12, first_row=2).tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 11],
    ]


def test_default_context_never_reaches_an_edge() -> None:
    assert LEFT_CONTEXT_SAMPLES == RIGHT_CONTEXT_SAMPLES == 3200 and LEFT_CONTEXT_ROWS == 10
    assert MIN_RIGHT_CONTEXT_SAMPLES == 2000 <= RIGHT_CONTEXT_SAMPLES
    assert n_rows_for(pcm_samples_for(16)) == 51  # LiveTalking's 52-chunk buffer: expected_T
    for n in range(1, 80):
        n_rows = n_rows_for(pcm_samples_for(n))
        unclamped = window_rows(n, 10**6)
        # So LiveTalking's clamping and Ultralight's zero padding give the same windows here.
        assert unclamped.min() >= 0 and unclamped.max() < n_rows
        assert np.array_equal(window_rows(n, n_rows), unclamped)


def test_encode_is_upstream_last_hidden_state(engine: HubertFeatureEngine, pcm: np.ndarray) -> None:
    states = engine.encode(pcm)
    assert states.shape == (n_rows_for(pcm.size), 64) == ((pcm.size - 80) // 320, 64)
    assert states.dtype == np.float32
    np.testing.assert_array_equal(states, _upstream_hubert(engine, pcm))


def test_frame_windows_are_livetalking_windows(engine: HubertFeatureEngine, pcm: np.ndarray) -> None:
    windows = engine.frame_windows(pcm, FRAMES)
    assert windows.shape == (FRAMES, 16, 2, 32) == (FRAMES, *engine.window_shape)
    chunks = _livetalking_chunks(_upstream_hubert(engine, pcm), FRAMES, win=[4, 4], start=10 / 2, mult=2)
    # The renderer's arr.reshape(16, 32, 32), here with width 64 -> (16, 2, 32).
    np.testing.assert_array_equal(windows, np.stack([c.reshape(16, 2, 32) for c in chunks]))
    # Frame 3's rows are 8..23; window row 8 is its own first 20 ms (row 16).
    np.testing.assert_array_equal(windows[3].reshape(16, 64)[8], engine.encode(pcm)[16])


def test_batch_is_one_pass_and_equals_unbatched(engine: HubertFeatureEngine, pcm: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    counts = [FRAMES, 1, 9]
    pcms = [pcm] + [rng.normal(0, 0.1, pcm_samples_for(n)).astype(np.float32) for n in counts[1:]]
    calls = []
    hook = engine.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        batched = engine.frame_windows_batch(pcms, counts)
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 3
    for audio, n, got in zip(pcms, counts, batched, strict=True):
        assert got.shape == (n, 16, 2, 32)
        assert np.abs(got - engine.frame_windows(audio, n)).max() <= BATCH_TOL
    assert engine.frame_windows_batch([], []) == []


def test_group_norm_model_batches_by_length(tmp_path: Path) -> None:
    # HuBERT-base style: the group-norm conv encoder spans time, so padding is not allowed.
    engine = HubertFeatureEngine(_save(tmp_path, feat_extract_norm="group", do_stable_layer_norm=False,
                                       **SMALL))
    rng = np.random.default_rng(2)
    counts = [2, 3, 2]
    pcms = [rng.normal(0, 0.1, pcm_samples_for(n)).astype(np.float32) for n in counts]
    calls = []
    hook = engine.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        batched = engine.frame_windows_batch(pcms, counts)
    finally:
        hook.remove()
    assert [shape[0] for shape in calls] == [2, 1]  # one pass per distinct length
    for audio, n, got in zip(pcms, counts, batched, strict=True):
        assert np.abs(got - engine.frame_windows(audio, n)).max() <= BATCH_TOL


def test_large_width_gives_16x32x32(tmp_path: Path) -> None:
    # HuBERT-large's width (hidden 1024, 16 heads, FFN 4096, 512-channel convs), 1 of its 24 layers.
    large = {"hidden_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 16,
             "intermediate_size": 4096}
    engine = HubertFeatureEngine(_save(tmp_path, feat_extract_norm="layer", do_stable_layer_norm=True,
                                       **large))
    pcm = np.random.default_rng(3).normal(0, 0.1, pcm_samples_for(2)).astype(np.float32)
    assert engine.encode(pcm).shape == (n_rows_for(pcm.size), 1024)
    windows = engine.frame_windows(pcm, 2)
    assert windows.shape == (2, 16, 32, 32) and windows.dtype == np.float32


def test_loads_the_saved_weights(engine: HubertFeatureEngine, hubert_dir: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(hubert_dir / "model.safetensors")  # HubertForCTC keys: "hubert." + lm_head
    own = engine.model.state_dict()
    assert len(own) == sum(k.startswith("hubert.") for k in saved)
    for key, value in own.items():  # not a fresh random init: every tensor is the saved one
        assert torch.equal(value, saved[f"hubert.{key}"]), key


def test_missing_model_folder_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=HUBERT_REPO) as err:
        HubertFeatureEngine(tmp_path / "nope")
    assert "nope" in str(err.value) and "models/hubert-large-ls960-ft" in str(err.value)
    with pytest.raises(CheckpointError, match="cannot load HuBERT"):
        HubertFeatureEngine(tmp_path)  # exists, but empty


def test_pcm_validation(engine: HubertFeatureEngine, pcm: np.ndarray) -> None:
    with pytest.raises(ValueError, match=f"{pcm_samples_for(FRAMES)} samples"):
        engine.frame_windows(pcm[:-640], FRAMES)
    with pytest.raises(ValueError, match="positive integer"):
        engine.frame_windows(pcm, -1)
    with pytest.raises(ValueError, match="positive integer"):
        engine.frame_windows(pcm, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D float"):
        engine.frame_windows(np.stack([pcm, pcm], axis=1), FRAMES)
    with pytest.raises(ValueError, match="1-D float"):
        engine.encode((pcm * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="NaN"):
        engine.encode(np.full(640, np.inf, np.float32))
    with pytest.raises(ValueError, match="400 to 319999"):
        engine.encode(np.zeros(399, np.float32))
    with pytest.raises(ValueError, match="400 to 319999"):
        engine.encode(np.zeros(320_000, np.float32))
    with pytest.raises(ValueError, match="1 pcm buffers for 2"):
        engine.frame_windows_batch([pcm], [FRAMES, FRAMES])
    assert not pcm.flags.writeable  # inputs untouched
