"""Audio helpers: sample-format conversion, resampling and decoding uploads to 16 kHz mono.

Everything inside the system is 16 kHz mono float32 in [-1, 1] (`timing.SAMPLE_RATE`). Uploads are
decoded in memory (no temp files): libsndfile first (wav/flac/ogg, fast and exact), PyAV/FFmpeg as
the fallback for mp3 and whatever else FFmpeg understands.
"""

from __future__ import annotations

import io

import av
import numpy as np
import soundfile as sf
import soxr

from deployments.common.errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from deployments.common.timing import SAMPLE_RATE

DEFAULT_MAX_UPLOAD_S = 120.0  # seconds of audio accepted from one upload
# soxr "HQ" (20-bit, linear phase, flat to ~91% of the output's Nyquist: 7.3 kHz at 16 kHz): well
# below the int16 noise floor, keeps the sibilants up to 7 kHz that resampy's kaiser_fast rolled off,
# ~0.2 ms per second of speech; "VHQ" (28-bit) costs 1.6x for a difference no 16 kHz model can use
RESAMPLE_QUALITY = "HQ"
INT16_SCALE = 32768.0  # full scale of int16 samples
_NOT_AUDIO = "the upload is not decodable audio (expected wav, mp3, ogg or flac)"

__all__ = [
    "DEFAULT_MAX_UPLOAD_S",
    "StreamDecoder",
    "StreamResampler",
    "decode_audio",
    "resample",
    "to_float32",
    "to_int16",
]


