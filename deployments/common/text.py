"""Where spoken text may be cut: words, CJK characters, sentence and clause ends (one set of rules).

Both splitters read text through `atoms()`: the TTS splitter (`deployments/tts/splitter.py`,
whole texts) and the LLM sentence splitter (`deployments/llm/sentences.py`, streamed deltas). An
atom is a space-delimited word, or one CJK character with the punctuation after it; it ends a
sentence on `. ! ? …` and `。！？` (not after an abbreviation such as `Dr.`, `e.g.` or `U.S.`), and
a clause on `, ; : — –` and `，、；：`. A number such as `3.14` is one atom, so its point never ends
anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CJK_CHARS_PER_WORD = 2  # a CJK character takes about half as long to say as an English word

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PUNCT = ".,!?;:…\u3000-\u303f\uff00-\uffef\"'’”)\\]}»"  # may trail a CJK character
_ATOM = re.compile(rf"(\s*)([{CJK}][{_PUNCT}]*|[^\s{CJK}]+)")
_IS_CJK = re.compile(f"[{CJK}]")
_CLOSERS = "\"'’”)]}»」』）】〉》"  # stripped before looking at the final punctuation mark
SENTENCE_END = frozenset(".!?…。！？")
CLAUSE_END = frozenset(",;:—–，、；：")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "jr", "sr"})

__all__ = ["CJK_CHARS_PER_WORD", "Atom", "atoms", "is_abbreviation", "render", "weight"]


@dataclass(frozen=True)
class Atom:
    """An unbreakable unit: a space-delimited word, or one CJK character with its punctuation."""

    text: str
    spaced: bool  # whitespace preceded it in the input
    weight: float  # in words
    ends_sentence: bool
    ends_clause: bool
    end: int = 0  # offset just past it in the text it was read from


def atoms(text: str) -> list[Atom]:
    """The atoms of `text`, in order (whitespace is dropped, and noted in `spaced`)."""
    found = []
    for m in _ATOM.finditer(text):
        gap, word = m.group(1), m.group(2)
        core = word.rstrip(_CLOSERS) or word
        last = core[-1]
        has_letters = any(c.isalnum() for c in word)
        cjk_weight = 1 / CJK_CHARS_PER_WORD if _IS_CJK.match(word) else 1.0
        found.append(Atom(
            text=word,
            spaced=bool(gap),
            weight=cjk_weight if has_letters else 0.0,
            ends_sentence=last in SENTENCE_END and not is_abbreviation(core),
            ends_clause=last in CLAUSE_END,
            end=m.end(),
        ))
    return found


def is_abbreviation(word: str) -> bool:
    """`Dr.`, `J.`, `e.g.`, `U.S.`: a period that does not end a sentence."""
    if not word.endswith(".") or word.endswith(".."):
        return False
    stem = word[:-1].lower()
    initials = all(len(part) == 1 and part.isalpha() for part in stem.split("."))
    return stem in ABBREVIATIONS or initials


def weight(atoms: list[Atom]) -> float:
    """How long the atoms take to say, in words."""
    return sum(a.weight for a in atoms)


def render(atoms: list[Atom]) -> str:
    """The atoms as text, any run of whitespace between them as one space, stripped."""
    return "".join((" " if a.spaced else "") + a.text for a in atoms).strip()
