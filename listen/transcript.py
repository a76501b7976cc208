"""What the recogniser heard, as the listening stage passes it on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transcript:
    """What the recogniser heard. `sentence_end`: the probability its decoder gave to the sentence
    end (. ? !) where the text ends, a language model's own judgement of whether the words are
    finished (None: the backend cannot tell; `listen.turns.trails_off` reads it)."""

    text: str
    sentence_end: float | None = None
