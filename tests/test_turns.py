"""Taking turns (issue 18): the turn decision as a pure state machine, the Smart Turn model,
the gate of a prepared reply, and loopback sessions where a user hesitates or asks a question."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from listen.smartturn import TurnModel
from listen.turns import TurnDetector, trails_off
from listen.vad import WINDOW_SAMPLES
from sync.gate import DROPPED, HELD, RELEASED, Gate
from tests.support.hesitations import HESITATIONS, full_text, hesitant, trimmed
from tests.support.speech_sender import speak

WINDOW = np.zeros(WINDOW_SAMPLES, np.float32)
FALLBACK_MS = 1000


def smart() -> TurnDetector:
    return TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30, fallback_silence_ms=FALLBACK_MS)


def push(detector: TurnDetector, prob: float, windows: int) -> list:
    return [event for _ in range(windows) for event in detector.push(WINDOW, prob)]


def paused(detector: TurnDetector) -> int:
    """Speech, then silence up to the first pause; returns the pause's number."""
    assert [e.kind for e in push(detector, 0.9, 10)] == ["start"]
    events = push(detector, 0.1, 5)
    assert [e.kind for e in events] == ["pause"] and detector.awaiting_verdict
    return events[0].pause


# ---- the state machine -----------------------------------------------------------------------
def test_complete_audio_and_a_finished_transcript_end_the_turn_at_the_pause():
    detector = smart()
    pause = paused(detector)
    assert detector.verdict(True) == []  # the audio says complete: the transcript's word is awaited
    assert push(detector, 0.1, 3) == []  # ...however long it takes, short of the fallback
    [end] = detector.text_verdict(pause, trailing=False)
    assert (end.kind, end.reason) == ("end", "model") and end.silence_ms == 8 * 32
    assert not detector.in_turn


def test_incomplete_audio_waits_for_the_fallback_silence():
    detector = smart()
    pause = paused(detector)
    assert detector.verdict(False) == [] and not detector.awaiting_verdict
    assert detector.text_verdict(pause, trailing=False) == []  # the transcript alone never ends a turn
    windows = -(-FALLBACK_MS // 32) - 5  # the silence so far is the 5 windows of the pause
    assert push(detector, 0.1, windows - 1) == []
    [end] = push(detector, 0.1, 1)
    assert (end.kind, end.reason) == ("end", "fallback")


def test_a_transcript_that_trails_off_keeps_the_turn_open():
    detector = smart()
    pause = paused(detector)
    detector.verdict(True)
    assert detector.text_verdict(pause, trailing=True) == []
    assert detector.in_turn and not detector.awaiting_verdict
    assert [e.kind for e in push(detector, 0.9, 1)] == ["resume"]  # and the user goes on


def test_verdicts_on_a_pause_the_user_spoke_on_after_are_moot():
    detector = smart()
    pause = paused(detector)
    assert [e.kind for e in push(detector, 0.9, 1)] == ["resume"]
    assert detector.verdict(True) == [] and detector.text_verdict(pause, trailing=False) == []
    second = [e for e in push(detector, 0.1, 5) if e.kind == "pause"][0].pause
    assert second == pause + 1
    assert detector.verdict(True) == []
    assert detector.text_verdict(pause, trailing=False) == []  # the older pause's transcript
    assert [e.reason for e in detector.text_verdict(second, trailing=False)] == ["model"]


def test_silence_mode_ignores_verdicts_and_ends_as_before():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    push(detector, 0.9, 10)
    assert [e.kind for e in push(detector, 0.1, 5)] == ["pause"]
    assert not detector.awaiting_verdict and detector.verdict(True) == []
    assert detector.text_verdict(1, trailing=False) == []
    [end] = push(detector, 0.1, 8)
    assert (end.kind, end.reason) == ("end", "silence")


def test_trailing_marks_are_the_recognisers_own():
    assert trails_off("My favorite color is...") and trails_off("We went to the market and,")
    assert not trails_off("What time is it?") and not trails_off("I would like to order")


def test_the_gate_decides_once():
    gate = Gate()
    assert gate.wait(0.01) == HELD
    assert gate.drop() and not gate.release()
    assert gate.wait(0.01) == DROPPED and not gate.open
    other = Gate()
    other.mark("x")
    first = other.marks["x"]
    other.mark("x")
    assert other.release() and other.state == RELEASED and other.marks["x"] == first


# ---- the model, on real speech -----------------------------------------------------------------
@pytest.fixture(scope="module")
def turn_model():
    return TurnModel()


def as_heard(audio: np.ndarray) -> np.ndarray:
    """What the listener hands the model at a pause: pre-roll, the speech, 160 ms and a window of silence."""
    return np.concatenate([np.zeros(4096, np.float32), trimmed(audio), np.zeros(3072, np.float32)])


def test_smart_turn_tells_a_finished_question_from_words_that_stop_short(turn_model):
    assert turn_model.complete(as_heard(speak("Please tell me the weather for tomorrow morning.")))
    assert not turn_model.complete(as_heard(speak("What I really want is")))
    assert not turn_model.complete(as_heard(speak("I would like to order")))
