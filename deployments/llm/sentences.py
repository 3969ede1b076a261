"""Cut a streamed reply into pieces to speak, each handed on the moment it is complete.

The first piece sets when the avatar starts talking, so it may end at a clause (`,` `;` `:` `—`
`，` `、` `；` `：`) once it has `first_min_words`, at any sentence end, or anywhere after
`first_max_words`. Later pieces are whole sentences, a short one (`Yes.`) merged with the next,
and a long one cut at its last clause after `max_words`. A line break ends a sentence (paragraphs,
list items). Where words and sentences end is `deployments/common/text.py`'s rules, shared with
the TTS splitter: `3.14`, `e.g.`, `Mr.` and `U.S.` end nothing, and `...` is never cut apart. A
word is judged only once the next delta shows it has ended, so a delta that stops at `3.` or
`e.` is not a sentence end.

LiveTalking cuts at every punctuation mark once a piece has ten characters (decimals and
abbreviations included); this keeps its early first piece and cuts only where a speaker pauses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator

from deployments.common.text import Atom, atoms, render, weight

FIRST_MIN_WORDS = 3  # a first piece ending at a clause: "Well," alone would sound clipped
FIRST_MAX_WORDS = 12  # no punctuation by then: start speaking anyway (~0.3 s of tokens)
MIN_WORDS = 4  # a later sentence shorter than this waits for the next one ("Sure. ...")
MAX_WORDS = 30  # a later piece this long ends at a clause, so TTS never waits for a run-on sentence

__all__ = ["FIRST_MAX_WORDS", "FIRST_MIN_WORDS", "MAX_WORDS", "MIN_WORDS", "SentenceSplitter", "split_stream"]


class SentenceSplitter:
    """Feed it text deltas; it returns the pieces they complete, in order.

    Args:
        first_min_words: The first piece may end at a clause once it has this many words.
        first_max_words: The first piece ends after this many words even without punctuation.
        min_words: Later sentences shorter than this are merged with the next.
        max_words: A later piece this long ends at its last clause (or its last word).

    Words are counted as the TTS splitter counts them: a CJK character is half a word.
    Pieces are stripped, runs of whitespace inside them become one space, and none is empty.
    """

    def __init__(self, *, first_min_words: float = FIRST_MIN_WORDS, first_max_words: float = FIRST_MAX_WORDS,
                 min_words: float = MIN_WORDS, max_words: float = MAX_WORDS) -> None:
        if not 0 < first_min_words <= first_max_words or not 0 < min_words <= max_words:
            raise ValueError("need 0 < first_min_words <= first_max_words and 0 < min_words <= max_words")
        self.first_min_words, self.first_max_words = first_min_words, first_max_words
        self.min_words, self.max_words = min_words, max_words
        self._text = ""  # received, not yet handed out
        self._first = True

    def feed(self, delta: str) -> list[str]:
        """Add a delta; the pieces it completes (often none)."""
        self._text += delta
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """The reply ended: the rest, as the last piece or two; the splitter is empty after."""
        pieces = self._cut(final=True)
        self._text, self._first = "", True
        return pieces

    def _cut(self, final: bool) -> list[str]:
        found = atoms(self._text)
        # the last word may go on in the next delta ("3." -> "3.14"), unless text follows it
        done = found if final or not found or found[-1].end < len(self._text) else found[:-1]
        pieces: list[str] = []
        start = 0  # first atom of the current piece
        clause = -1  # last atom of the current piece that ends a clause
        for i, atom in enumerate(done):
            words = weight(done[start : i + 1])
            end = self._end_after(done[start : i + 1], words, found, i)
            if end is None and atom.ends_clause and not self._first:
                clause = i
            if end is None and not self._first and words >= self.max_words:
                end = clause if clause >= start and weight(done[start : clause + 1]) >= self.min_words else i
            if end is None:
                continue
            pieces.append(render(done[start : end + 1]))
            start, clause, self._first = end + 1, -1, False
        if final and weight(done[start:]) > 0:
            pieces.append(render(done[start:]))
        if start:
            self._text = self._text[done[start - 1].end :]
        return pieces

    def _end_after(self, piece: list[Atom], words: float, found: list[Atom], i: int) -> int | None:
        """`i` when the current piece (ending at atom `i`) should end there, else `None`."""
        atom = piece[-1]
        sentence = atom.ends_sentence or self._line_break_after(found, i)
        if self._first:
            if (sentence and words > 0) or (atom.ends_clause and words >= self.first_min_words) \
                    or words >= self.first_max_words:
                return i
            return None
        return i if sentence and words >= self.min_words else None

    def _line_break_after(self, found: list[Atom], i: int) -> bool:
        start = found[i].end
        stop = found[i + 1].end - len(found[i + 1].text) if i + 1 < len(found) else len(self._text)
        return "\n" in self._text[start:stop]


async def split_stream(deltas: AsyncIterable[str], **limits: float) -> AsyncIterator[str]:
    """The pieces of a streamed reply, each as soon as it is complete, then the rest at its end.

    Closing this iterator (or cancelling its consumer) closes `deltas` too, so an LLM reply's
    HTTP stream ends with it.

    Args:
        deltas: Text deltas, e.g. `LlmChat.reply(...)`.
        **limits: `SentenceSplitter`'s word limits.
    """
    splitter = SentenceSplitter(**limits)
    source = aiter(deltas)
    async with contextlib.AsyncExitStack() as stack:
        if hasattr(source, "aclose"):
            stack.push_async_callback(source.aclose)
        async for delta in source:
            for piece in splitter.feed(delta):
                yield piece
        for piece in splitter.flush():
            yield piece
