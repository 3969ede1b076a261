"""Session ids: 15 decimal digits that a JavaScript number keeps, naming their owner replica."""

from __future__ import annotations

import subprocess
import sys
import zlib

import pytest

from deployments.common.errors import SessionNotFound
from deployments.rtc.session_ids import (
    OWNER_TAG_DIGITS,
    SESSION_ID_DIGITS,
    new_session_id,
    normalize_session_id,
    owner_tag,
    tag_of,
)

pytestmark = pytest.mark.unit

REPLICA = "SessionHost#avatar#abc123"


def test_format_is_fifteen_digits_with_a_leading_one_below_two_to_the_53():
    for _ in range(200):
        sid = new_session_id(REPLICA)
        assert len(sid) == SESSION_ID_DIGITS == 15 and sid.isdigit() and sid[0] == "1"
        assert int(sid) < 2**53, "parseInt keeps it exactly"
        assert float(int(sid)) == int(sid)
        assert normalize_session_id(sid) == sid


def test_the_owner_tag_is_embedded_and_recoverable():
    sid = new_session_id(REPLICA)
    assert tag_of(sid) == owner_tag(REPLICA) == sid[1:7]
    assert len(owner_tag(REPLICA)) == OWNER_TAG_DIGITS


def test_the_owner_tag_is_crc32_and_stable_across_calls_and_processes():
    tag = owner_tag(REPLICA)
    assert tag == f"{zlib.crc32(REPLICA.encode()) % 10**6:06d}"
    assert all(owner_tag(REPLICA) == tag for _ in range(10))
    code = f"from deployments.rtc.session_ids import owner_tag; print(owner_tag({REPLICA!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)})
    assert other.stdout.strip() == tag


def test_owner_tags_keep_leading_zeros():
    uid = next(f"r{i}" for i in range(100000) if zlib.crc32(f"r{i}".encode()) % 10**6 < 10**5)
    assert owner_tag(uid).startswith("0") and len(owner_tag(uid)) == 6
    sid = new_session_id(uid)
    assert len(sid) == 15 and tag_of(sid) == owner_tag(uid)


def test_ids_are_random():
    # 8 random digits: 2000 ids share one about 2% of the time (birthday bound), two 0.02%.
    sids = [new_session_id(REPLICA) for _ in range(2000)]
    assert len(set(sids)) >= len(sids) - 1
    assert len({s[:7] for s in sids}) == 1, "one owner, one tag"
    assert len({s[-1] for s in sids}) == 10


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (123456789012345, "123456789012345"),
        (123456789012345.0, "123456789012345"),
        ("123456789012345", "123456789012345"),
        ("  123456789012345\n", "123456789012345"),
        (" 100000000000000 ", "100000000000000"),
    ],
)
def test_normalize_accepts_ints_integral_floats_and_padded_strings(raw, expected):
    assert normalize_session_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        True,
        False,
        123456789012345.5,  # a float with a fraction
        float("nan"),
        float("inf"),
        "",
        "   ",
        "12345678901234",  # 14 digits
        "1234567890123456",  # 16 digits
        "223456789012345",  # leading digit not 1
        "023456789012345",
        "12345678901234a",
        "1234567 9012345",
        "-23456789012345",
        "+23456789012345",
        "１２３４５６７８９０１２３４５",  # full-width digits (and no ASCII leading 1)
        "1.3456789012345",
        [123456789012345],
        {"sessionid": "123456789012345"},
        b"123456789012345",
    ],
)
def test_normalize_rejects_junk_with_session_not_found(raw):
    with pytest.raises(SessionNotFound) as info:
        normalize_session_id(raw)
    assert info.value.status == 404


@pytest.mark.parametrize("raw", ["1２３４５６７８９０１２３４５", "1²3456789012345", "1٢٣٤٥٦٧٨٩٠١٢٣٤٥"])
def test_normalize_rejects_non_ascii_digits(raw):
    # str.isdigit() is true for these; accepted, they would name no replica and answer 410, not 404.
    with pytest.raises(SessionNotFound):
        normalize_session_id(raw)


# ---- the host registry: which tags belonged to SessionHost replicas of the app, and live -------

class _DictStore(dict):
    def put(self, key: str, value: str) -> None:
        self[key] = value


def test_registry_tells_dead_owners_from_live_ones_and_unknown_tags():
    from deployments.rtc.host_registry import HostRegistry, Owner

    alive = {"SERVE_REPLICA::avatar#SessionHost#a"}
    store = _DictStore()
    reg = HostRegistry("avatar", store, alive=lambda name, ns: ns == "serve" and name in alive)
    reg.register(owner_tag("a"), "SERVE_REPLICA::avatar#SessionHost#a", "serve")
    reg.register(owner_tag("b"), "SERVE_REPLICA::avatar#SessionHost#b", "serve")
    assert reg.owner(owner_tag("a")) is Owner.ALIVE
    assert reg.owner(owner_tag("b")) is Owner.DEAD
    assert reg.owner(owner_tag("never")) is Owner.UNKNOWN
    # Keyed per app: another app's replica with the same tag is not ours.
    assert HostRegistry("other", store, alive=lambda *_: True).owner(owner_tag("a")) is Owner.UNKNOWN
