"""Generate the speech WAVs of the VAD and recogniser tests (`speech_*.wav`, `speech_wavs.json`).

Two sentences of the bundled Piper voice through the shipped engine
(`deployments.tts.piper_engine.PiperEngine`: 16 kHz mono, no peak normalisation, gain 1.4),
saved as 16-bit PCM with no silence added: each test pads them as it needs. Both start with a
voiced sound, so where the speech begins is unambiguous (Silero hears a soft leading "s" ~0.1 s
late). `speech_wavs.json` maps each file to its text. The tests do not run this script:

    .venv/bin/python tests/data/make_speech_wavs.py

Piper's VITS decoder samples noise, so every run makes different (equally valid) speech.
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from deployments.common.audio import to_int16
from deployments.common.timing import SAMPLE_RATE
from deployments.tts.piper_engine import PiperEngine

HERE = Path(__file__).parent
SENTENCES = {
    "speech_lights.wav": "Please turn on the kitchen lights.",
    "speech_weather.wav": "What is the weather like tomorrow?",
}


def main() -> None:
    engine = PiperEngine()
    for name, text in SENTENCES.items():
        pcm = engine._synthesize(text)
        sf.write(HERE / name, to_int16(pcm), SAMPLE_RATE, subtype="PCM_16")
        print(f"{name}: {pcm.size / SAMPLE_RATE:.2f} s, {text!r}")
    (HERE / "speech_wavs.json").write_text(json.dumps(SENTENCES, indent=2) + "\n")


if __name__ == "__main__":
    main()
