"""Split text into pieces a TTS engine can voice one at a time, the first one short.

A TTS engine cannot return audio before it has synthesised a whole piece, so the first piece sets
the latency to first audio: it is cut to a few words, at a clause boundary when there is one. The
rest is cut into sentences and long sentences at clause boundaries (, ; : — –, and the CJK
。！？，、；：), or by word count where a clause is too long. No character is ever lost: joining
the pieces gives back the text, up to whitespace. Where a piece may end (words, CJK characters,
sentence and clause marks, abbreviations) is `deployments/common/text.py`'s rules, which the LLM
sentence splitter shares.
"""

from __future__ import annotations

import math

from deployments.common.text import Atom as _Atom
from deployments.common.text import atoms as _atoms
from deployments.common.text import render as _render
from deployments.common.text import weight as _weight

FIRST_MAX_WORDS = 6  # first piece: ~0.1-0.2 s of Piper synthesis on one core
MAX_WORDS = 18  # later pieces: long enough for natural prosody, short enough to stream

__all__ = ["FIRST_MAX_WORDS", "MAX_WORDS", "split_text"]


def split_text(
    text: str, *, first_max_words: int = FIRST_MAX_WORDS, max_words: int = MAX_WORDS
) -> list[str]:
    """Split `text` into sentence and clause pieces, keeping the first piece short.

    Args:
        text: Any text (English, CJK or mixed).
        first_max_words: Most words in the first piece.
        max_words: Most words in every later piece.

    Returns:
        Pieces stripped of surrounding whitespace, none empty; `[]` for blank text.
    """
    if first_max_words < 1 or max_words < 1:
        raise ValueError("first_max_words and max_words must be at least 1")
    pieces: list[list[_Atom]] = []
    for sentence in _split_after(_atoms(text), "ends_sentence"):
        current: list[_Atom] = []
        for clause in _split_after(sentence, "ends_clause"):
            limit = max_words if pieces else first_max_words
            if _weight(current) + _weight(clause) <= limit:
                current += clause
                continue
            if current:
                pieces.append(current)
            if not pieces and _weight(clause) > first_max_words:
                # cut a short head off the first clause, at most half of it
                head = _take(clause, min(first_max_words, math.ceil(_weight(clause) / 2)))
                pieces.append(head)
                clause = clause[len(head) :]
            *full, current = _chunk(clause, max_words)
            pieces += full
        if current:
            pieces.append(current)
    return [_render(p) for p in pieces]


def _split_after(atoms: list[_Atom], flag: str) -> list[list[_Atom]]:
    groups: list[list[_Atom]] = [[]]
    for atom in atoms:
        groups[-1].append(atom)
        if getattr(atom, flag):
            groups.append([])
    return [g for g in groups if g]


def _take(atoms: list[_Atom], max_weight: float) -> list[_Atom]:
    """The longest prefix within `max_weight` (at least one atom)."""
    total = 0.0
    for i, atom in enumerate(atoms):
        total += atom.weight
        if total > max_weight:
            return atoms[: max(i, 1)]
    return atoms


def _chunk(atoms: list[_Atom], max_weight: float) -> list[list[_Atom]]:
    """Cut into near-equal chunks within `max_weight` (no one-word stragglers)."""
    n_chunks = max(1, math.ceil(_weight(atoms) / max_weight))
    target = math.ceil(_weight(atoms) / n_chunks)
    chunks = []
    while atoms:
        chunk = _take(atoms, target if len(chunks) < n_chunks - 1 else max_weight)
        chunks.append(chunk)
        atoms = atoms[len(chunk) :]
    return chunks or [[]]
