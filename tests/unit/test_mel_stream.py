"""LiveTalking streaming mel windows: ``mel_frame_windows`` and ``StreamingMelASR``.

The golden ``livetalking_stream_chunks`` (48, 80, 16) came from running upstream ``MelASR``
(fps 25, batch 16, l = r = 10): ``warm_up()``, the golden wav as 100 chunks, 3 ``run_step()``s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from deployments.asr.mel_stream import StreamingMelASR, mel_frame_windows, stream_window_starts
from deployments.common.features import LEFT_CONTEXT_SAMPLES, RIGHT_CONTEXT_SAMPLES, pcm_samples_for

pytestmark = pytest.mark.unit

PARITY_TOL = 1e-4  # the kit's float32 tolerance for mel values in [-4, 4]
CHUNK = 320  # samples per 20 ms LiveTalking audio chunk
STEP_FRAMES = 16  # LiveTalking batch_size
STEP_SAMPLES = 2 * STEP_FRAMES * CHUNK  # 10240: new audio per run_step



def test_context_is_ten_chunks_each_side() -> None:
    assert LEFT_CONTEXT_SAMPLES == RIGHT_CONTEXT_SAMPLES == 3200
    assert pcm_samples_for(16) == 16640  # 52 chunks -> 84 mel frames, as upstream


def test_window_starts_match_upstream(kit: tuple[Any, dict[str, Any]]) -> None:
    golden = kit[1]["slicing"]["livetalking_stream"]["golden_starts_frames_0_9_within_a_window"]
    assert stream_window_starts(10, 84).tolist() == golden
    # Frame i's window starts at its own audio: column 16 + 3.2 i = sample 3200 + 640 i.
    assert stream_window_starts(16, 84).tolist()[-1] == int(16 + 15 * 3.2)
    assert stream_window_starts(3, 20).tolist() == [4, 4, 4]  # clamped to T - 16


def test_streaming_asr_reproduces_livetalking(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    asr = StreamingMelASR(batch_size=STEP_FRAMES)
    asr.warm_up()
    wav = arrays["input_wav"]
    for k in range(wav.size // CHUNK):
        asr.put_audio_chunk(wav[k * CHUNK : (k + 1) * CHUNK])
    windows = np.concatenate([asr.run_step() for _ in range(3)])
    assert windows.shape == (48, 80, 16) and windows.dtype == np.float32
    assert np.abs(windows - arrays["livetalking_stream_chunks"]).max() <= PARITY_TOL


def test_mel_frame_windows_reproduce_livetalking(kit: tuple[Any, dict[str, Any]]) -> None:
    arrays, _ = kit
    # Upstream's buffer at step k is this stream's [k * 10240, k * 10240 + 16640) slice.
    warm_up = np.zeros(LEFT_CONTEXT_SAMPLES + RIGHT_CONTEXT_SAMPLES, np.float32)
    stream = np.concatenate([warm_up, arrays["input_wav"]])
    buffers = [stream[k * STEP_SAMPLES :][: pcm_samples_for(16)] for k in range(3)]
    windows = np.concatenate([mel_frame_windows(pcm, 16) for pcm in buffers])
    assert np.abs(windows - arrays["livetalking_stream_chunks"]).max() <= PARITY_TOL


def test_short_chunks_and_read_only_input(kit: tuple[Any, dict[str, Any]]) -> None:
    wav = kit[0]["input_wav"]
    for n_frames in (1, 4, 25):
        pcm = wav[: pcm_samples_for(n_frames)].copy()
        pcm.setflags(write=False)  # Ray hands big arrays over read-only
        windows = mel_frame_windows(pcm, n_frames)
        assert windows.shape == (n_frames, 80, 16) and windows.dtype == np.float32
        assert windows.flags.writeable
    np.testing.assert_array_equal(
        mel_frame_windows(wav[: pcm_samples_for(4)].astype(np.float64), 4),
        mel_frame_windows(wav[: pcm_samples_for(4)], 4),
    )


def test_silent_queue_gives_floor_windows() -> None:
    asr = StreamingMelASR(batch_size=2)
    asr.warm_up()
    assert np.all(asr.run_step() == -4.0)  # an empty queue is silence, as upstream


@pytest.mark.parametrize(
    ("pcm", "n_frames", "match"),
    [
        (np.zeros(pcm_samples_for(4) - 1, np.float32), 4, r"must hold .* = 8960 samples"),
        (np.zeros(pcm_samples_for(4), np.float32), 5, "got 8960"),
        (np.zeros((2, pcm_samples_for(1)), np.float32), 1, "1-D"),
        (np.zeros(pcm_samples_for(1), np.int16), 1, "float"),
        ([0.0] * pcm_samples_for(1), 1, "numpy array"),
        (np.zeros(pcm_samples_for(1), np.float32), 0, "positive integer"),
        (np.zeros(pcm_samples_for(1), np.float32), True, "positive integer"),
        (np.zeros(pcm_samples_for(1), np.float32), 1.0, "positive integer"),
        (np.full(pcm_samples_for(1), np.nan, np.float32), 1, "NaN"),
    ],
)
def test_mel_frame_windows_rejects_bad_input(pcm: Any, n_frames: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mel_frame_windows(pcm, n_frames)


def test_streaming_asr_misuse() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        StreamingMelASR(batch_size=0)
    asr = StreamingMelASR()
    with pytest.raises(RuntimeError, match="warm_up"):
        asr.run_step()
    with pytest.raises(ValueError, match=r"\(320,\)"):
        asr.put_audio_chunk(np.zeros(640, np.float32))