def to_float32(x: np.ndarray) -> np.ndarray:
    """Convert samples of any numeric dtype to float32 in [-1, 1].

    Args:
        x: Samples: signed ints are scaled by their full range, unsigned ints are centred first,
            floats are clipped.

    Returns:
        A float32 array of the same shape.
    """
    x = np.asarray(x)
    if x.dtype.kind == "i":
        return (x.astype(np.float32) / float(-np.iinfo(x.dtype).min)).astype(np.float32)
    if x.dtype.kind == "u":
        half = float(np.iinfo(x.dtype).max // 2 + 1)
        return ((x.astype(np.float32) - half) / half).astype(np.float32)
    if x.dtype.kind == "b":
        return x.astype(np.float32)
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Convert samples to int16 PCM (clipping, rounding); int16 input is returned as is."""
    x = np.asarray(x)
    if x.dtype == np.int16:
        return x
    scaled = np.round(to_float32(x) * INT16_SCALE)
    return np.clip(scaled, -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis with soxr's high-quality linear-phase filter.

    Args:
        x: Samples (any dtype, converted with `to_float32`).
        sr_in: Input sample rate in Hz.
        sr_out: Output sample rate in Hz.

    Returns:
        float32 samples at `sr_out`, `round(n * sr_out / sr_in)` of them along the last axis (the
        input itself, as float32, when the rates are equal).
    """
    x = to_float32(x)
    if sr_in == sr_out:
        return x
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1] + (0,), np.float32)
    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    # soxr wants (frames, channels): time on the first axis
    channels = np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
    y = soxr.resample(channels, sr_in, sr_out, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(y.T, np.float32).reshape(x.shape[:-1] + (-1,))


class StreamResampler:
    """Resample a stream piece by piece (a microphone's 20 ms packets) with no seams between pieces.

    `resample` on each piece alone would restart the filter at every edge (a click every 20 ms);
    this keeps soxr's filter state from piece to piece. The input rate may change mid-stream (a
    new codec): the filter then starts over.
    """

    def __init__(self, sr_out: int = SAMPLE_RATE) -> None:
        self.sr_out = sr_out
        self._sr_in: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def feed(self, x: np.ndarray, sr_in: int) -> np.ndarray:
        """The float32 mono samples at `sr_out` that `x` (1-D, any dtype, at `sr_in`) completes."""
        x = to_float32(x).reshape(-1)
        if sr_in == self.sr_out:
            return x
        if sr_in != self._sr_in:
            self._sr_in = sr_in
            self._stream = soxr.ResampleStream(sr_in, self.sr_out, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        assert self._stream is not None
        return self._stream.resample_chunk(x).astype(np.float32, copy=False)


class StreamDecoder:
    """Decode a compressed byte stream (e.g. mp3) piece by piece to 16 kHz mono float32.

    Feed bytes as they arrive; each call returns whatever whole frames they completed. The
    resampler keeps its state between calls, so the pieces join without clicks.
    """

    def __init__(self, codec: str = "mp3") -> None:
        """Create a decoder for a raw (container-less) stream of `codec` packets."""
        self._codec = av.CodecContext.create(codec, "r")
        self._converter = _PcmConverter()

    def feed(self, data: bytes) -> np.ndarray:
        """Decode the frames that `data` completes; returns float32 16 kHz (maybe empty)."""
        if not data:
            return np.zeros(0, np.float32)
        return self._decode(self._codec.parse(data))

    def flush(self) -> np.ndarray:
        """Decode everything still buffered (end of stream)."""
        tail = self._decode(self._codec.parse(None))
        for frame in self._codec.decode(None):
            self._converter.push(frame)
        return np.concatenate([tail, self._converter.pop(final=True)])

    def _decode(self, packets: list[av.Packet]) -> np.ndarray:
        for packet in packets:
            try:
                frames = self._codec.decode(packet)
            except av.InvalidDataError:
                continue  # an ID3 tag or a damaged packet: skip it, as the ffmpeg CLI does
            for frame in frames:
                self._converter.push(frame)
        return self._converter.pop()


class _PcmConverter:
    """FFmpeg frames of any layout/format/rate -> 16 kHz mono float32 (swresample)."""

    def __init__(self) -> None:
        # keep the layout: swresample's downmix adds channels at -3 dB (stereo comes out 1.4x
        # louder); averaging them ourselves matches the soundfile path
        self._resampler = av.AudioResampler(format="flt", rate=SAMPLE_RATE)
        self._parts: list[np.ndarray] = []
        self.samples = 0  # total samples produced so far

    def push(self, frame: av.AudioFrame | None) -> None:
        for out in self._resampler.resample(frame):
            channels = len(out.layout.channels)
            pcm = out.to_ndarray().reshape(-1, channels).mean(axis=1, dtype=np.float32)
            self._parts.append(pcm)
            self.samples += pcm.size

    def pop(self, *, final: bool = False) -> np.ndarray:
        if final:
            self.push(None)
        pcm = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        self._parts = []
        return pcm


def decode_audio(data: bytes, *, max_seconds: float = DEFAULT_MAX_UPLOAD_S) -> np.ndarray:
    """Decode an uploaded audio file to 16 kHz mono float32.

    Args:
        data: The file's bytes: wav, mp3, ogg or flac at any sample rate and channel count.
        max_seconds: Longest accepted duration.

    Returns:
        float32 samples at `SAMPLE_RATE`, channels averaged.

    Raises:
        UnsupportedMedia: `data` is empty or not decodable audio.
        PayloadTooLarge: The audio is longer than `max_seconds`.
        BadRequest: The audio holds NaN or infinite samples (a float WAV can).
    """
    if not data:
        raise UnsupportedMedia("the upload is empty (expected wav, mp3, ogg or flac audio)")
    try:
        pcm, sr = _decode_soundfile(data, max_seconds)
    except sf.LibsndfileError:
        # libsndfile does not know the format (mp3 on older builds, m4a, ...): ask FFmpeg
        return _check_finite(_decode_av(data, max_seconds))
    if pcm.size == 0:
        raise UnsupportedMedia("the upload holds no audio samples")
    return resample(_check_finite(pcm), sr, SAMPLE_RATE)


def _check_finite(pcm: np.ndarray) -> np.ndarray:
    """`pcm` if every sample is finite: NaN would pass the float clip and poison every feature
    window, mel and lip-sync crop computed from it downstream.
    """
    if not np.isfinite(pcm).all():
        raise BadRequest("the audio holds NaN or infinite samples")
    return pcm


def _too_long(seconds: float, max_seconds: float) -> PayloadTooLarge:
    return PayloadTooLarge(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")


def _decode_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.frames > 0 and f.frames / f.samplerate > max_seconds:
            raise _too_long(f.frames / f.samplerate, max_seconds)  # before decoding it all
        pcm = f.read(dtype="float32", always_2d=True)
        sr = f.samplerate
    if pcm.shape[0] / sr > max_seconds:
        raise _too_long(pcm.shape[0] / sr, max_seconds)
    return pcm.mean(axis=1, dtype=np.float32), sr


def _decode_av(data: bytes, max_seconds: float) -> np.ndarray:
    max_samples = int(max_seconds * SAMPLE_RATE)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise UnsupportedMedia(_NOT_AUDIO) from e
    with container:
        if not container.streams.audio:
            raise UnsupportedMedia(f"{_NOT_AUDIO}: it has no audio stream")
        stream = container.streams.audio[0]
        if container.duration is not None and container.duration / av.time_base > max_seconds:
            raise _too_long(container.duration / av.time_base, max_seconds)
        converter = _PcmConverter()
        try:
            for frame in container.decode(stream):
                converter.push(frame)
                if converter.samples > max_samples:
                    raise _too_long(converter.samples / SAMPLE_RATE, max_seconds)
        except av.FFmpegError as e:
            if converter.samples == 0:
                raise UnsupportedMedia(_NOT_AUDIO) from e
            # a truncated tail: keep what decoded
        pcm = converter.pop(final=True)
    if pcm.size == 0:
        raise UnsupportedMedia(_NOT_AUDIO)
    if pcm.size > max_samples:
        raise _too_long(pcm.size / SAMPLE_RATE, max_seconds)
    return pcm
