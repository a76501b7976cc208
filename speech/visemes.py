"""Visemes: the mouth shapes of speech, and how phonemes map onto them.

Seven classes cover what a viewer reads from lips: REST (silence), NEUTRAL
(tongue consonants, schwa: lips slightly apart), CLOSED (m, b, p: lips pressed
together), LABIODENTAL (f, v: lower lip against the upper teeth), ROUNDED
(o, u, w, the protruded sh/ch), SPREAD (i, e, s, z) and OPEN (a). Each class has
a target `MouthShape`; the per-frame shape is a blend of these targets.

Phonemes come from espeak-ng as IPA strings (stress and length marks are
dropped). A diphthong ("aʊ", "eɪ") moves through two classes, so its interval
is split between them. A TTS backend labels its audio with one code per
sample (`LabelledAudio`), so any chunking keeps the labels aligned; each 20 ms
chunk then carries one code per `CODE_SAMPLES` (5 ms) to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

CODE_SAMPLES = 80  # one viseme code per 5 ms of 16 kHz audio
IGNORED_MARKS = "ˈˌːˑ̩̯‿"


class Viseme(IntEnum):
    REST = 0
    NEUTRAL = 1
    CLOSED = 2
    LABIODENTAL = 3
    ROUNDED = 4
    SPREAD = 5
    OPEN = 6


VISEME_COUNT = len(Viseme)


@dataclass(frozen=True)
class MouthShape:
    """jaw 0..1 (closed..wide open), lips 0..1 (extra lip parting), width -1..1
    (rounded and protruded..spread), press 0..1 (the lips pushed together, closing
    whatever gap the photo's resting mouth has); brow 0..1 (speech emphasis: brows
    raised and a small nod, the face's share of the shape)."""

    jaw: float = 0.0
    lips: float = 0.0
    width: float = 0.0
    press: float = 0.0
    brow: float = 0.0

    @property
    def closed(self) -> bool:
        """Exactly the resting face (the idle frame is shown untouched)."""
        return not (self.jaw or self.lips or self.width or self.press or self.brow)

    def as_array(self) -> np.ndarray:
        return np.array([self.jaw, self.lips, self.width, self.press], np.float64)


# Target shape per class at full loudness (the opening scales with loudness).
SHAPES: dict[Viseme, MouthShape] = {
    Viseme.REST: MouthShape(),
    Viseme.NEUTRAL: MouthShape(jaw=0.75, lips=0.35, width=0.0),
    Viseme.CLOSED: MouthShape(press=1.0),
    Viseme.LABIODENTAL: MouthShape(jaw=0.08, width=0.25, press=0.7),
    Viseme.ROUNDED: MouthShape(jaw=0.75, lips=0.4, width=-1.0),
    Viseme.SPREAD: MouthShape(jaw=0.7, lips=0.35, width=0.9),
    Viseme.OPEN: MouthShape(jaw=1.0, lips=0.45, width=0.15),
}
SHAPE_TABLE = np.stack([SHAPES[v].as_array() for v in Viseme])  # (classes, 4)

_CLASS_OF_SOUND = {
    Viseme.CLOSED: "m p b ɱ",
    Viseme.LABIODENTAL: "f v",
    Viseme.ROUNDED: "u uː ʊ o ɔ ɒ w ʍ y ʏ ø œ ɵ ɥ ɹ r ʃ ʒ tʃ dʒ ɚ ɝ ɜ",
    Viseme.SPREAD: "i ɪ e ɛ j s z ɨ ʝ ç",
    Viseme.OPEN: "a ɑ æ ʌ ɐ ɶ ɑ̃ ã",
    Viseme.NEUTRAL: "ə t d n l k ɡ g h ŋ θ ð ɾ ʔ x ɣ ɲ ʎ ʁ ɫ ɬ ts dz",
}
SOUNDS = {sound: viseme for viseme, sounds in _CLASS_OF_SOUND.items() for sound in sounds.split()}


def classes_of_phoneme(name: str) -> list[Viseme]:
    """The viseme(s) an IPA phoneme moves through ([] for a pause)."""
    sound = "".join(ch for ch in name if ch not in IGNORED_MARKS).strip()
    if not sound:
        return []
    if sound in SOUNDS:
        return [SOUNDS[sound]]
    result: list[Viseme] = []
    rest = sound
    while rest:  # longest known prefix first: "tʃ" before "t", "ɔːɹ" as ɔ + ɹ
        for size in (2, 1):
            head = rest[:size]
            if head in SOUNDS:
                if not result or result[-1] != SOUNDS[head]:
                    result.append(SOUNDS[head])
                rest = rest[size:]
                break
        else:
            rest = rest[1:]  # an unknown symbol (a tone, a diacritic): skip it
    return result or [Viseme.NEUTRAL]


def label_samples(phonemes: list[tuple[int, str]], total: int) -> np.ndarray:
    """Per-sample viseme codes (uint8) for audio of `total` samples.

    `phonemes` are (start sample, IPA name) in order; each lasts until the next
    starts. Samples before the first phoneme and after pauses are REST.
    """
    codes = np.full(total, Viseme.REST, np.uint8)
    for index, (start, name) in enumerate(phonemes):
        end = phonemes[index + 1][0] if index + 1 < len(phonemes) else total
        start, end = max(0, min(start, total)), max(0, min(end, total))
        classes = classes_of_phoneme(name)
        if end <= start or not classes:
            continue
        bounds = np.linspace(start, end, len(classes) + 1).round().astype(int)
        for viseme, a, b in zip(classes, bounds[:-1], bounds[1:]):
            codes[a:b] = viseme
    return codes


def downsample_codes(codes: np.ndarray) -> np.ndarray:
    """Per-sample codes -> one per CODE_SAMPLES (the most frequent in each slot)."""
    slots = -(-len(codes) // CODE_SAMPLES)
    padded = np.full(slots * CODE_SAMPLES, Viseme.REST, np.uint8)
    padded[: len(codes)] = codes
    counts = np.zeros((slots, VISEME_COUNT), np.int32)
    for viseme in Viseme:
        counts[:, viseme] = (padded.reshape(slots, CODE_SAMPLES) == viseme).sum(axis=1)
    return counts.argmax(axis=1).astype(np.uint8)


@dataclass(frozen=True)
class LabelledAudio:
    """16 kHz float32 audio with its viseme code per sample (uint8, same length)."""

    samples: np.ndarray
    codes: np.ndarray
