"""Wav2Lip's ``audio.melspectrogram`` in numpy, plus its per-video-frame window slicing.

Re-implements Rudrabha/Wav2Lip ``audio.py`` + ``hparams.py`` (see the parity kit,
``tests/parity/README.md``) without librosa: pre-emphasis, STFT (periodic Hann,
``center=True``), Slaney mel filterbank, dB conversion and symmetric [-4, 4] normalisation.
Everything is computed in float64, as upstream does, and returned as float32.

It runs once per audio chunk per session, so the filterbank and window are built once at
import and the STFT is a single strided ``rfft`` call (any leading batch dimensions allowed).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from deployments.common.timing import FPS, SAMPLE_RATE

N_FFT = 800  # samples: 50 ms FFT frame
HOP_SAMPLES = 200  # 12.5 ms hop -> 80 mel frames per second
WIN_SAMPLES = 800
N_MELS = 80
FMIN_HZ = 55.0
FMAX_HZ = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4]
MEL_FRAMES_PER_S = SAMPLE_RATE // HOP_SAMPLES  # 80
MEL_STEP_SIZE = 16  # mel frames per video-frame window (200 ms)

PadMode = Literal["constant", "reflect"]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa ``htk=False``)."""
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = hz >= 1000.0
    mels[log_t] = min_log_mel + np.log(hz[log_t] / 1000.0) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_hz_to_mel`."""
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = 1000.0 * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def _build_mel_basis() -> np.ndarray:
    """The (80, 401) float32 filterbank, op for op as ``librosa.filters.mel`` (Slaney norm)."""
    fftfreqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / SAMPLE_RATE)
    min_mel, max_mel = _hz_to_mel(np.array([FMIN_HZ, FMAX_HZ]))
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    # librosa stores into a float32 array row by row, then scales in place: keep both roundings.
    weights = np.zeros((N_MELS, 1 + N_FFT // 2), dtype=np.float32)
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : N_MELS + 2] - mel_f[:N_MELS])
    weights *= enorm[:, np.newaxis]
    return weights


def _periodic_hann(n: int) -> np.ndarray:
    """``scipy.signal.get_window("hann", n, fftbins=True)``: the DFT-even Hann window."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


MEL_BASIS = _build_mel_basis()  # (80, 401) float32, exactly librosa's
MEL_BASIS.setflags(write=False)
_MEL_BASIS_F64 = MEL_BASIS.astype(np.float64)  # upstream's np.dot upcasts the float32 basis
_WINDOW = _periodic_hann(WIN_SAMPLES)
# exp(-5 ln 10) as upstream writes it, not the literal 1e-5 (they differ by a few ulps).
_MIN_LEVEL = np.exp(MIN_LEVEL_DB / 20 * np.log(10))


def n_mel_frames(n_samples: int) -> int:
    """Number of mel frames for ``n_samples`` of audio (``center=True`` STFT)."""
    return 1 + n_samples // HOP_SAMPLES


def melspectrogram(
    wav: np.ndarray, pad_mode: PadMode = "constant", *, dtype: npt.DTypeLike = np.float32
) -> np.ndarray:
    """Wav2Lip ``audio.melspectrogram`` for 16 kHz float audio.

    Args:
        wav: Samples in [-1, 1], shape (N,) or (..., N) for a batch of equal-length clips.
        pad_mode: STFT edge padding. ``"constant"`` (zeros) is librosa >= 0.10 and
            LiveTalking; ``"reflect"`` is librosa 0.7 as pinned by Wav2Lip. Only the first
            and last two mel frames differ.
        dtype: Output dtype; ``np.float64`` returns upstream's exact float64 values.

    Returns:
        Array of shape (..., 80, 1 + N // 200), values in [-4, 4].

    Raises:
        ValueError: Empty or non-floating input, an unknown pad mode, or a clip too short
            to reflect-pad.
    """
    x = np.asarray(wav)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"wav must have at least one sample on its last axis, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"wav must be floating point in [-1, 1], got dtype {x.dtype}")
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    if pad_mode == "reflect" and x.shape[-1] <= N_FFT // 2:
        raise ValueError(f"reflect padding needs more than {N_FFT // 2} samples, got {x.shape[-1]}")
    x = x.astype(np.float64)

    # Pre-emphasis, lfilter([1, -0.97], [1], x): y[0] = x[0], y[n] = x[n] - 0.97 x[n-1].
    y = x.copy()
    y[..., 1:] -= PREEMPHASIS * x[..., :-1]

    pad = [(0, 0)] * (y.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
    y = np.pad(y, pad, mode=pad_mode)
    frames = sliding_window_view(y, N_FFT, axis=-1)[..., ::HOP_SAMPLES, :]  # (..., T, 800) view
    magnitude = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1))  # (..., T, 401)

    mel = np.matmul(_MEL_BASIS_F64, np.swapaxes(magnitude, -1, -2))  # (..., 80, T)
    db = 20 * np.log10(np.maximum(_MIN_LEVEL, mel)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB)) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(dtype, copy=False)


def clamp_window_start(start: int, n_frames_mel: int) -> int:
    """Wav2Lip's edge rule: a window running past the end is replaced by the last 16 frames."""
    return n_frames_mel - MEL_STEP_SIZE if start + MEL_STEP_SIZE > n_frames_mel else start


def offline_window_starts(n_frames_mel: int, fps: float = FPS) -> list[int]:
    """Start column of each video frame's mel window, as Wav2Lip ``inference.py`` slices.

    Frame i starts at ``int(i * 80 / fps)``; the first window that would run past the end
    is clamped to ``T - 16`` and is the last one.

    Args:
        n_frames_mel: T, the number of mel frames (columns); at least 16.
        fps: Video frame rate.

    Returns:
        One start per video frame, e.g. ``[0, 3, 6, 9, 12, 16, ...]`` at 25 fps.

    Raises:
        ValueError: T shorter than one window, or a non-positive fps.
    """
    if n_frames_mel < MEL_STEP_SIZE:
        raise ValueError(f"need at least {MEL_STEP_SIZE} mel frames, got {n_frames_mel}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    multiplier = MEL_FRAMES_PER_S / fps
    starts: list[int] = []
    i = 0
    while True:
        start = int(i * multiplier)
        if start + MEL_STEP_SIZE > n_frames_mel:
            starts.append(n_frames_mel - MEL_STEP_SIZE)
            return starts
        starts.append(start)
        i += 1


def slice_windows(mel: np.ndarray, starts: list[int] | np.ndarray) -> np.ndarray:
    """Gather 16-frame windows: ``out[k] = mel[:, starts[k] : starts[k] + 16]``.

    Args:
        mel: (80, T) mel spectrogram.
        starts: Window start columns, each in ``[0, T - 16]``.

    Returns:
        A new (len(starts), 80, 16) array of ``mel``'s dtype.

    Raises:
        ValueError: A start outside ``[0, T - 16]``.
    """
    idx = np.asarray(starts, dtype=np.intp)
    n_cols = mel.shape[-1]
    if idx.size and (idx.min() < 0 or idx.max() > n_cols - MEL_STEP_SIZE):
        raise ValueError(
            f"window starts must lie in [0, {n_cols - MEL_STEP_SIZE}], got {idx.tolist()}"
        )
    cols = idx[:, None] + np.arange(MEL_STEP_SIZE)  # (n, 16) column indices
    return np.ascontiguousarray(np.moveaxis(mel[:, cols], 1, 0))
