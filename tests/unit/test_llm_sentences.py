"""Unit tests of `deployments.llm.sentences`: streamed deltas in, pieces to speak out, each as early as it may be."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

import pytest

from deployments.llm.sentences import SentenceSplitter, split_stream

pytestmark = pytest.mark.unit


def feed_all(deltas: list[str], **limits: float) -> list[tuple[int, str]]:
    """(index of the delta after which it came out, piece); the index is len(deltas) for flush."""
    splitter = SentenceSplitter(**limits)
    out = [(i, piece) for i, delta in enumerate(deltas) for piece in splitter.feed(delta)]
    return out + [(len(deltas), piece) for piece in splitter.flush()]


def pieces(deltas: list[str] | str, **limits: float) -> list[str]:
    return [p for _, p in feed_all([deltas] if isinstance(deltas, str) else deltas, **limits)]


def tokens(text: str) -> list[str]:
    """Token-like deltas, cut mid-word: whitespace goes with the next token, words in 1-3 characters."""
    return re.findall(r"\s*[\u4e00-\u9fff]|\s*[^\s\u4e00-\u9fff]{1,3}", text)


def livetalking_split(deltas: list[str]) -> list[str]:
    """LiveTalking's llm.py rule, for comparison: cut after any of ,.!;:，。！？：； once 10+ characters."""
    out, result = [], ""
    for msg in deltas:
        lastpos = 0
        for i, char in enumerate(msg):
            if char in ",.!;:，。！？：；":
                result += msg[lastpos:i + 1]
                lastpos = i + 1
                if len(result) > 10:
                    out.append(result)
                    result = ""
        result += msg[lastpos:]
    return [*out, result]


def test_each_sentence_comes_out_with_the_delta_that_ends_it() -> None:
    deltas = ["Hello", " there", "!", " How", " are", " you", " doing", " today", "?", " I", " am", " fine", "."]
    assert feed_all(deltas) == [
        (3, "Hello there!"),  # the delta after "!" shows the word ended
        (9, "How are you doing today?"),
        (13, "I am fine."),  # the end of the reply flushes the rest
    ]


def test_the_first_piece_may_end_at_a_clause_once_it_has_a_few_words() -> None:
    text = "Sure thing, my friend, I can do that for you, and I will start right away."
    assert pieces(tokens(text)) == ["Sure thing, my friend,", "I can do that for you, and I will start right away."]
    # too short a clause does not end it; a sentence end of any length does
    assert pieces(tokens("Well, I think so. Yes.")) == ["Well, I think so.", "Yes."]
    assert pieces(tokens("Oh! That is a very good question indeed.")) == ["Oh!", "That is a very good question indeed."]


def test_the_first_piece_ends_after_first_max_words_without_punctuation() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen."
    got = feed_all(tokens(text))
    assert got[0][1] == "one two three four five six seven eight nine ten eleven twelve"
    assert got[0][0] < len(tokens(text))  # before the reply ended


def test_later_pieces_are_sentences_short_ones_merged() -> None:
    text = "Here is the plan for today. Yes. Okay! We start with the easy part, then the hard one. Fine."
    assert pieces(tokens(text)) == [
        "Here is the plan for today.",
        "Yes. Okay! We start with the easy part, then the hard one.",
        "Fine.",  # the end: nothing left to merge it with
    ]


def test_a_long_later_sentence_is_cut_at_its_last_clause() -> None:
    long = ("and this sentence keeps going with many words, more words after that, still more of them here, "
            "and yet more words until it ends at last.")
    got = pieces(tokens("First one. Then " + long), max_words=12)
    assert got[0] == "First one."
    assert got[1].endswith(",") and len(got[1].split()) <= 12
    assert " ".join(got).split() == ("First one. Then " + long).split()


def test_decimals_do_not_end_sentences_even_when_a_delta_stops_at_the_point() -> None:
    deltas = ["Pi", " is", " about", " 3", ".", "14", " and", " e", " is", " 2.", "718", ". ", "Nice", "!"]
    assert pieces(deltas) == ["Pi is about 3.14 and e is 2.718.", "Nice!"]
    assert livetalking_split(deltas)[0] == "Pi is about 3."  # what we do better


def test_abbreviations_do_not_end_sentences() -> None:
    text = "Mr. Smith met Dr. Jones, e.g. at the U.S. embassy in Paris. They talked."
    assert pieces(tokens(text)) == ["Mr. Smith met Dr. Jones,", "e.g. at the U.S. embassy in Paris.", "They talked."]
    assert pieces(["I saw Mr", ".", " Smith", " and", " Mrs", ". Jones today. ", "He waved at us."]) == [
        "I saw Mr. Smith and Mrs. Jones today.", "He waved at us."]


