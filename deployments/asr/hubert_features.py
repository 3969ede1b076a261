"""Ultralight's audio windows: HuBERT-large features, one (16, 32, 32) window per video frame.

Ultralight-Digital-Human and LiveTalking feed the lip-sync UNet the **last hidden state** of
``HubertModel`` loaded from ``facebook/hubert-large-ls960-ft`` (1024 values per 20 ms row,
50 rows per second): ``hubert_model(input_values).last_hidden_state`` in both Ultralight
``data_utils/hubert.py`` and LiveTalking ``avatars/ultralight/audio2feature.py``, after the
``Wav2Vec2Processor``'s zero-mean / unit-variance normalisation of the whole buffer.

Windows (LiveTalking ``avatars/audio_features/hubert.py`` ``HubertASR.run_step``, commit
a5a77f4c, created by ``ultralight_avatar.py`` with ``audio_feat_length=[4, 4]``): the buffer is
``l`` 20 ms chunks of past audio, ``2 * batch_size`` new chunks and ``r`` chunks of look-ahead;
``_feature2chunks(win=[4, 4], start=l / 2, feature_idx_multiplier=2)`` takes rows
``2c - 8 .. 2c + 7`` with ``c = i + l/2`` for frame i (row ``2c = l + 2 i`` is where frame i's own
40 ms start), each clamped to ``[0, rows - 1]``, and the renderer reshapes the (16, 1024)
block to (16, 32, 32): 4 video frames before the frame, the frame and 3 after, 2 rows each.
:func:`window_rows` and :meth:`HubertFeatureEngine.frame_windows` compute exactly that.

Notes and uncertainties: (1) Ultralight's own offline ``inference.py`` zero-pads at the clip
edges instead of clamping; with the default 200 ms of context on each side no window reaches
an edge (rows ``l - 8 .. l + 2 n + 5`` are needed, the buffer has rows
``0 .. l + 2 n + r - 2``), so both agree. (2) Upstream
splits buffers of 20 s or more into clips; we refuse them instead (a streaming step is ~1 s).
(3) LiveTalking skips HuBERT for a step whose audio and previous step's audio are all silence;
that belongs to the caller, not this engine. (4) HuBERT is bidirectional and normalises the whole
buffer, so features equal LiveTalking's only for the same buffer (same ``l``, ``r``, step size).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deployments.asr._pretrained import check_audio, load_pretrained
from deployments.common.errors import CheckpointError
from deployments.common.features import LEFT_CONTEXT_SAMPLES, FeatureKind, check_pcm_batch
from deployments.common.models import FEATURE_MODELS
from deployments.common.timing import SAMPLE_RATE, SAMPLES_PER_FRAME

HUBERT_REPO = FEATURE_MODELS.get("hubert").repo  # HF repo whose folder layout ``model_dir`` must have
DEFAULT_MODEL_DIR = FEATURE_MODELS.get("hubert").model_dir  # LiveTalking's path (models/README.md)

SAMPLES_PER_ROW = 320  # 20 ms: total stride of HuBERT's conv feature encoder (5*2*2*2*2*2*2)
RECEPTIVE_FIELD_SAMPLES = 400  # row t sees samples [320 t, 320 t + 400)
ROWS_PER_FRAME = SAMPLES_PER_FRAME // SAMPLES_PER_ROW  # 2 rows per 40 ms video frame
WINDOW_FRAMES_LEFT = 4  # LiveTalking ``audio_feat_length[0]`` for Ultralight
WINDOW_FRAMES_RIGHT = 4  # ``audio_feat_length[1]``: the window ends 3 frames after the frame's own
ROWS_PER_WINDOW = ROWS_PER_FRAME * (WINDOW_FRAMES_LEFT + WINDOW_FRAMES_RIGHT)  # 16
WINDOW_COLUMNS = 32  # the renderer's reshape: 1024 values -> 32 x 32
MAX_PCM_SAMPLES = 320_000 - 1  # 20 s: upstream splits longer input into clips; we refuse it

LEFT_CONTEXT_ROWS = LEFT_CONTEXT_SAMPLES // SAMPLES_PER_ROW  # 10: row where frame 0's audio starts
# The window alone needs 3 frames (120 ms) after the last frame plus the conv's 80-sample
# overhang; the rest of the 200 ms is the context upstream gives the bidirectional encoder.
MIN_RIGHT_CONTEXT_SAMPLES = (WINDOW_FRAMES_RIGHT - 1) * SAMPLES_PER_FRAME + (
    RECEPTIVE_FIELD_SAMPLES - SAMPLES_PER_ROW)  # 2000


def n_rows_for(n_samples: int) -> int:
    """HuBERT rows for ``n_samples``: ``(n - 80) // 320``, upstream's ``expected_T``."""
    return max(0, (n_samples - (RECEPTIVE_FIELD_SAMPLES - SAMPLES_PER_ROW)) // SAMPLES_PER_ROW)


def window_rows(n_frames: int, n_rows: int, *, first_row: int = LEFT_CONTEXT_ROWS) -> np.ndarray:
    """HuBERT rows of each frame's window: LiveTalking ``_feature2chunks(win=[4, 4], x2)``.

    Frame i's rows are ``first_row + 2 i - 8 .. first_row + 2 i + 7``, each clamped to
    ``[0, n_rows - 1]`` (LiveTalking repeats the edge row).

    Args:
        n_frames: Video frames.
        n_rows: HuBERT rows available.
        first_row: Row where frame 0's own audio starts (``l`` for LiveTalking's ``start=l/2``).

    Returns:
        (n_frames, 16) int array, e.g. rows 2..17 for frame 0 with the default context.
    """
    centers = first_row + ROWS_PER_FRAME * np.arange(n_frames, dtype=np.intp)
    offsets = np.arange(-ROWS_PER_FRAME * WINDOW_FRAMES_LEFT, ROWS_PER_FRAME * WINDOW_FRAMES_RIGHT)
    return np.clip(centers[:, None] + offsets, 0, n_rows - 1)


class HubertFeatureEngine:
    """HuBERT last hidden states and Ultralight's per-frame (16, 32, 32) windows.

    Loads a local ``facebook/hubert-large-ls960-ft`` folder (``config.json``, weights and
    ``preprocessor_config.json``) with ``local_files_only=True`` into ``HubertModel`` (the CTC
    head is dropped, as upstream does). Only the processor's feature extractor is used, so the
    tokenizer files are not needed.

        engine = HubertFeatureEngine("models/hubert-large-ls960-ft", device="cuda")
        windows = engine.frame_windows(pcm, n_frames)   # (n_frames, 16, 32, 32) float32

    Args:
        model_dir: The model folder.
        device: Torch device for the model.
        dtype: Model dtype (LiveTalking keeps float32). Outputs are always float32.

    Raises:
        CheckpointError: The folder is missing or does not hold a loadable HuBERT model, or
            its hidden size is not a multiple of 32.
    """

    kind: FeatureKind = "hubert"

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        """Load the feature extractor and the model (see the class docstring)."""
        from transformers import (  # heavy: only when used
            HubertModel,
            Wav2Vec2FeatureExtractor,
        )

        self.feature_extractor, model = load_pretrained(
            model_dir, what="HuBERT", default_dir=DEFAULT_MODEL_DIR, repo=HUBERT_REPO,
            extractor_cls=Wav2Vec2FeatureExtractor, model_cls=HubertModel)
        self.hidden_size = int(model.config.hidden_size)  # 1024 for HuBERT-large
        if self.hidden_size % WINDOW_COLUMNS:
            raise CheckpointError(f"{model_dir}: hidden size {self.hidden_size} does not reshape to rows of"
                                  f" {WINDOW_COLUMNS} (expected {HUBERT_REPO}, 1024)")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        # "layer"-norm conv encoders (HuBERT-large) are per row, so right-padding plus an attention
        # mask leaves the real rows unchanged; "group" norm (HuBERT-base) spans time, so it cannot.
        self._can_pad = model.config.feat_extract_norm == "layer"

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """Shape of one frame's window: (16, 32, 32) for HuBERT-large."""
        return ROWS_PER_WINDOW, self.hidden_size // WINDOW_COLUMNS, WINDOW_COLUMNS

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        """The model's last hidden state for a clip, as upstream ``get_hubert_from_16k_speech``.

        Args:
            pcm: 16 kHz mono float samples, 400 to 319999 of them. Never modified.

        Returns:
            float32 (n_rows_for(len), 1024).

        Raises:
            ValueError: Not a finite 1-D float array of an accepted length.
        """
        return self._encode([self._check(pcm)])[0]

    def frame_windows(self, pcm: np.ndarray, n_frames: int) -> np.ndarray:
        """Ultralight's HuBERT window for each of ``n_frames`` video frames.

        Args:
            pcm: ``LEFT_CONTEXT_SAMPLES`` of past audio, ``n_frames * 640`` samples belonging to
                the frames, then ``RIGHT_CONTEXT_SAMPLES`` of look-ahead (16 kHz float). Never
                modified (it may be a read-only Ray buffer).
            n_frames: Video frames (25 fps) the middle part covers.

        Returns:
            float32 (n_frames, 16, 32, 32): ``out[i].reshape(16, 1024)[j]`` is row
            ``window_rows(n_frames, ...)[i, j]`` of :meth:`encode`.

        Raises:
            ValueError: A bad ``n_frames``, or ``pcm`` not of ``common.features.pcm_samples_for(n_frames)``
                finite float samples.
        """
        return self.frame_windows_batch([pcm], [n_frames])[0]

    def frame_windows_batch(self, pcms: Sequence[np.ndarray], n_frames: Sequence[int]) -> list[np.ndarray]:
        """:meth:`frame_windows` for several buffers with ONE model pass over all of them.

        Buffers of different lengths are right-padded and masked; the real rows equal the
        unbatched ones to float rounding (about 1e-6).

        Args:
            pcms: One buffer per request, as for :meth:`frame_windows`.
            n_frames: Frames of each request.

        Returns:
            One float32 (n_frames[b], 16, 32, 32) array per request, in order.

        Raises:
            ValueError: Lists of different lengths, or any request that :meth:`frame_windows`
                would refuse.
        """
        clips = [self._check(c) for c in check_pcm_batch(pcms, n_frames)]
        out = []
        for states, n in zip(self._encode(clips), n_frames, strict=True):
            rows = window_rows(int(n), len(states))
            out.append(states[rows].reshape(int(n), *self.window_shape))  # fancy indexing copies
        return out

    batch = frame_windows_batch  # the `FeatureEngine` contract

    def _check(self, pcm: object) -> np.ndarray:
        return check_audio(pcm, min_samples=RECEPTIVE_FIELD_SAMPLES, max_samples=MAX_PCM_SAMPLES, limit="25 ms to 20 s")

    def _encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Last hidden states of validated clips: one pass, or one per length for group norm."""
        if not clips:
            return []
        if self._can_pad or len({c.size for c in clips}) == 1:
            return self._forward(clips)
        results: list[np.ndarray | None] = [None] * len(clips)
        for size in sorted({c.size for c in clips}):
            idx = [b for b, c in enumerate(clips) if c.size == size]
            for b, states in zip(idx, self._forward([clips[b] for b in idx]), strict=True):
                results[b] = states
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _forward(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """One model pass; each clip normalised on its own (as unbatched), padded and masked."""
        # The processor normalises with the statistics of each buffer, exactly as upstream.
        normed = [self.feature_extractor(c, sampling_rate=SAMPLE_RATE).input_values[0] for c in clips]
        longest = max(c.size for c in clips)
        values = np.zeros((len(clips), longest), np.float32)
        mask = np.zeros((len(clips), longest), np.int64)
        for b, v in enumerate(normed):
            values[b, : v.size], mask[b, : v.size] = v, 1
        # No mask for equal lengths: that is upstream's exact (unpadded) call.
        attention_mask = None if mask.all() else torch.from_numpy(mask).to(self.device)
        states = self.model(torch.from_numpy(values).to(self.device, self.dtype),
                            attention_mask=attention_mask).last_hidden_state
        states = states.float().cpu().numpy()
        return [states[b, : n_rows_for(c.size)] for b, c in enumerate(clips)]
