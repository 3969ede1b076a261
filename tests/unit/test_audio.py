"""Unit tests of `deployments.common.audio`: conversions, resampling, decoding uploads."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from deployments.common.audio import StreamDecoder, decode_audio, resample, to_float32, to_int16
from deployments.common.errors import BadRequest, PayloadTooLarge, UnsupportedMedia
from deployments.common.timing import SAMPLE_RATE

pytestmark = pytest.mark.unit

TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5
TONE_S = 1.0
TONE_RMS = TONE_AMPLITUDE / np.sqrt(2)
HAS_MP3_ENCODER = "libmp3lame" in av.codecs_available


def tone(sr: int, channels: int, seconds: float = TONE_S) -> np.ndarray:
    """A 440 Hz sine, (n, channels) float32, the same in every channel."""
    t = np.arange(int(sr * seconds)) / sr
    x = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def encode_soundfile(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_av(x: np.ndarray, sr: int, container: str, codec: str) -> bytes:
    """Encode (n, channels) float32 with PyAV (mp3 via lame, m4a via FFmpeg's aac)."""
    layout = "mono" if x.shape[1] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x).reshape(1, -1), format="flt", layout=layout
        )
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def assert_tone(y: np.ndarray, *, seconds: float = TONE_S, rms_tol: float = 0.1) -> None:
    """16 kHz float32 mono, the right length (codec padding allowed), level and pitch."""
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size / SAMPLE_RATE - seconds) < 0.06
    mid = y[len(y) // 10 : -len(y) // 10]  # skip codec fade-in/out
    assert abs(np.sqrt(np.mean(mid**2)) - TONE_RMS) < rms_tol * TONE_RMS
    spectrum = np.abs(np.fft.rfft(mid))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(mid)
    assert abs(peak_hz - TONE_HZ) < 5


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]
)
def test_decode_soundfile_formats(fmt: str, subtype: str, sr: int, channels: int) -> None:
    assert_tone(decode_audio(encode_soundfile(tone(sr, channels), sr, fmt, subtype)))


@pytest.mark.skipif(not HAS_MP3_ENCODER, reason="PyAV's FFmpeg has no mp3 encoder (libmp3lame)")
@pytest.mark.parametrize(("sr", "channels"), [(22050, 1), (44100, 2), (48000, 1)])
def test_decode_mp3(sr: int, channels: int) -> None:
    assert_tone(decode_audio(encode_av(tone(sr, channels), sr, "mp3", "libmp3lame")))


def test_decode_m4a_uses_pyav_fallback() -> None:
    data = encode_av(tone(44100, 2), 44100, "ipod", "aac")
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))  # libsndfile cannot read it: this exercises PyAV
    assert_tone(decode_audio(data))


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"this is not audio at all " * 40,
        np.random.default_rng(0).bytes(4096),
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a truncated wav header
        b"<html><body>404</body></html>",
    ],
    ids=["empty", "text", "random", "truncated-wav", "html"],
)
def test_junk_is_unsupported_media(junk: bytes) -> None:
    with pytest.raises(UnsupportedMedia, match="wav, mp3, ogg or flac") as info:
        decode_audio(junk)
    assert info.value.status == 415


def test_wav_without_samples_is_unsupported_media() -> None:
    with pytest.raises(UnsupportedMedia, match="no audio samples"):
        decode_audio(encode_soundfile(np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16"))


def test_too_long_wav_is_payload_too_large() -> None:
    data = encode_soundfile(tone(16000, 1, seconds=3.0), 16000, "WAV", "PCM_16")
    with pytest.raises(PayloadTooLarge, match="limit is 2 s") as info:
        decode_audio(data, max_seconds=2.0)
    assert info.value.status == 413
    assert decode_audio(data, max_seconds=3.5).size == 3 * SAMPLE_RATE


def test_too_long_via_pyav_is_payload_too_large() -> None:
    data = encode_av(tone(44100, 1, seconds=3.0), 44100, "ipod", "aac")
    with pytest.raises(PayloadTooLarge):
        decode_audio(data, max_seconds=2.0)


@pytest.mark.skipif(not HAS_MP3_ENCODER, reason="PyAV's FFmpeg has no mp3 encoder (libmp3lame)")
def test_stream_decoder_decodes_mp3_incrementally() -> None:
    data = encode_av(tone(24000, 1), 24000, "mp3", "libmp3lame")  # edge-tts sends 24 kHz mp3
    decoder = StreamDecoder("mp3")
    pieces = [decoder.feed(data[i : i + 600]) for i in range(0, len(data), 600)]
    pieces.append(decoder.flush())
    assert sum(p.size > 0 for p in pieces) >= 5  # audio comes out while bytes still arrive
    assert_tone(np.concatenate(pieces))


def test_resample() -> None:
    x = tone(22050, 1)[:, 0]
    y = resample(x, 22050, SAMPLE_RATE)
    assert y.dtype == np.float32 and y.size == SAMPLE_RATE
    assert resample(x, 22050, 22050) is not None and np.array_equal(resample(x, 22050, 22050), x)
    assert resample(np.zeros(0, np.float32), 22050, SAMPLE_RATE).size == 0
    assert resample(to_int16(x), 22050, SAMPLE_RATE).dtype == np.float32


def test_sample_format_conversions() -> None:
    x = np.array([-1.0, -0.5, 0.0, 0.5, 0.999], np.float32)
    assert np.allclose(to_float32(to_int16(x)), x, atol=1 / 32768)
    assert to_int16(np.array([2.0, -2.0])).tolist() == [32767, -32768]  # clipped
    assert to_float32(np.array([-32768, 16384], np.int16)).tolist() == [-1.0, 0.5]
    assert to_float32(np.array([0, 128], np.uint8)).tolist() == [-1.0, 0.0]
    assert to_float32(np.array([2**30], np.int32)).tolist() == [0.5]
    assert to_float32(np.array([1.5, -3.0])).tolist() == [1.0, -1.0]
    assert to_float32(np.array([0.25])).dtype == np.float32
    pcm = np.array([1, -2], np.int16)
    assert to_int16(pcm) is pcm


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("subtype", "sr"), [("FLOAT", SAMPLE_RATE), ("DOUBLE", 44_100)])
def test_float_wav_with_non_finite_samples_is_a_bad_request(bad: float, subtype: str, sr: int) -> None:
    # NaN would pass the float clip (and Inf become full scale) into every model downstream.
    x = tone(sr, 2)
    x[sr // 2, 1] = bad
    with pytest.raises(BadRequest, match="NaN or infinite") as info:
        decode_audio(encode_soundfile(x, sr, "WAV", subtype))
    assert info.value.status == 400
