"""aiortc's VP8 encoder gets our libvpx options, and encodes as before with them."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import vpx
from av import VideoFrame

from deployments.rtc.encoders import FAST_VP8, configure_vp8_options

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_pyav():
    yield
    configure_vp8_options({})


def _encode(n: int = 3) -> vpx.Vp8Encoder:
    encoder = vpx.Vp8Encoder()
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90_000)
        payloads, _ = encoder.encode(frame)
        assert payloads and all(payloads), "VP8 packets came out"
    return encoder


def test_overrides_win_over_aiortcs_options_and_the_rest_stay(restore_pyav) -> None:
    configure_vp8_options(FAST_VP8)
    codec = _encode().codec
    options = codec.applied_options
    assert options["cpu-used"] == "-16" and options["noise-sensitivity"] == "0"
    assert options["deadline"] == "realtime" and options["lag-in-frames"] == "0"  # aiortc's own
    # PyAV keeps in `options` what the codec did not take (aiortc's "partitions" here)
    assert not {"cpu-used", "noise-sensitivity"} & set(codec.options), "libvpx took ours"


def test_no_overrides_is_aiortcs_encoder_untouched(restore_pyav) -> None:
    configure_vp8_options(FAST_VP8)
    configure_vp8_options({})
    codec = _encode().codec
    assert isinstance(codec, av.CodecContext), "PyAV's own context, no stand-in"
