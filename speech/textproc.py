"""Text clean-up before TTS: strip markdown and emoji, cut long text into sentences."""

from __future__ import annotations

import re

from speech.sentences import SentenceAggregator

_CODE_BLOCK = re.compile(r"```.*?```", re.S)
_INLINE_CODE = re.compile(r"`([^`]*)`")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.M)
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M)
_QUOTE = re.compile(r"^\s*>\s?", re.M)
_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3}|~~)(\S.*?\S|\S)\1")
_TABLE_RULE = re.compile(r"^\s*\|?[\s:|-]+\|[\s:|-]*$", re.M)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\U00002300-\U000023ff"
    "\U0000fe0f\U0000200d\U00002b00-\U00002bff\U0001f1e6-\U0001f1ff]+"
)
_SPACES = re.compile(r"[ \t\u3000]+")


def clean_for_speech(text: str) -> str:
    """Plain speakable text: markdown syntax and emoji removed, whitespace tidied."""
    text = _CODE_BLOCK.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _TABLE_RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _LIST_MARK.sub("", text)
    text = _QUOTE.sub("", text)
    for _ in range(2):
        text = _EMPHASIS.sub(r"\2", text)
    text = _EMOJI.sub(" ", text)
    text = text.replace("|", " ")
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def split_sentences(text: str) -> list[str]:
    """Sentences in order, cut by the same rules as streamed LLM replies."""
    aggregator = SentenceAggregator()
    sentences = aggregator.push(text)
    tail = aggregator.flush()
    return sentences + ([tail] if tail else [])