def test_ellipses_stay_whole() -> None:
    deltas = ["Well", ".", ".", ".", " I", " am", " not", " sure", "…", " Maybe", " tomorrow", " then", "."]
    assert pieces(deltas) == ["Well...", "I am not sure…", "Maybe tomorrow then."]


def test_chinese() -> None:
    text = "你好！很高兴认识你，我是你的虚拟助手。圆周率约等于3.14，对吧？好的。我们继续聊天吧，你想聊什么呢？"
    got = feed_all(list(text))
    assert [p for _, p in got] == [
        "你好！",  # a sentence end: out at once
        "很高兴认识你，我是你的虚拟助手。",
        "圆周率约等于3.14，对吧？",
        "好的。我们继续聊天吧，你想聊什么呢？",  # 好的。is short: merged
    ]
    assert got[0][0] == text.index("很")  # out with the next character


def test_chinese_first_clause_with_enough_characters() -> None:
    assert pieces(list("当然可以，我们现在就开始吧。")) == ["当然可以，我们现在就开始吧。"]  # 4 characters = 2 words: too short
    assert pieces(list("这个问题非常有意思，我们慢慢来看。")) == ["这个问题非常有意思，", "我们慢慢来看。"]
    assert pieces(list("好的、这个没有问题；我来安排。")) == ["好的、这个没有问题；", "我来安排。"]


def test_mixed_english_and_chinese() -> None:
    assert pieces(tokens("我们用 Piper 合成英文。It works well, really well. 太好了！")) == [
        "我们用 Piper 合成英文。", "It works well, really well.", "太好了！"]


def test_line_breaks_end_sentences() -> None:
    text = "Here are two things\n\nfirst the apples and pears\nthen the bread and the milk"
    assert pieces(tokens(text)) == ["Here are two things", "first the apples and pears", "then the bread and the milk"]


def test_flush_resets_for_the_next_reply() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there, how is it going") == []
    assert splitter.flush() == ["Hello there, how is it going"]
    assert splitter.feed("Sure, fine, thanks, ") == ["Sure, fine, thanks,"]  # a first piece again
    assert splitter.flush() == []


def test_blank_and_wordless_text() -> None:
    assert pieces([]) == []
    assert pieces(["  ", "\n"]) == []
    assert pieces(["Hi", "!", " ", "…"]) == ["Hi!"]  # trailing marks with no word are not spoken


def random_deltas(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, len(text) // 2))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def random_text(rng: random.Random) -> str:
    words = ["a", "cat", "sat", "on", "the", "mat", "3.14", "e.g.", "Dr.", "U.S.", "世界", "你好", "(aside)", "x1"]
    marks = ["", "", "", ",", ".", "!", "?", ";", ":", "...", "。", "，", "！", "\n"]
    return " ".join(rng.choice(words) + rng.choice(marks) for _ in range(rng.randint(1, 60)))


@pytest.mark.parametrize("seed", range(100))
def test_any_cut_into_deltas_gives_the_same_pieces_and_loses_no_word(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng)
    whole = pieces(text)
    assert pieces(random_deltas(text, rng)) == whole
    assert pieces(list(text)) == whole  # one character at a time
    spoken = [w for w in " ".join(whole).split() if any(c.isalnum() for c in w)]
    assert spoken == [w for w in text.split() if any(c.isalnum() for c in w)]
    assert all(p and p == p.strip() for p in whole)


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="first_min_words"):
        SentenceSplitter(first_min_words=5, first_max_words=4)
    with pytest.raises(ValueError):
        SentenceSplitter(min_words=0)


async def test_split_stream_yields_pieces_as_they_complete() -> None:
    gate = asyncio.Event()

    async def deltas() -> AsyncIterator[str]:
        for d in ["Hello", " there", "!", " How", " are", " you"]:
            yield d
        await gate.wait()  # the LLM is still writing
        yield "?"

    stream = split_stream(deltas())
    assert await anext(stream) == "Hello there!"  # before the reply is done
    gate.set()
    assert [p async for p in stream] == ["How are you?"]


async def test_closing_or_cancelling_split_stream_closes_its_source() -> None:
    closed: list[str] = []

    async def deltas(name: str) -> AsyncIterator[str]:
        try:
            yield "First sentence here. "
            yield "Second"
            await asyncio.sleep(3600)
        finally:
            closed.append(name)

    stream = split_stream(deltas("closed"))
    assert await anext(stream) == "First sentence here."
    await stream.aclose()

    async def consume() -> None:
        async for _ in split_stream(deltas("cancelled")):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["closed", "cancelled"]
