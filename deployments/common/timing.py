"""The media clock units every stage agrees on (ARCHITECTURE.md §4)."""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz: all speech inside the system is 16 kHz mono float32 in [-1, 1]
FPS = 25  # video frames per second
AUDIO_CHUNK_S = 0.020  # one audio packet
AUDIO_CHUNK_SAMPLES = 320  # 20 ms at 16 kHz
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640: two audio chunks per video frame
CHUNKS_PER_FRAME = SAMPLES_PER_FRAME // AUDIO_CHUNK_SAMPLES  # 2
