"""Split text into pieces a TTS engine can voice one at a time, the first one short.

A TTS engine cannot return audio before it has synthesised a whole piece, so the first piece sets
the latency to first audio: it is cut to a few words, at a clause boundary when there is one. The
rest is cut into sentences and long sentences at clause boundaries (, ; : — –, and the CJK
。！？，、；：), or by word count where a clause is too long. No character is ever lost: joining
the pieces gives back the text, up to whitespace.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FIRST_MAX_WORDS = 6  # first piece: ~0.1-0.2 s of Piper synthesis on one core
MAX_WORDS = 18  # later pieces: long enough for natural prosody, short enough to stream
CJK_CHARS_PER_WORD = 2  # a CJK character takes about half as long to say as an English word

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PUNCT = ".,!?;:…\u3000-\u303f\uff00-\uffef\"'’”)\\]}»"  # may trail a CJK character
_ATOM = re.compile(rf"(\s*)([{_CJK}][{_PUNCT}]*|[^\s{_CJK}]+)")
_CLOSERS = "\"'’”)]}»」』）】〉》"  # stripped before looking at the final punctuation mark
_SENTENCE_END = set(".!?…。！？")
_CLAUSE_END = set(",;:—–，、；：")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "jr", "sr"}

__all__ = ["FIRST_MAX_WORDS", "MAX_WORDS", "split_text"]


@dataclass(frozen=True)
class _Atom:
    """An unbreakable unit: a space-delimited word, or one CJK character with its punctuation."""

    text: str
    spaced: bool  # whitespace preceded it in the input
    weight: float  # in words
    ends_sentence: bool
    ends_clause: bool


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


def _atoms(text: str) -> list[_Atom]:
    atoms = []
    for m in _ATOM.finditer(text):
        word = m.group(2)
        core = word.rstrip(_CLOSERS) or word
        last = core[-1]
        is_cjk = re.match(f"[{_CJK}]", word) is not None
        has_letters = any(c.isalnum() for c in word)
        weight = (1 / CJK_CHARS_PER_WORD if is_cjk else 1.0) if has_letters else 0.0
        ends_sentence = last in _SENTENCE_END and not _is_abbreviation(core)
        atoms.append(_Atom(word, bool(m.group(1)), weight, ends_sentence, last in _CLAUSE_END))
    return atoms


def _is_abbreviation(word: str) -> bool:
    """`Dr.`, `J.`, `e.g.`, `U.S.`: a period that does not end a sentence."""
    if not word.endswith(".") or word.endswith(".."):
        return False
    stem = word[:-1].lower()
    initials = all(len(part) == 1 and part.isalpha() for part in stem.split("."))
    return stem in _ABBREVIATIONS or initials


def _split_after(atoms: list[_Atom], flag: str) -> list[list[_Atom]]:
    groups: list[list[_Atom]] = [[]]
    for atom in atoms:
        groups[-1].append(atom)
        if getattr(atom, flag):
            groups.append([])
    return [g for g in groups if g]


def _weight(atoms: list[_Atom]) -> float:
    return sum(a.weight for a in atoms)


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


def _render(atoms: list[_Atom]) -> str:
    return "".join((" " if a.spaced else "") + a.text for a in atoms).strip()
