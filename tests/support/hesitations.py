"""Sentences a user says with a hesitation inside: the turn must not end at the pause.

Each is two espeak clips (their leading and trailing silence trimmed) with `HESITATION_S`
of true silence between them, as a person stops to think mid-sentence. The first three are
the issue's own examples; the rest were written in their spirit before any was measured.
`HELD_OUT` was written later, after the turn rule had been tuned on `HESITATIONS` and before
it was run on them: it checks that the rule was not fitted to the first set.
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

HELD_OUT = [
    ("I was wondering if", "you could help me with my homework."),
    ("The best time to call me is", "after five in the afternoon."),
    ("Can I get", "a cup of coffee with milk?"),
    ("I'm looking for", "a good book about history."),
    ("Tomorrow I have to", "see the dentist at nine."),
    ("Do you know how", "long the film lasts?"),
    ("We should probably", "book the tickets tonight."),
    ("My brother lives in", "a small town near the coast."),
    ("How much does it cost to", "send a parcel to Spain?"),
    ("I left my keys on", "the table in the kitchen."),
    ("Could you please tell me", "how to get to the airport?"),
    ("She said that", "the meeting was moved to Monday."),
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
