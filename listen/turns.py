"""Turn detection: speech probabilities per window -> the user's turns.

A turn starts once speech has lasted `min_speech_ms` (a cough or a click is
shorter and is forgotten), and ends after `end_silence_ms` of silence. With a
turn model (`fallback_silence_ms` given: `--turn smart`), a short pause asks
for two verdicts instead: the pause's speculative transcript (`text_verdict()`,
asked for after SPECULATE_SILENCE_MS; the reply needs it anyway, so waiting for
it costs no time) and, after JUDGE_SILENCE_MS, the turn model's probability
(the caller runs the model on `heard()` and passes it to `verdict()`). Whisper
ends a sentence it heard finished with . ? or !, and leaves speech that stops
mid-sentence without it or with an ellipsis, which keeps the turn open; its
decoder, a language model, gives the probability of that sentence end (the way
LiveKit's turn detector reads an LLM's probability of the end of an utterance).
Both must call the turn complete (`ends_turn`) to end it at the pause; else it
keeps listening, up to `fallback_silence_ms` of silence (a hesitation), or only
SURE_SILENCE_MS when the turn model alone holds it open and the transcript is sure
of its sentence end (LiveKit's shorter and longer endpointing delays). The
audio of a turn (with a little audio from before its onset) is handed out at
its end, or in pieces of `max_utterance_s` when the user talks on and on, so
memory stays bounded however long the monologue.

With a turn model, speech that resumes before the fallback silence has passed since the
last word of an ended turn continues that turn (`continues` on its start): the models
called a hesitation the end, and the user has just shown they were not done. The new
turn's audio starts with the ended one's, so its pauses are judged and its transcript made
on the whole sentence, and the reply to the first half can be withdrawn; the silence between
is shortened to the pre-roll (Whisper tends to stop at a full stop followed by a second of
silence, and leave out the rest). Without a turn model a pause that long is the end of a
turn by definition.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from listen.transcript import Transcript
from listen.vad import WINDOW_MS, WINDOW_SAMPLES

PRE_ROLL_MS = 256  # audio kept from before the onset, so the first phoneme is not clipped
NEGATIVE_MARGIN = 0.15  # hysteresis: speech continues until the probability falls this far below the threshold
ONSET_GAP_MS = 96  # a dip this long before the onset is confirmed drops the candidate
SPECULATE_SILENCE_MS = 96  # silence after which the turn's audio is offered for a speculative transcription
JUDGE_SILENCE_MS = 160  # silence after which the turn model judges the pause (it is less sure of less silence)
SENTENCE_ENDS = (".", "?", "!")  # how Whisper ends a sentence it heard finished
TRAILING_MARKS = ("...", "\u2026")  # how it ends speech that trails off
# Below this probability of its own sentence end the recogniser was guessing: "Please send the report
# to." (0.26), "My flight leave." (0.29) against 0.52-0.96 for finished sentences (espeak, tiny.en)
SENTENCE_END_MIN_PROBABILITY = 0.4
AUDIO_COMPLETE_PROBABILITY = 0.5  # the turn model's (pipecat's own threshold)
# A transcript this sure of its sentence end, which the turn model alone holds open, ends the turn after
# SURE_SILENCE_MS instead of the fallback: espeak sentences Smart Turn called unfinished had 0.80-0.94
# (9 of 48), the halves of the hesitation sets at most 0.79 (BENCHMARKS "A sure transcript")
SURE_SENTENCE_END = 0.85
SURE_SILENCE_MS = 480


def trails_off(text: str, sentence_end: float | None = None) -> bool:
    """The recogniser's own output says the words stop mid-sentence ("I would like to...",
    "Is it possible to"), or that the sentence end it wrote was a guess (`sentence_end`: its
    decoder's probability of that end; None when the backend cannot tell). Its output read as
    is, no grammar of ours."""
    text = text.rstrip()
    if not text.endswith(SENTENCE_ENDS) or text.endswith(TRAILING_MARKS):
        return True
    return sentence_end is not None and sentence_end < SENTENCE_END_MIN_PROBABILITY


def sure_of_end(transcript: Transcript | None) -> bool:
    """The recogniser heard a finished sentence and is sure of its end (not merely above the guess line)."""
    return (transcript is not None and transcript.sentence_end is not None
            and transcript.sentence_end >= SURE_SENTENCE_END and not trails_off(transcript.text))


def ends_turn(audio: float, transcript: Transcript | None) -> bool:
    """The turn is over at this pause: `audio`, the turn model's probability that it is; `transcript`,
    the pause's speculative transcript (None: none came, recognition was busy or failed). Both must
    say so: an unsure turn model or a transcript that trails off keeps the turn open. (The mean of the
    two probabilities was tried: BENCHMARKS "Two probabilities, one verdict".)"""
    if audio <= AUDIO_COMPLETE_PROBABILITY:
        return False
    return transcript is None or not trails_off(transcript.text, transcript.sentence_end)


@dataclass(frozen=True)
class TurnEvent:
    """start; pause (audio: the turn so far, the same audio "end" will carry unless the user
    resumes); resume (the pause was not the end); end and cut (audio: the utterance)."""

    kind: str  # "start" | "pause" | "resume" | "end" | "cut"
    audio: np.ndarray | None = None
    reason: str = ""  # end: "model" (judged complete), "transcript" (only the transcript sure: after SURE_SILENCE_MS),
    # "silence" (--turn silence) or "fallback" (judged incomplete)
    silence_ms: int = 0  # end: the silence heard after the last speech window when the turn ended
    pause: int = 0  # pause: its number, which `text_verdict` quotes
    continues: bool = False  # start: the previous turn goes on (resumed within the fallback silence)


class TurnDetector:
    """Pure state machine fed one window (audio + speech probability) at a time."""

    def __init__(self, threshold: float, min_speech_ms: int, end_silence_ms: int, max_utterance_s: float,
                 fallback_silence_ms: int | None = None):
        self.threshold = threshold
        self.negative = max(threshold - NEGATIVE_MARGIN, 0.01)
        self.min_windows = max(1, round(min_speech_ms / WINDOW_MS))  # the nearest whole window: 200 ms -> 192
        self.smart = fallback_silence_ms is not None  # a turn model gives its verdict at the pause
        self.end_windows = max(1, -(-(fallback_silence_ms if self.smart else end_silence_ms) // WINDOW_MS))
        self.max_windows = int(max_utterance_s * 1000 // WINDOW_MS)
        self.gap_windows = max(1, ONSET_GAP_MS // WINDOW_MS)
        speculate, judge = max(1, SPECULATE_SILENCE_MS // WINDOW_MS), max(1, JUDGE_SILENCE_MS // WINDOW_MS)
        self.speculate_windows = speculate if speculate < self.end_windows else None  # no pause when the end comes as soon
        self.judge_windows = max(judge, speculate)
        self.sure_windows = max(SURE_SILENCE_MS // WINDOW_MS, self.judge_windows)
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(1, PRE_ROLL_MS // WINDOW_MS))
        self._candidate: list[np.ndarray] = []
        self._candidate_speech = 0
        self._candidate_gap = 0
        self._utterance: list[np.ndarray] = []
        self._silence = 0
        # this pause's two verdicts; once both are in and it is held open, no more until the user resumes
        self._audio: float | None = None  # the turn model's probability
        self._text: Transcript | None = None  # the transcript (`_text_back`: it came, None or not)
        self._text_back = False
        self._pauses = 0  # pauses so far (their numbers)
        # the turn that ended last (its audio), kept while speech resuming would continue it: until the
        # fallback silence has passed since its last speech window (`_ended_silence` windows, and counting)
        self._ended: list[np.ndarray] | None = None
        self._ended_silence = 0
        self.in_turn = False

    def push(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        if self.in_turn:
            return self._in_turn(window, prob)
        return self._waiting(window, prob)

    def _waiting(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        if prob >= self.threshold:
            self._candidate.append(window)
            self._candidate_speech += 1
            self._candidate_gap = 0
        elif self._candidate:
            self._candidate.append(window)
            self._candidate_gap += 1
            if self._candidate_gap >= self.gap_windows:
                self._ended_silence += len(self._candidate)  # a cough: silence to the turn before
                self._pre_roll.extend(self._candidate)  # forgotten, kept only as pre-roll
                self._reset_candidate()
                self._expire_ended()
            return []
        else:
            self._pre_roll.append(window)
            self._ended_silence += 1
            self._expire_ended()
            return []
        if self._candidate_speech < self.min_windows:
            return []
        self.in_turn = True
        continues = self._ended is not None
        self._utterance = [*(self._ended or []), *self._pre_roll, *self._candidate]
        self._forget_ended()
        self._pre_roll.clear()
        self._reset_candidate()
        self._silence = 0
        return [TurnEvent("start", continues=continues)]

    def _expire_ended(self) -> None:
        """The ended turn is over for good once the silence since its last speech reaches the fallback."""
        if self._ended is not None and self._ended_silence >= self.end_windows:
            self._forget_ended()

    def _forget_ended(self) -> None:
        self._ended, self._ended_silence = None, 0

    def _in_turn(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        self._utterance.append(window)
        paused = self.speculate_windows is not None and self._silence >= self.speculate_windows
        self._silence = self._silence + 1 if prob < self.negative else 0
        if paused and self._silence == 0:
            self._forget_pause()
            return [TurnEvent("resume")]
        if self._silence >= self.end_windows:
            return [self._end("fallback" if self.smart else "silence")]
        if self._sure_held():
            return [self._end("transcript")]
        if len(self._utterance) >= self.max_windows:  # before the pause: a piece never outgrows max_utterance_s
            return [TurnEvent("cut", self._take(len(self._utterance)))]
        if self._silence == self.speculate_windows:
            self._pauses += 1
            return [TurnEvent("pause", np.concatenate(self._utterance[:self._spoken_windows()]), pause=self._pauses)]
        return []

    @property
    def _paused(self) -> bool:
        return self.in_turn and self.speculate_windows is not None and self._silence >= self.speculate_windows

    @property
    def awaiting_verdict(self) -> bool:
        """A pause long enough for the turn model, which has not judged it yet (only with a turn model)."""
        return self.smart and self._paused and self._silence >= self.judge_windows and self._audio is None

    def heard(self) -> np.ndarray:
        """The turn so far, its silence included: what the turn model judges."""
        return np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)

    def verdict(self, probability: float) -> list[TurnEvent]:
        """The turn model's probability that the user has finished, at this pause: decided now if the
        pause's transcript (`text_verdict`) is back, else when it comes."""
        if not self.awaiting_verdict:
            return []  # the user spoke on (or the turn ended) before it: it is moot
        self._audio = probability
        return self._decide()

    def text_verdict(self, pause: int, transcript: Transcript | None) -> list[TurnEvent]:
        """The speculative transcript of pause number `pause` is back (None: there is none to wait
        for); it may come before the turn model's verdict (it is asked for at a shorter silence)."""
        if not (self.smart and self._paused and pause == self._pauses and not self._text_back):
            return []  # spoken on since, an older pause, or decided: nothing to do
        self._text, self._text_back = transcript, True
        return self._decide()

    def _decide(self) -> list[TurnEvent]:
        if self._audio is None or not self._text_back:
            return []  # the other signal is awaited
        if ends_turn(self._audio, self._text):
            return [self._end("model")]
        if self._sure_held():  # a slow recogniser: the shorter wait is already over
            return [self._end("transcript")]
        return []  # held open: the fallback silence (or SURE_SILENCE_MS) ends it if the user says no more

    def _sure_held(self) -> bool:
        """Held open by the turn model alone, with a transcript sure of its end, for SURE_SILENCE_MS."""
        return (self._audio is not None and self._text_back and sure_of_end(self._text)
                and self._silence >= self.sure_windows)

    def _forget_pause(self) -> None:
        self._audio, self._text, self._text_back = None, None, False

    def _end(self, reason: str) -> TurnEvent:
        silence_ms = self._silence * WINDOW_MS
        audio = self._take(self._spoken_windows())
        # with a turn model, speech resuming within the fallback silence continues this turn (memory: one
        # turn's audio, below max_utterance_s)
        if self.smart and self._silence < self.end_windows and len(audio) < self.max_windows * WINDOW_SAMPLES // 2:
            self._ended, self._ended_silence = list(audio.reshape(-1, WINDOW_SAMPLES)), self._silence
        self.in_turn = False
        self._silence = 0
        self._forget_pause()
        return TurnEvent("end", audio, reason, silence_ms)

    def _spoken_windows(self) -> int:
        """The turn up to its last speech window, plus one window of the silence after it."""
        return max(1, len(self._utterance) - self._silence + 1)

    def _take(self, windows: int) -> np.ndarray:
        audio = np.concatenate(self._utterance[:windows])
        self._utterance = []
        return audio

    def _reset_candidate(self) -> None:
        self._candidate = []
        self._candidate_speech = 0
        self._candidate_gap = 0

    def reset(self) -> None:
        """Forget any turn in progress (mode switch)."""
        self._pre_roll.clear()
        self._reset_candidate()
        self._utterance = []
        self._silence = 0
        self._forget_pause()
        self._forget_ended()
        self.in_turn = False
