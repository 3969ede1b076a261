"""Unit tests of `deployments.tts.splitter.split_text`: properties first, then examples."""

from __future__ import annotations

import random

import pytest

from deployments.tts.splitter import split_text

pytestmark = pytest.mark.unit

ENGLISH = [
    "Hello.",
    "Hi. How are you? I'm fine, thanks!",
    "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep.",
    "Yes, of course; I can do that for you right now: just give me a moment — or two – please.",
    "Dr. Smith moved to the U.S. in 1999, e.g. before the 3.5% rise... Then what?",
    'He said "stop." Then he left (quietly).',
    " ".join(f"word{i}" for i in range(61)) + ".",
    "  leading and trailing whitespace \n\n and newlines\tand tabs  ",
]
CJK = [
    "你好，世界。今天天气很好，我们去公园散步吧！你觉得怎么样？",
    "这是一个非常非常长的句子没有任何标点符号我们需要按照字数把它切开以便尽快开始播放声音",
    "東京は大きい都市です。日本語、中国語、韓国語：どれも難しい！",
    "AI模型很好。OK? 我们用 Piper 合成英文。",
]


def random_text(rng: random.Random) -> str:
    marks = ["", "", "", ",", ".", "!", "?", ";", ":", " —", "...", "。", "，"]
    words = ["a", "cat", "sat", "on", "the", "mat", "世界", "你好", "x1", "“quoted”", "(aside)"]
    return " ".join(rng.choice(words) + rng.choice(marks) for _ in range(rng.randint(0, 80)))


RANDOM = [random_text(random.Random(seed)) for seed in range(200)]


def word_count(piece: str) -> int:
    return sum(any(c.isalnum() for c in w) for w in piece.split())


@pytest.mark.parametrize("text", ENGLISH + RANDOM)
def test_words_are_never_lost(text: str) -> None:
    pieces = split_text(text)
    assert " ".join(pieces).split() == text.split()


@pytest.mark.parametrize("text", CJK + RANDOM)
def test_characters_are_never_lost(text: str) -> None:
    pieces = split_text(text)
    assert "".join("".join(p.split()) for p in pieces) == "".join(text.split())


@pytest.mark.parametrize("text", ENGLISH + CJK + RANDOM)
def test_pieces_are_stripped_and_never_empty(text: str) -> None:
    for piece in split_text(text):
        assert piece and piece == piece.strip()


@pytest.mark.parametrize(("first_max", "max_words"), [(6, 18), (3, 10), (1, 5), (10, 10)])
@pytest.mark.parametrize("text", ENGLISH)
def test_piece_lengths(text: str, first_max: int, max_words: int) -> None:
    pieces = split_text(text, first_max_words=first_max, max_words=max_words)
    assert word_count(pieces[0]) <= first_max
    assert all(word_count(p) <= max_words for p in pieces)


def test_first_piece_is_short_then_split_at_the_clause() -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs back home to sleep."
    assert split_text(text) == [
        "The quick brown fox jumps",
        "over the lazy dog, and then it runs back home to sleep.",
    ]


def test_sentences_and_clauses() -> None:
    assert split_text("Hi. How are you? I'm fine, thanks!") == [
        "Hi.",
        "How are you?",
        "I'm fine, thanks!",
    ]
    long = "one two three, four five six; seven eight nine: ten eleven twelve — thirteen"
    assert split_text(long, first_max_words=3, max_words=3) == [
        "one two three,",
        "four five six;",
        "seven eight nine:",
        "ten eleven twelve —",
        "thirteen",
    ]


def test_abbreviations_and_numbers_do_not_end_sentences() -> None:
    assert split_text("Dr. Smith paid 3.50 dollars in the U.S. today.") == [
        "Dr. Smith paid 3.50 dollars",
        "in the U.S. today.",
    ]


def test_long_clause_is_cut_evenly_by_word_count() -> None:
    text = " ".join(f"w{i}" for i in range(40))
    pieces = split_text(text)
    assert [word_count(p) for p in pieces] == [6, 17, 17]


def test_cjk_punctuation() -> None:
    assert split_text("你好，世界。今天天气很好，我们去公园散步吧！你觉得怎么样？") == [
        "你好，世界。",
        "今天天气很好，我们去公园散步吧！",
        "你觉得怎么样？",
    ]
    unpunctuated = "这是一个非常非常长的句子没有任何标点符号我们需要按照字数把它切开"
    pieces = split_text(unpunctuated)
    assert len(pieces) >= 2 and len(pieces[0]) <= 12  # 6 words ~ 12 characters


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text(text: str) -> None:
    assert split_text(text) == []


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split_text("hello", first_max_words=0)
