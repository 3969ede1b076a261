"""MuseTalk whisper prompts: ``WhisperFeatureEngine`` on a random-weight whisper-tiny.

No weights are downloaded: conftest's ``whisper_dir`` builds the model from a config with
whisper-tiny's encoder dims and saves it in the ``openai/whisper-tiny`` layout; it is loaded
through the engine's own constructor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deployments.asr.whisper_features import (
    LEFT_CONTEXT_ROWS,
    MIN_RIGHT_CONTEXT_SAMPLES,
    WHISPER_REPO,
    WhisperFeatureEngine,
    n_rows_for,
    prompt_rows,
)
from deployments.avatar.models import CheckpointError
from deployments.common.features import LEFT_CONTEXT_SAMPLES, RIGHT_CONTEXT_SAMPLES, pcm_samples_for

pytestmark = pytest.mark.unit

BATCH_TOL = 1e-5  # batched vs unbatched: the same maths, other BLAS blockings
FRAMES = 4


@pytest.fixture(scope="module")
def engine(whisper_dir: Path) -> WhisperFeatureEngine:
    return WhisperFeatureEngine(whisper_dir)


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    audio = np.random.default_rng(0).normal(0, 0.1, pcm_samples_for(FRAMES)).astype(np.float32)
    audio.setflags(write=False)  # as a Ray buffer arrives
    return audio


@pytest.fixture(scope="module")
def upstream(engine: WhisperFeatureEngine, pcm: np.ndarray) -> np.ndarray:
    """LiveTalking ``Audio2Feature.audio2feat``: pad to 30 s, hidden states stacked on dim 2."""
    features = engine.feature_extractor(pcm, return_tensors="pt", sampling_rate=16000).input_features
    with torch.no_grad():
        hidden = engine.encoder(features, output_hidden_states=True).hidden_states
    return torch.stack(hidden, dim=2).squeeze(0).numpy()


@pytest.fixture(scope="module")
def prompts(engine: WhisperFeatureEngine, pcm: np.ndarray) -> np.ndarray:
    return engine.frame_prompts(pcm, FRAMES)


def _livetalking_chunks(features: np.ndarray, batch_size: int, win: list[int], start: float,
                        mult: float) -> list[np.ndarray]:
    """LiveTalking ``BaseASR._get_sliced_feature`` + ``WhisperASR._feature2chunks``, transcribed."""
    chunks = []
    for i in range(batch_size):
        center = int((i + start) * mult)
        left, right = int(center - win[0] * mult), int(center + win[1] * mult)
        rows = [min(len(features) - 1, max(0, idx)) for idx in range(left, right)]
        chunks.append(np.asarray([features[r] for r in rows]).reshape(-1, 384))
    return chunks


def test_prompt_rows_hand_computed() -> None:
    # Default context: frame i's own audio starts at row 10 + 2i; 2 frames before, 2 after.
    assert prompt_rows(2, 28).tolist() == [list(range(6, 16)), list(range(8, 18))]
    # Near the edges (first_row 2, 8 rows): out-of-range rows repeat the edge row.
    assert prompt_rows(3, 8, first_row=2).tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7, 7, 7],
        [2, 3, 4, 5, 6, 7, 7, 7, 7, 7],
    ]


def test_default_context_never_reaches_an_edge() -> None:
    assert LEFT_CONTEXT_SAMPLES == RIGHT_CONTEXT_SAMPLES == 3200 and LEFT_CONTEXT_ROWS == 10
    assert MIN_RIGHT_CONTEXT_SAMPLES <= RIGHT_CONTEXT_SAMPLES
    for n in range(1, 80):
        n_rows = n_rows_for(pcm_samples_for(n))
        unclamped = prompt_rows(n, 10**6)
        # So LiveTalking's clamping and MuseTalk's zero padding give the same windows here.
        assert unclamped.min() >= 0 and unclamped.max() < n_rows
        assert np.array_equal(prompt_rows(n, n_rows), unclamped)


def test_encode_is_livetalking_audio2feat(engine: WhisperFeatureEngine, pcm: np.ndarray,
                                          upstream: np.ndarray) -> None:
    states = engine.encode(pcm)
    assert states.shape == (pcm.size // 320, 5, 384) and states.dtype == np.float32
    assert upstream.shape == (1500, 5, 384)  # upstream keeps the rows of the 30 s padding
    np.testing.assert_array_equal(states, upstream[: len(states)])
    # Hidden state 0 is the embedding output, 4 the final-LayerNorm output.
    assert not np.allclose(states[:, 0], states[:, 4])


def test_frame_prompts_are_livetalking_windows(engine: WhisperFeatureEngine, prompts: np.ndarray,
                                               upstream: np.ndarray) -> None:
    assert prompts.shape == (FRAMES, 50, 384) and engine.prompt_shape == (50, 384)
    assert prompts.dtype == np.float32
    chunks = _livetalking_chunks(upstream, FRAMES, win=[2, 3], start=10 / 2, mult=2)
    np.testing.assert_array_equal(prompts, np.stack(chunks))
    # Row layout: prompt row 5 j + k = hidden state k of window row j (frame 1: rows 8..17).
    np.testing.assert_array_equal(prompts[1, 5 * 3 + 2], upstream[11, 2])


def test_batch_is_one_pass_and_equals_unbatched(engine: WhisperFeatureEngine, pcm: np.ndarray,
                                                prompts: np.ndarray) -> None:
    counts = [FRAMES, 7]
    pcms = [pcm, np.random.default_rng(1).normal(0, 0.1, pcm_samples_for(7)).astype(np.float32)]
    calls = []
    hook = engine.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        batched = engine.frame_prompts_batch(pcms, counts)
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 2
    unbatched = [prompts, engine.frame_prompts(pcms[1], counts[1])]
    for n, got, want in zip(counts, batched, unbatched, strict=True):
        assert got.shape == want.shape == (n, 50, 384)
        assert np.abs(got - want).max() <= BATCH_TOL
    assert engine.frame_prompts_batch([], []) == []


def test_loads_the_saved_encoder_weights(engine: WhisperFeatureEngine, whisper_dir: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(whisper_dir / "model.safetensors")  # WhisperForConditionalGeneration keys
    own = engine.encoder.state_dict()
    assert len(own) == sum(k.startswith("model.encoder.") for k in saved)
    for key, value in own.items():  # not a fresh random init: every tensor is the saved one
        assert torch.equal(value, saved[f"model.encoder.{key}"]), key


def test_missing_model_folder_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=WHISPER_REPO) as err:
        WhisperFeatureEngine(tmp_path / "nope")
    assert "nope" in str(err.value) and "models/whisper" in str(err.value)
    with pytest.raises(CheckpointError, match="cannot load whisper"):
        WhisperFeatureEngine(tmp_path)  # exists, but empty


def test_pcm_validation(engine: WhisperFeatureEngine, pcm: np.ndarray) -> None:
    with pytest.raises(ValueError, match=f"{pcm_samples_for(FRAMES)} samples"):
        engine.frame_prompts(pcm[:-1], FRAMES)
    with pytest.raises(ValueError, match="positive integer"):
        engine.frame_prompts(pcm, 0)
    with pytest.raises(ValueError, match="positive integer"):
        engine.frame_prompts(pcm, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D float"):
        engine.frame_prompts(pcm.reshape(1, -1), FRAMES)
    with pytest.raises(ValueError, match="1-D float"):
        engine.encode((pcm * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="NaN"):
        engine.encode(np.full(640, np.nan, np.float32))
    with pytest.raises(ValueError, match="30 s"):
        engine.encode(np.zeros(480_001, np.float32))
    with pytest.raises(ValueError, match="2 pcm buffers for 1"):
        engine.frame_prompts_batch([pcm, pcm], [FRAMES])
    assert np.isfinite(pcm).all() and not pcm.flags.writeable  # inputs untouched
