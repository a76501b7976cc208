"""Sentences a user says with a hesitation inside: the turn must not end at the pause.

Each is two espeak clips (their leading and trailing silence trimmed) with `HESITATION_S`
of true silence between them, as a person stops to think mid-sentence. The first three are
the issue's own examples; the rest were written in their spirit before any was measured.
"""

from __future__ import annotations

import numpy as np

from tests.support.speech_sender import SOURCE_RATE, speak

HESITATION_S = 0.7

HESITATIONS = [
    ("I would like to order", "a large pizza with extra cheese."),
    ("My favourite colour is", "dark blue, like the sea at night."),
    ("Can you tell me where", "the nearest train station is?"),
    ("I think that we should", "leave a little earlier tomorrow."),
    ("Could you remind me to", "call my sister this evening?"),
    ("The name of the hotel was", "something like the Grand Palace."),
    ("I need a ticket to", "Edinburgh for next Friday."),
    ("What I really want is", "a quiet room with a view of the garden."),
    ("Please send the report to", "the whole team before noon."),
    ("My flight leaves at", "half past six in the morning."),
    ("Is it possible to", "change my appointment to Thursday?"),
    ("We went to the market and", "bought some fresh bread and cheese."),
]


def trimmed(audio: np.ndarray, level: float = 0.02) -> np.ndarray:
    """The clip from its first to its last audible sample."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0]:loud[-1] + 1]


def hesitant(first: str, second: str, pause_s: float = HESITATION_S) -> np.ndarray:
    """16 kHz speech of `first`, `pause_s` of silence, then `second`."""
    return np.concatenate([trimmed(speak(first)), np.zeros(int(pause_s * SOURCE_RATE), np.float32),
                           trimmed(speak(second))])


def full_text(pair: tuple[str, str]) -> str:
    return f"{pair[0]} {pair[1]}"
