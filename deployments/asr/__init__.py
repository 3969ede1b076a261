"""Audio features for lip sync: the Wav2Lip mel front-end and the per-frame feature extractors.

Nothing here imports Ray, and nothing imports torch until a network kind is built
(`make_feature_engine("hubert" | "whisper")`). The contract (kinds, shapes, the PCM window) is
`deployments.common.features`; the registry of extractors is `deployments.common.models`.
"""

from __future__ import annotations

from deployments.asr.feature_engines import MelEngine, make_feature_engine
from deployments.asr.mel import melspectrogram
from deployments.asr.mel_stream import StreamingMelASR, mel_frame_windows

__all__ = ["MelEngine", "StreamingMelASR", "make_feature_engine", "mel_frame_windows", "melspectrogram"]
