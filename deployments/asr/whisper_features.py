"""MuseTalk's audio prompts: whisper-tiny encoder hidden states, one (50, 384) prompt per video frame.

MuseTalk conditions its UNet on all hidden states of the whisper-tiny encoder (the embedding
output and the 4 layer outputs, the last after the final LayerNorm: 5 x 384 values per 20 ms
encoder row, 50 rows per second). Each video frame gets 10 rows, 2 per video frame for itself
and 2 frames on either side, flattened so that prompt row = encoder row * 5 + hidden state.

How upstream does it, and what this module follows:

- LiveTalking (``avatars/musetalk/whisper/audio2feature.py`` ``audio2feat`` and
  ``avatars/audio_features/whisper.py`` ``WhisperASR.run_step``, commit a5a77f4c): the buffer
  is ``l`` 20 ms chunks of past audio, ``2 * batch_size`` new chunks and ``r`` chunks of look-
  ahead; the feature extractor pads it to 30 s, one encoder pass gives (1500, 5, 384), and
  ``_feature2chunks(win=[2, 3], start=l / 2, feature_idx_multiplier=2)`` takes rows
  ``int(2 (i + l/2)) - 4 .. + 5`` for frame i, each clamped to [0, 1499], then
  ``reshape(-1, 384)``. Row ``l + 2 i`` is where frame i's own 40 ms start. This is what
  :func:`prompt_rows` and :meth:`WhisperFeatureEngine.frame_prompts` compute, with ``l = r = 10``.
- MuseTalk v1.5 offline (``musetalk/utils/audio_processor.py`` ``get_whisper_chunk``): the
  same rows ``2 f - 4 .. 2 f + 5`` for frame f of a whole clip, but the features are first cut
  to the clip's length and *zero*-padded (4 rows before, 12 after) instead of clamped.

Uncertainties, stated plainly: (1) the edge rule. We clamp to the rows the buffer covers
(``ceil(samples / 320)``), LiveTalking clamps to the 1500 rows of the padded 30 s and MuseTalk
zero-pads. With the default 200 ms of context on each side no window ever reaches an edge
(rows ``l - 4 .. l + 2 n + 3`` are needed, the buffer has rows ``0 .. l + 2 n + r - 1``), so the
three agree; they would differ only for a buffer with less context, which this module refuses.
(2) The encoder always runs on 30 s (whisper's positional table is fixed), so its cost is per
call, not per second of audio: batch sessions with
:meth:`WhisperFeatureEngine.frame_prompts_batch`. (3) The encoder is bidirectional, so every row
depends on the whole buffer: the output equals LiveTalking's only for the same buffer (same
``l``, ``r`` and frames per step), not for any other chunking. (4) LiveTalking runs whisper in
float16 on CUDA (``dtype=torch.float16`` here); float16 was not tested on this CPU-only box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deployments.asr._pretrained import check_audio, load_pretrained
from deployments.common.features import LEFT_CONTEXT_SAMPLES, FeatureKind, check_pcm_batch
from deployments.common.models import FEATURE_MODELS
from deployments.common.timing import SAMPLE_RATE, SAMPLES_PER_FRAME

WHISPER_REPO = FEATURE_MODELS.get("whisper").repo  # HF repo whose folder layout ``model_dir`` must have
DEFAULT_MODEL_DIR = FEATURE_MODELS.get("whisper").model_dir  # LiveTalking's path (models/README.md)

SAMPLES_PER_ROW = 320  # 20 ms: 10 ms mel hop x the encoder's stride-2 conv -> 50 rows per second
ROWS_PER_FRAME = SAMPLES_PER_FRAME // SAMPLES_PER_ROW  # 2 encoder rows per 40 ms video frame
PAD_FRAMES_LEFT = 2  # MuseTalk ``audio_padding_length_left``: video frames of past audio
PAD_FRAMES_RIGHT = 2  # ``audio_padding_length_right``: video frames of future audio
ROWS_PER_PROMPT = ROWS_PER_FRAME * (PAD_FRAMES_LEFT + 1 + PAD_FRAMES_RIGHT)  # 10

LEFT_CONTEXT_ROWS = LEFT_CONTEXT_SAMPLES // SAMPLES_PER_ROW  # 10: row where frame 0's audio starts
# The window alone needs 80 ms after the last frame (2 video frames); the rest of the 200 ms is
# what upstream gives the bidirectional encoder, so the last frames see the same context.
MIN_RIGHT_CONTEXT_SAMPLES = PAD_FRAMES_RIGHT * SAMPLES_PER_FRAME  # 1280


def n_rows_for(n_samples: int) -> int:
    """Encoder rows that belong to ``n_samples`` of audio: one per started 20 ms."""
    return -(-n_samples // SAMPLES_PER_ROW)


def prompt_rows(n_frames: int, n_rows: int, *, first_row: int = LEFT_CONTEXT_ROWS) -> np.ndarray:
    """Encoder rows of each frame's prompt: LiveTalking ``_feature2chunks(win=[2, 3], x2)``.

    Frame i's rows are ``first_row + 2 i - 4 .. first_row + 2 i + 5``, each clamped to
    ``[0, n_rows - 1]`` (LiveTalking repeats the edge row; see the module docstring).

    Args:
        n_frames: Video frames.
        n_rows: Encoder rows available.
        first_row: Row where frame 0's own audio starts (``l`` for LiveTalking's ``start=l/2``).

    Returns:
        (n_frames, 10) int array, e.g. rows 6..15 for frame 0 with the default context.
    """
    centers = first_row + ROWS_PER_FRAME * np.arange(n_frames, dtype=np.intp)
    offsets = np.arange(-ROWS_PER_FRAME * PAD_FRAMES_LEFT, ROWS_PER_FRAME * (PAD_FRAMES_RIGHT + 1))
    return np.clip(centers[:, None] + offsets, 0, n_rows - 1)


class WhisperFeatureEngine:
    """Whisper encoder hidden states and MuseTalk's per-frame audio prompts.

    Loads a local ``openai/whisper-tiny`` folder (``config.json``, weights and
    ``preprocessor_config.json``) with ``local_files_only=True``; only the encoder is kept.

        engine = WhisperFeatureEngine("models/whisper", device="cuda", dtype=torch.float16)
        prompts = engine.frame_prompts(pcm, n_frames)   # (n_frames, 50, 384) float32

    Args:
        model_dir: The model folder.
        device: Torch device for the encoder.
        dtype: Encoder dtype; LiveTalking uses float16 on CUDA. Outputs are always float32.

    Raises:
        CheckpointError: The folder is missing or does not hold a loadable whisper model.
    """

    kind: FeatureKind = "whisper"

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        """Load the feature extractor and the encoder (see the class docstring)."""
        from transformers import (  # heavy: only when used
            WhisperFeatureExtractor,
            WhisperModel,
        )

        self.feature_extractor, model = load_pretrained(
            model_dir, what="whisper", default_dir=DEFAULT_MODEL_DIR, repo=WHISPER_REPO,
            extractor_cls=WhisperFeatureExtractor, model_cls=WhisperModel)
        self.device = torch.device(device)
        self.dtype = dtype
        self.encoder = model.get_encoder().to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        del model  # the decoder is never used
        self.hidden_size = int(self.encoder.config.d_model)  # 384 for whisper-tiny
        self.n_hidden_states = int(self.encoder.config.encoder_layers) + 1  # 5: embeddings + 4 layers
        self.max_samples = int(self.feature_extractor.n_samples)  # 480000: the 30 s input window

    @property
    def prompt_shape(self) -> tuple[int, int]:
        """Shape of one frame's prompt: (50, 384) for whisper-tiny."""
        return ROWS_PER_PROMPT * self.n_hidden_states, self.hidden_size

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """All encoder hidden states of a clip, trimmed to the rows it covers.

        Args:
            pcm: 16 kHz mono float samples, at most 30 s. Never modified.

        Returns:
            float32 (ceil(len / 320), 5, 384): row t, hidden state k (0 = embeddings).

        Raises:
            ValueError: Not a finite, non-empty 1-D float array of at most 30 s.
        """
        return self._encode([self._check(pcm)])[0]

    def frame_prompts(self, pcm: np.ndarray, n_frames: int) -> np.ndarray:
        """MuseTalk's audio prompt for each of ``n_frames`` video frames.

        Args:
            pcm: ``LEFT_CONTEXT_SAMPLES`` of past audio, ``n_frames * 640`` samples belonging to
                the frames, then ``RIGHT_CONTEXT_SAMPLES`` of look-ahead (16 kHz float). Never
                modified (it may be a read-only Ray buffer).
            n_frames: Video frames (25 fps) the middle part covers.

        Returns:
            float32 (n_frames, 50, 384); ``out[i, 5 j + k]`` is hidden state k of row
            ``prompt_rows(n_frames, ...)[i, j]``.

        Raises:
            ValueError: A bad ``n_frames``, or ``pcm`` not of ``common.features.pcm_samples_for(n_frames)``
                finite float samples.
        """
        return self.frame_prompts_batch([pcm], [n_frames])[0]

    def frame_prompts_batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        """:meth:`frame_prompts` for several buffers with ONE encoder pass over all of them.

        Each buffer is padded to 30 s on its own, so the batch gives the unbatched results
        (to float rounding, about 1e-6).

        Args:
            pcms: One buffer per request, as for :meth:`frame_prompts`.
            n_frames: Frames of each request.

        Returns:
            One float32 (n_frames[b], 50, 384) array per request, in order.

        Raises:
            ValueError: Lists of different lengths, or any request that :meth:`frame_prompts`
                would refuse.
        """
        clips = [self._check(c) for c in check_pcm_batch(pcms, n_frames)]
        if not clips:
            return []
        out = []
        for states, n in zip(self._encode(clips), n_frames, strict=True):
            rows = prompt_rows(int(n), len(states))
            out.append(states[rows].reshape(int(n), *self.prompt_shape))  # fancy indexing copies
        return out

    batch = frame_prompts_batch  # the `FeatureEngine` contract

    def _check(self, pcm: object) -> np.ndarray:
        return check_audio(pcm, min_samples=1, max_samples=self.max_samples,
                           limit="whisper takes at most 30 s per pass")

    @torch.inference_mode()
    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """One encoder pass over validated clips; each result trimmed to its own rows."""
        features = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = features.input_features.to(self.device, self.dtype)
        states = self.encoder(inputs, output_hidden_states=True).hidden_states
        n_keep = max(n_rows_for(c.size) for c in clips)
        # (B, rows, 5, d): LiveTalking's torch.stack(hidden_states, dim=2), cut before the copy.
        stacked = torch.stack([s[:, :n_keep] for s in states], dim=2).float().cpu().numpy()
        return [stacked[b, : n_rows_for(c.size)] for b, c in enumerate(clips)]
