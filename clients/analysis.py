"""Measurements over an AvatarClient recording: frame rate, gaps, speech timing, lip sync."""

from __future__ import annotations

import numpy as np

from clients.avatar_client import Recording

SPEECH_RMS = 0.01  # received audio above this RMS counts as speech (silence decodes to ~0)


def video_rate(rec: Recording, t_from: float, t_to: float) -> tuple[float, float]:
    """(frames per second, largest gap in seconds) between two arrival times."""
    t = np.array([x for x in rec.video_t if t_from <= x <= t_to])
    if t.size < 2:
        return 0.0, float("inf")
    return (t.size - 1) / (t[-1] - t[0]), float(np.diff(t).max())


def speech_times(rec: Recording, t_from: float, t_to: float = float("inf")) -> list[float]:
    """Arrival times of the speech audio packets (20 ms each) between two times."""
    return [at for at, rms in zip(rec.audio_t, rec.audio_rms, strict=False)
            if t_from <= at <= t_to and rms > SPEECH_RMS]


def first_speech_after(rec: Recording, t: float) -> float | None:
    """Arrival time of the first speech audio packet after `t`."""
    times = speech_times(rec, t)
    return times[0] if times else None


def last_speech_after(rec: Recording, t: float) -> float | None:
    """Arrival time of the last speech audio packet after `t` (None if there is none)."""
    times = speech_times(rec, t)
    return times[-1] if times else None


def speech_seconds(rec: Recording, t_from: float, t_to: float) -> float:
    return 0.02 * len(speech_times(rec, t_from, t_to))


def _grid(times: list[float], values: list[float], t0: float, t1: float, step: float) -> np.ndarray:
    grid = np.arange(t0, t1, step)
    return np.interp(grid, np.asarray(times), np.asarray(values))


def lip_sync_offset(rec: Recording, t_from: float, t_to: float, max_lag_s: float = 0.4) -> tuple[float, float]:
    """(offset in seconds, correlation) of mouth motion against the audio envelope.

    Positive offset: the mouth moves after the sound. Both signals are put on a 10 ms grid by
    arrival time and cross-correlated after removing their means.
    """
    step = 0.01
    mouth = _grid(rec.video_t, rec.mouth, t_from, t_to, step)
    env = _grid(rec.audio_t, rec.audio_rms, t_from, t_to, step)
    # Smooth the envelope to the video's 40 ms resolution before comparing shapes.
    env = np.convolve(env, np.ones(4) / 4, mode="same")
    mouth, env = mouth - mouth.mean(), env - env.mean()
    lags = range(-int(max_lag_s / step), int(max_lag_s / step) + 1)
    best, best_corr = 0, -np.inf
    for lag in lags:
        a = mouth[lag:] if lag >= 0 else mouth[:lag]
        b = env[: env.size - lag] if lag >= 0 else env[-lag:]
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        corr = float(a @ b / denom) if denom > 0 else 0.0
        if corr > best_corr:
            best, best_corr = lag, corr
    return best * step, best_corr


def mouth_activity(rec: Recording, t_from: float, t_to: float) -> float:
    """Standard deviation of the mouth metric over a time range (motion, not level)."""
    vals = [m for t, m in zip(rec.video_t, rec.mouth, strict=True) if t_from <= t <= t_to]
    return float(np.std(vals)) if len(vals) > 1 else 0.0
