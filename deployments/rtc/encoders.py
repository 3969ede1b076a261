"""Video encoder settings that aiortc keeps to itself: its bitrates are module constants and its
VP8 encoder hard-codes libvpx's options. Both are set once per SessionHost process.
"""

from __future__ import annotations

from typing import Any

import av
from aiortc.codecs import h264, vpx

# libvpx options over aiortc's: its cpu-used -6 and noise-sensitivity 4 (a temporal denoiser)
# cost 2.1 ms a 512x512 frame here; cpu-used -16 without the denoiser 1.1 ms at the same
# bitrate (docs/PERFORMANCE.md "Capacity of one SessionHost"). A rendered avatar has no
# sensor noise to remove.
FAST_VP8 = {"cpu-used": "-16", "noise-sensitivity": "0"}


def configure_video_bitrate(kbps: int) -> None:
    """Set the encoders' starting and maximum bitrate (aiortc keeps them as module constants)."""
    bps = int(kbps) * 1000
    for codec in (vpx, h264):
        codec.DEFAULT_BITRATE = bps
        codec.MIN_BITRATE = min(codec.MIN_BITRATE, bps)
        codec.MAX_BITRATE = max(bps, codec.MIN_BITRATE)


def configure_vp8_options(overrides: dict[str, str]) -> None:
    """Apply `overrides` on top of the libvpx options aiortc's `Vp8Encoder` sets ({}: aiortc's own).

    The encoder creates its codec context through `vpx.av.CodecContext.create` and assigns its
    options once; `vpx.av` becomes a stand-in for PyAV whose contexts merge the overrides into
    that assignment (tests/unit/test_encoders.py fails if aiortc changes how it does this).
    """
    vpx.av = _PyAvWithOptions(dict(overrides)) if overrides else av


class _PyAvWithOptions:
    """PyAV, except that codec contexts it creates take `overrides` over any options set."""

    def __init__(self, overrides: dict[str, str]) -> None:
        self.CodecContext = _ContextFactory(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(av, name)


class _ContextFactory:
    def __init__(self, overrides: dict[str, str]) -> None:
        self._overrides = overrides

    def create(self, *args: Any, **kwargs: Any) -> _OptionsOverride:
        return _OptionsOverride(av.CodecContext.create(*args, **kwargs), self._overrides)


class _OptionsOverride:
    """A codec context whose `options = {...}` keeps `overrides` on top (`applied_options`: what
    it was given last; PyAV empties `options` of those it applies when the codec opens).
    """

    def __init__(self, context: Any, overrides: dict[str, str]) -> None:
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "_overrides", overrides)
        object.__setattr__(self, "applied_options", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "options":
            value = {**value, **self._overrides}
            object.__setattr__(self, "applied_options", dict(value))
        setattr(self._context, name, value)
