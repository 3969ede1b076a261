"""Parity of ``deployments.asr.mel`` with Wav2Lip's ``audio.melspectrogram`` and slicing.

Goldens: ``tests/parity/wav2lip_mel.{npz,json}`` (kit README §4.5), made with upstream Wav2Lip
and librosa 0.10.2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deployments.asr.mel import (
    MEL_BASIS,
    melspectrogram,
    n_mel_frames,
    offline_window_starts,
    slice_windows,
)

pytestmark = pytest.mark.unit

PARITY_TOL = 1e-4  # the kit's float32 tolerance for mel values in [-4, 4]
FLOAT64_TOL = 1e-10  # upstream is float64; an exact re-implementation agrees to ~1e-14



def test_mel_basis_is_librosa_slaney_filterbank(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    assert MEL_BASIS.dtype == np.float32 and MEL_BASIS.shape == (80, 401)
    np.testing.assert_array_equal(MEL_BASIS, arrays["mel_basis"])


def test_melspectrogram_matches_golden(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    mel = melspectrogram(arrays["input_wav"])
    assert mel.dtype == np.float32 and mel.shape == (80, 161)
    assert np.abs(mel - arrays["mel"]).max() <= PARITY_TOL
    mel64 = melspectrogram(arrays["input_wav"], dtype=np.float64)
    assert np.abs(mel64 - arrays["mel_float64"]).max() <= FLOAT64_TOL


def test_reflect_padding_matches_librosa_0_7(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    mel = melspectrogram(arrays["input_wav"], pad_mode="reflect")
    assert np.abs(mel - arrays["mel_reflect_pad"]).max() <= PARITY_TOL
    # Padding only reaches the two edge columns on each side.
    np.testing.assert_array_equal(mel[:, 2:-2], melspectrogram(arrays["input_wav"])[:, 2:-2])


@pytest.mark.parametrize("n_samples", [1, 199, 200, 801, 8960, 16640])
def test_frame_count_is_one_plus_len_over_hop(n_samples: int) -> None:
    wav = np.linspace(-0.5, 0.5, n_samples, dtype=np.float32)
    mel = melspectrogram(wav)
    assert mel.shape == (80, n_mel_frames(n_samples)) == (80, 1 + n_samples // 200)
    assert np.all(np.abs(mel) <= 4.0)


def test_batched_input_equals_per_clip(kit: tuple[Any, dict[str, Any]]) -> None:
    wav = kit[0]["input_wav"]
    clips = np.stack([wav[:8960], wav[8960:17920], -wav[:8960]])
    batched = melspectrogram(clips)
    assert batched.shape == (3, 80, 45)
    for clip, mel in zip(clips, batched, strict=True):
        np.testing.assert_array_equal(mel, melspectrogram(clip))


def test_read_only_input_is_accepted_and_untouched(kit: tuple[Any, dict[str, Any]]) -> None:
    wav = kit[0]["input_wav"].copy()
    wav.setflags(write=False)  # as Ray delivers arrays over 100 KiB
    before = wav.copy()
    melspectrogram(wav)
    np.testing.assert_array_equal(wav, before)


def test_silence_maps_to_floor() -> None:
    assert np.all(melspectrogram(np.zeros(3200, np.float32)) == -4.0)


def test_offline_starts_match_wav2lip_inference(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, meta = kit
    golden = meta["slicing"]["wav2lip_offline"]["golden_all_starts_for_the_2s_clip"]
    starts = offline_window_starts(arrays["mel"].shape[1])
    assert starts == golden
    assert len(starts) == meta["slicing"]["wav2lip_offline"]["n_chunks_for_the_2s_clip"]


def test_offline_chunks_match_golden(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    mel = melspectrogram(arrays["input_wav"])
    chunks = slice_windows(mel, offline_window_starts(mel.shape[1])[:10])
    assert chunks.shape == (10, 80, 16) and chunks.flags.c_contiguous
    assert np.abs(chunks - arrays["offline_chunks_frames_0_9"]).max() <= PARITY_TOL


@pytest.mark.parametrize(
    ("wav", "kwargs", "match"),
    [
        (np.zeros(0, np.float32), {}, "at least one sample"),
        (np.zeros(800, np.int16), {}, "floating point"),
        (np.zeros(800, np.float32), {"pad_mode": "edge"}, "pad_mode"),
        (np.zeros(400, np.float32), {"pad_mode": "reflect"}, "reflect padding"),
    ],
)
def test_melspectrogram_rejects_bad_input(
    wav: np.ndarray, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        melspectrogram(wav, **kwargs)


def test_slicing_rejects_bad_arguments() -> None:
    mel = np.zeros((80, 20), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        slice_windows(mel, [5])
    with pytest.raises(ValueError, match="at least 16"):
        offline_window_starts(15)
    with pytest.raises(ValueError, match="fps"):
        offline_window_starts(20, fps=0)
