"""The parity kit's deterministic fill rule: every weight and every golden input, from a name.

Re-written from the rule's description (tests/parity/README.md); the goldens in this folder were
made with the kit's original, and tests/unit/test_fill_rule.py checks that this one reproduces its
published test vectors and the stored inputs bit for bit.

A tensor called ``name`` with ``n`` elements is a hash of ``0 .. n-1`` seeded by the name's crc32
(splitmix64's finaliser, in uint64 arithmetic that wraps mod 2**64), turned into uniform doubles
``u`` in [0, 1) and then shifted and scaled to the wanted mean and standard deviation.

The json files call these functions ``weights_rule.<name>`` (the kit's file name); the API here
is the same: `uniform01`, `tensor`, `fill_spec`, `state_dict_value`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["GOLDEN", "seed", "uniform01", "tensor", "fill_spec", "state_dict_value"]

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads the seeds apart
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SQRT12 = math.sqrt(12.0)  # a uniform on [-0.5, 0.5) has std 1/sqrt(12)


def seed(name: str) -> int:
    """The name's crc32 (unsigned, as zlib computes it over its UTF-8 bytes)."""
    return zlib.crc32(name.encode("utf-8"))


def _shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)


def uniform01(name: str, shape: Sequence[int] | int) -> np.ndarray:
    """float64 values in [0, 1), ``shape`` in C order: the rule's raw ``u`` for ``name``."""
    shape = _shape(shape)
    offset = np.uint64((seed(name) * GOLDEN) & MASK64)  # Python ints: no numpy scalar overflow
    x = np.arange(math.prod(shape), dtype=np.uint64)
    x += offset  # array arithmetic wraps mod 2**64, silently
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    # The top 53 bits fit a double exactly, and dividing by 2**53 is exact too.
    return ((x >> np.uint64(11)).astype(np.float64) / float(1 << 53)).reshape(shape)


def tensor(name: str, shape: Sequence[int] | int, mean: float = 0.0, std: float = 1.0,
           dtype: Any = np.float32) -> np.ndarray:
    """``mean + std * (u - 0.5) * sqrt(12)`` in float64 (in that order), cast to ``dtype``.

    Uniform on ``mean ± std * sqrt(3)``, so its standard deviation is ``std``.
    """
    value = mean + std * (uniform01(name, shape) - 0.5) * _SQRT12
    return value.astype(dtype, copy=False)


def fill_spec(key: str, shape: Sequence[int] | int) -> str | dict[str, float]:
    """How a state_dict entry is filled, decided by its upstream key (no ``module.`` prefix) and
    shape; the first matching line wins. Returns ``"zeros"`` or ``{"mean": m, "std": s}``, the
    form of each entry's ``fill`` field in the json files."""
    shape = _shape(shape)
    if key.endswith("num_batches_tracked"):
        return "zeros"
    if key.endswith("running_var"):
        return {"mean": 1.0, "std": 0.1}
    if key.endswith("running_mean"):
        return {"mean": 0.0, "std": 0.1}
    if key.endswith("weight") and len(shape) == 1:  # norm scales
        return {"mean": 1.0, "std": 0.1}
    if key.endswith("bias"):
        return {"mean": 0.0, "std": 0.02}
    if len(shape) >= 2:  # fan-in scaled: conv, linear and embedding weights
        fan_in = math.prod(shape[1:])
        return {"mean": 0.0, "std": 1.0 / math.sqrt(fan_in) if fan_in else 0.0}
    return {"mean": 0.0, "std": 0.02}


def state_dict_value(key: str, shape: Sequence[int] | int, dtype: Any = np.float32) -> np.ndarray:
    """The entry ``key`` of ``shape``, as ``dtype`` (int64 for ``num_batches_tracked``)."""
    spec = fill_spec(key, shape)
    if spec == "zeros":
        return np.zeros(_shape(shape), dtype=dtype)
    return tensor(key, shape, spec["mean"], spec["std"], dtype)
