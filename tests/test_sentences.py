"""Sentence aggregation for TTS: boundaries in English, Chinese, mixed text and numbers."""

from __future__ import annotations

import random

import pytest

from speech.sentences import ASCII_ENDS, CLOSERS, HARD_ENDS, SentenceAggregator, join_sentences, speech_length

TRAILING = "".join(CLOSERS | HARD_ENDS | ASCII_ENDS)


def run(pieces: list[str], **options) -> list[str]:
    aggregator = SentenceAggregator(**options)
    sentences = [s for piece in pieces for s in aggregator.push(piece)]
    tail = aggregator.flush()
    return sentences + ([tail] if tail else [])


def random_pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        step = rng.randint(1, 6)
        pieces.append(text[i : i + step])
        i += step
    return pieces


CASES = {
    "english": (
        "Hello there. How are you? I'm fine! Thanks; and you.",
        ["Hello there.", "How are you?", "I'm fine!", "Thanks;", "and you."],
    ),
    "chinese": (
        "你好。今天天气怎么样？很好！我们走吧……好",
        ["你好。", "今天天气怎么样？", "很好！", "我们走吧……", "好"],
    ),
    "mixed": (
        "我在用Python 3.11写代码。It costs 3.50 dollars, e.g. cheap. 好的！",
        ["我在用Python 3.11写代码。", "It costs 3.50 dollars, e.g. cheap.", "好的！"],
    ),
    "numbers and abbreviations": (
        "Mr. Smith paid 1,000 dollars at 3:30 for version 2.5.1 of it. Then J. R. left.",
        ["Mr. Smith paid 1,000 dollars at 3:30 for version 2.5.1 of it.", "Then J. R. left."],
    ),
    "line breaks and lists": (
        "Steps:\n1. Open the door\n2. Walk in\nDone",
        ["Steps:", "1. Open the door", "2. Walk in", "Done"],
    ),
    "quotes stay with their sentence": (
        '他说："好。"然后走了。She said "yes." Then left.',
        ['他说："好。"', "然后走了。", 'She said "yes."', "Then left."],
    ),
    "ellipsis": ("Wait... what? Hmm.", ["Wait...", "what?", "Hmm."]),
    "markdown": ("**Sure**, here it is:\n- `one` thing\n# Two", ["Sure, here it is:", "one thing", "Two"]),
}


@pytest.mark.parametrize("text,expected", CASES.values(), ids=CASES.keys())
def test_boundaries_do_not_depend_on_how_the_stream_is_split(text, expected):
    assert run([text]) == expected
    # A sentence is released the moment it ends, so a run like "……" or a closing quote that
    # arrives in the next chunk is dropped: only the trailing punctuation may differ.
    stem = [s.rstrip(TRAILING) for s in expected]
    assert [s.rstrip(TRAILING) for s in run(list(text))] == stem  # every word split mid-way
    for seed in range(5):
        assert [s.rstrip(TRAILING) for s in run(random_pieces(text, seed))] == stem


def test_a_sentence_is_released_as_soon_as_its_end_arrives():
    aggregator = SentenceAggregator()
    assert aggregator.push("Hello the") == []
    assert aggregator.push("re!") == ["Hello there!"]
    assert aggregator.push("你好") == []
    assert aggregator.push("。") == ["你好。"]
    assert aggregator.push("Line\n") == ["Line"]


def test_a_dot_at_the_end_of_a_chunk_waits_for_one_chunk_only():
    aggregator = SentenceAggregator()
    assert aggregator.push("It is 3.") == []  # "3." could become "3.5"
    assert aggregator.push("5 today.") == []
    assert aggregator.push(" Next") == ["It is 3.5 today."]
    assert aggregator.flush() == "Next"
    aggregator.push("The end.")
    assert aggregator.flush() == "The end."  # the end of the stream ends the sentence


def test_commas_split_only_long_sentences():
    assert run(["Yes, I think so, really."]) == ["Yes, I think so, really."]
    long = "When you arrive at the station tomorrow morning, call me, and I will pick you up."
    assert run([long]) == ["When you arrive at the station tomorrow morning,", "call me, and I will pick you up."]
    chinese = "当然可以，我们明天上午十点在公司门口见面，然后一起去。"
    assert run(list(chinese)) == ["当然可以，我们明天上午十点在公司门口见面，", "然后一起去。"]
    assert run(list(chinese), min_comma_chars=9) == ["当然可以，", "我们明天上午十点在公司门口见面，", "然后一起去。"]


def test_runs_of_punctuation_never_become_sentences_of_their_own():
    assert run(["Really?!"]) == ["Really?!"]
    assert run(list("Hello!!! Bye.")) == ["Hello!", "Bye."]
    assert run(["..."]) == []


def test_a_sentence_that_never_ends_is_cut_when_too_long():
    words = " ".join(f"word{i}" for i in range(60))
    sentences = run(list(words), max_chars=100)
    assert len(sentences) > 1
    assert all(speech_length(s) <= 100 for s in sentences)
    assert " ".join(sentences) == words


def test_join_puts_spaces_only_between_latin_sentences():
    assert join_sentences(["Hello there.", "How are you?"]) == "Hello there. How are you?"
    assert join_sentences(["你好。", "今天好吗？", "OK."]) == "你好。今天好吗？OK."
