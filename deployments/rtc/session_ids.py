"""Session ids that name their owner replica.

LiveTalking front-ends send the id back as `parseInt(sessionid)`, so the id must be a decimal
number that survives a JavaScript integer (< 2**53): `1 TTTTTT RRRRRRRR`, 15 digits, where
TTTTTT is a hash of the owner replica's id and RRRRRRRR is random.
"""

from __future__ import annotations

import secrets
import zlib

from deployments.common.errors import SessionNotFound

OWNER_TAG_DIGITS = 6
RANDOM_DIGITS = 8
SESSION_ID_DIGITS = 1 + OWNER_TAG_DIGITS + RANDOM_DIGITS


def owner_tag(replica_unique_id: str) -> str:
    """The 6-digit tag of a replica (stable across processes: crc32, not hash())."""
    return f"{zlib.crc32(replica_unique_id.encode()) % 10**OWNER_TAG_DIGITS:0{OWNER_TAG_DIGITS}d}"


def new_session_id(replica_unique_id: str) -> str:
    """A fresh id owned by `replica_unique_id`."""
    return f"1{owner_tag(replica_unique_id)}{secrets.randbelow(10**RANDOM_DIGITS):0{RANDOM_DIGITS}d}"


def normalize_session_id(raw: object) -> str:
    """Validate a client-supplied id (string or JSON number); junk raises SessionNotFound."""
    if isinstance(raw, bool) or raw is None:
        raise SessionNotFound("missing or invalid sessionid")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = str(raw).strip()
    if len(text) != SESSION_ID_DIGITS or not (text.isascii() and text.isdigit()) or text[0] != "1":
        raise SessionNotFound(f"unknown session {text[:40]!r}")
    return text


def tag_of(session_id: str) -> str:
    """The owner tag embedded in a normalized session id."""
    return session_id[1 : 1 + OWNER_TAG_DIGITS]
