"""Cutting a streamed LLM reply into sentences for TTS, as early as each one ends.

The first sentence decides how soon the avatar starts talking, so a sentence is
released the moment its end is visible: at 。！？；… !?; or a line break, at a
comma once the sentence is long enough to be worth its own TTS call, and at a
'.' only when whitespace follows (so "3.5", "e.g." and "Mr. Smith" stay whole).
A '.' that ends a chunk is decided by the next chunk (or the end of the stream);
that is the only time a finished sentence waits, and never longer than one chunk.
"""

from __future__ import annotations

import re

HARD_ENDS = frozenset("。！？；…\n")
ASCII_ENDS = frozenset("!?;")  # end a sentence unless a letter or digit follows ("?q=1")
SOFT_BREAKS = frozenset("，、：")
ASCII_SOFT_BREAKS = frozenset(",:")  # not inside numbers: "1,000", "3:30"
CLOSERS = frozenset("\"'”’」』）)】》]")
LEADING_LEFTOVERS = CLOSERS | HARD_ENDS | ASCII_ENDS | SOFT_BREAKS | ASCII_SOFT_BREAKS | {"."}  # tail of the last cut
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "approx"})
CJK_WEIGHT = 3  # a CJK character is about one syllable, like three Latin letters
DEFAULT_MIN_COMMA_CHARS = 24
DEFAULT_MAX_CHARS = 240
MARKUP = re.compile(r"\*\*|__|`|^\s*#+\s*|^\s*[-*•]\s+", re.MULTILINE)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x3040 <= code <= 0x30FF  # kana
        or 0x3400 <= code <= 0x4DBF
        or 0x4E00 <= code <= 0x9FFF
        or 0xF900 <= code <= 0xFAFF
        or 0xAC00 <= code <= 0xD7AF  # hangul syllables
    )


def speech_length(text: str) -> int:
    """Length in Latin-letter units: CJK characters weigh more, spaces nothing."""
    return sum(CJK_WEIGHT if is_cjk(c) else 1 for c in text if not c.isspace())


def clean_sentence(text: str) -> str | None:
    """Text worth sending to TTS, or None: markdown markers go, punctuation-only pieces are dropped."""
    text = MARKUP.sub("", text).strip()
    while text and (text[0] in LEADING_LEFTOVERS or text[0].isspace()):
        text = text[1:]
    if not any(c.isalnum() for c in text):
        return None
    return text


def join_sentences(sentences: list[str]) -> str:
    """Re-join sentences: a space between Latin-script ones, nothing next to CJK."""
    out = ""
    for sentence in sentences:
        if out and not (is_cjk(out[-1]) or is_cjk(sentence[0]) or out[-1] in HARD_ENDS or out[-1] in SOFT_BREAKS):
            out += " "
        out += sentence
    return out


class SentenceAggregator:
    """Feed text deltas with `push`; get back the sentences they completed."""

    def __init__(self, min_comma_chars: int = DEFAULT_MIN_COMMA_CHARS, max_chars: int = DEFAULT_MAX_CHARS):
        self.min_comma_chars = min_comma_chars
        self.max_chars = max_chars
        self._buf = ""
        self._scan = 0  # characters before this index are known not to end a sentence

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        sentences = []
        while (cut := self._find_cut()) is not None:
            piece, self._buf, self._scan = self._buf[:cut], self._buf[cut:], 0
            if (sentence := clean_sentence(piece)) is not None:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str | None:
        """The rest of the text at the end of the stream (a pending '.' ends here)."""
        rest, self._buf, self._scan = self._buf, "", 0
        return clean_sentence(rest)

    def _find_cut(self) -> int | None:
        """Index just past the first complete sentence, or None if none is complete yet."""
        buf = self._buf
        i = self._scan
        cap = self._cap_index()
        while i < len(buf):
            if cap is not None and i >= cap:
                return self._forced_cut(cap)
            char = buf[i]
            following = buf[i + 1] if i + 1 < len(buf) else None
            if char in HARD_ENDS:
                return self._past_closers(i + 1, also=HARD_ENDS | ASCII_ENDS)
            if char in ASCII_ENDS and (following is None or not (following.isascii() and following.isalnum())):
                return self._past_closers(i + 1, also=ASCII_ENDS | HARD_ENDS)
            if char == ".":
                end = self._past_closers(i + 1)
                if end == len(buf):
                    self._scan = i  # decided by the next chunk or by flush()
                    return None
                after = buf[end]
                if (after.isspace() or is_cjk(after)) and not self._is_abbreviation(i):
                    return end
            elif char in SOFT_BREAKS and speech_length(buf[: i + 1]) >= self.min_comma_chars:
                return self._past_closers(i + 1)
            elif char in ASCII_SOFT_BREAKS and speech_length(buf[: i + 1]) >= self.min_comma_chars:
                if following is None and i > 0 and buf[i - 1].isdigit():
                    self._scan = i  # "1," may be "1,000"
                    return None
                if following is None or not following.isdigit():
                    return self._past_closers(i + 1)
            i += 1
        self._scan = len(buf)
        return None if cap is None else self._forced_cut(cap)

    def _past_closers(self, index: int, also: frozenset[str] = frozenset()) -> int:
        buf = self._buf
        while index < len(buf) and (buf[index] in CLOSERS or buf[index] in also):
            index += 1
        return index

    def _is_abbreviation(self, dot: int) -> bool:
        """'Mr.', 'e.g.', an initial 'J.', or a list number '2.' at the start of a sentence."""
        start = dot
        while start > 0 and (self._buf[start - 1].isalpha() or self._buf[start - 1] == "."):
            start -= 1
        word = self._buf[start:dot].strip(".").lower()
        if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return True
        return self._buf[:dot].strip().isdigit()

    def _cap_index(self) -> int | None:
        """Index of the first character past `max_chars` of speech, or None if the buffer is shorter."""
        length = 0
        for index, char in enumerate(self._buf):
            if not char.isspace():
                length += CJK_WEIGHT if is_cjk(char) else 1
                if length > self.max_chars:
                    return index
        return None

    def _forced_cut(self, cap: int) -> int:
        """A sentence longer than the cap is cut at its last space before the cap (or at the cap, for CJK)."""
        space = self._buf.rfind(" ", 0, cap)
        return space + 1 if space > cap // 2 else cap
