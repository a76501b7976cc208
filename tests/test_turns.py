"""Taking turns (issue 18): the turn decision as a pure state machine, the Smart Turn model,
the gate of a prepared reply, and loopback sessions where a user hesitates or asks a question."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from listen.asr import COMPRESSION_RATIO_LIMIT, WhisperASR, compression_ratio
from listen.smartturn import TurnModel
from listen.transcript import Transcript
from listen.turns import SURE_SILENCE_MS, TurnDetector, ends_turn, trails_off
from listen.vad import WINDOW_SAMPLES
from sync.gate import DROPPED, HELD, RELEASED, Gate
from tests.support.hesitations import HESITATIONS, full_text, hesitant, trimmed
from tests.support.speech_sender import speak, word_error_rate

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
HEARD_FINISHED = Transcript("What time is it?", 0.9)
HEARD_GUESSED = Transcript("Please send the report to.", 0.26)


def test_complete_audio_and_a_finished_transcript_end_the_turn_at_the_pause():
    detector = smart()
    pause = paused(detector)
    assert detector.verdict(0.9) == []  # the audio says complete: the transcript's word is awaited
    assert not detector.awaiting_verdict
    assert push(detector, 0.1, 3) == []  # ...however long it takes, short of the fallback
    [end] = detector.text_verdict(pause, HEARD_FINISHED)
    assert (end.kind, end.reason) == ("end", "model") and end.silence_ms == 8 * 32
    assert not detector.in_turn


def test_the_transcript_is_asked_for_before_the_turn_model_and_may_come_first():
    detector = smart()
    assert [e.kind for e in push(detector, 0.9, 10)] == ["start"]
    [pause] = push(detector, 0.1, 3)  # 96 ms: transcribe now; the turn model waits for more silence
    assert pause.kind == "pause" and not detector.awaiting_verdict
    assert detector.text_verdict(pause.pause, HEARD_FINISHED) == []
    assert push(detector, 0.1, 1) == [] and not detector.awaiting_verdict
    assert push(detector, 0.1, 1) == [] and detector.awaiting_verdict  # 160 ms
    [end] = detector.verdict(0.9)
    assert (end.kind, end.reason) == ("end", "model")
    detector = smart()
    pause = paused(detector)
    detector.text_verdict(pause, HEARD_FINISHED)
    assert detector.verdict(0.3) == [] and not detector.awaiting_verdict  # the audio says wait: held open
    assert detector.text_verdict(pause, HEARD_FINISHED) == [] and detector.in_turn


def test_incomplete_audio_and_transcript_wait_for_the_fallback_silence():
    detector = smart()
    pause = paused(detector)
    detector.verdict(0.1)
    assert detector.text_verdict(pause, Transcript("I would like to order.", 0.44)) == []
    assert not detector.awaiting_verdict  # judged: the model is not asked again during this pause
    windows = -(-FALLBACK_MS // 32) - 5  # the silence so far is the 5 windows of the pause
    assert push(detector, 0.1, windows - 1) == []
    [end] = push(detector, 0.1, 1)
    assert (end.kind, end.reason) == ("end", "fallback")


def test_a_transcript_sure_of_its_end_shortens_the_wait_the_turn_model_alone_asks_for():
    sure = Transcript("Is it possible to change my appointment to Thursday?", 0.92)  # Smart Turn: 0.24
    windows = -(-SURE_SILENCE_MS // 32) - 5  # the silence so far is the 5 windows of the pause
    detector = smart()
    pause = paused(detector)
    assert detector.text_verdict(pause, sure) == [] and detector.verdict(0.24) == []  # not at the pause
    assert push(detector, 0.1, windows - 1) == []
    [end] = push(detector, 0.1, 1)
    assert (end.kind, end.reason, end.silence_ms) == ("end", "transcript", SURE_SILENCE_MS)
    # the user goes on before it: the pause was a hesitation after all
    detector = smart()
    pause = paused(detector)
    detector.text_verdict(pause, sure)
    detector.verdict(0.24)
    assert [e.kind for e in push(detector, 0.9, 1)] == ["resume"] and detector.in_turn
    # merely above the guess line (Whisper's 0.79 for the half "Can you tell me where?"): the fallback
    detector = smart()
    pause = paused(detector)
    detector.text_verdict(pause, Transcript("Can you tell me where?", 0.79))
    detector.verdict(0.2)
    assert push(detector, 0.1, -(-FALLBACK_MS // 32) - 6) == []
    # a recogniser slower than SURE_SILENCE_MS: the verdict ends the turn when it comes
    detector = smart()
    pause = paused(detector)
    detector.verdict(0.24)
    push(detector, 0.1, windows)
    [end] = detector.text_verdict(pause, sure)
    assert (end.kind, end.reason) == ("end", "transcript")


def test_a_transcript_that_trails_off_keeps_the_turn_open_however_sure_the_audio():
    for heard in (Transcript("Is it possible to", 0.0), Transcript("My favourite colour is...", 0.0), HEARD_GUESSED):
        detector = smart()
        pause = paused(detector)
        detector.verdict(0.99)
        assert detector.text_verdict(pause, heard) == []
        assert detector.in_turn and not detector.awaiting_verdict
        assert [e.kind for e in push(detector, 0.9, 1)] == ["resume"]  # and the user goes on


def test_both_signals_must_call_the_turn_complete():
    assert ends_turn(0.6, HEARD_FINISHED)
    assert not ends_turn(0.45, Transcript("I would like to visit the museum on Sunday.", 0.8))  # the audio unsure
    assert not ends_turn(0.99, HEARD_GUESSED)  # a guessed sentence end
    # no probability of the sentence end (--asr openai, faster-whisper's long path): the punctuation
    assert ends_turn(0.6, Transcript("What time is it?")) and not ends_turn(0.9, Transcript("Is it possible to"))
    assert ends_turn(0.6, None) and not ends_turn(0.4, None)  # no transcript at all (busy, failed): the audio


def test_verdicts_on_a_pause_the_user_spoke_on_after_are_moot():
    detector = smart()
    pause = paused(detector)
    assert [e.kind for e in push(detector, 0.9, 1)] == ["resume"]
    detector.verdict(0.9)
    assert detector.text_verdict(pause, HEARD_FINISHED) == []
    second = [e for e in push(detector, 0.1, 5) if e.kind == "pause"][0].pause
    assert second == pause + 1 and detector.awaiting_verdict
    detector.verdict(0.9)
    assert detector.text_verdict(pause, HEARD_FINISHED) == []  # the older pause's transcript
    assert [e.reason for e in detector.text_verdict(second, HEARD_FINISHED)] == ["model"]


def test_silence_mode_ignores_verdicts_and_ends_as_before():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    push(detector, 0.9, 10)
    assert [e.kind for e in push(detector, 0.1, 5)] == ["pause"]
    assert not detector.awaiting_verdict and detector.verdict(0.9) == []
    assert detector.text_verdict(1, HEARD_FINISHED) == []
    [end] = push(detector, 0.1, 8)
    assert (end.kind, end.reason) == ("end", "silence")


def numbered(detector: TurnDetector, prob: float, windows: int, first: int) -> list:
    """Push windows whose samples are their numbers (first, first + 1, ...): the audio says which came."""
    return [e for n in range(first, first + windows) for e in detector.push(np.full(WINDOW_SAMPLES, n, np.float32), prob)]


def window_numbers(audio: np.ndarray) -> list[int]:
    return [int(w[0]) for w in audio.reshape(-1, WINDOW_SAMPLES)]


def ended_at_the_pause(detector: TurnDetector) -> list:
    """Windows 0-9 speech, 10-14 silence, ended there by both verdicts: the end event."""
    assert [e.kind for e in numbered(detector, 0.9, 10, 0)] == ["start"]
    pause = [e for e in numbered(detector, 0.1, 5, 10) if e.kind == "pause"][0].pause
    detector.verdict(0.9)
    return detector.text_verdict(pause, HEARD_FINISHED)


def test_speech_resumed_within_the_fallback_silence_continues_the_turn_the_models_ended():
    windows_to_fallback = -(-FALLBACK_MS // 32)  # 32 windows: 5 heard at the end, 27 after it
    for gap in (0, 10, windows_to_fallback - 5 - 1):  # silence windows after the end, before speech resumes
        detector = smart()
        [end] = ended_at_the_pause(detector)
        assert window_numbers(end.audio) == list(range(0, 11))  # the speech and one window of its silence
        first_speech = 15 + gap
        assert numbered(detector, 0.1, gap, 15) == []
        [start] = numbered(detector, 0.9, 7, first_speech)
        assert start.kind == "start" and start.continues, gap
        numbered(detector, 0.9, 3, first_speech + 7)
        [pause] = [e for e in numbered(detector, 0.1, 5, first_speech + 10) if e.kind == "pause"]
        # the whole of it, in order: the first half, the silence between (at most the pre-roll), the rest
        between = list(range(max(15, first_speech - 8), first_speech))
        whole = [*range(0, 11), *between, *range(first_speech, first_speech + 11)]
        assert window_numbers(pause.audio) == whole, gap
        detector.verdict(0.9)
        [end] = detector.text_verdict(pause.pause, HEARD_FINISHED)
        assert window_numbers(end.audio) == whole


def test_speech_after_the_fallback_silence_or_a_cough_in_between_is_a_new_turn():
    detector = smart()
    ended_at_the_pause(detector)
    numbered(detector, 0.1, -(-FALLBACK_MS // 32) - 5, 15)  # the silence reaches the fallback: over for good
    [start] = numbered(detector, 0.9, 7, 100)
    assert start.kind == "start" and not start.continues
    numbered(detector, 0.9, 3, 107)
    [end] = [e for e in numbered(detector, 0.1, 40, 110) if e.kind == "end"]
    assert window_numbers(end.audio)[:9] == [*range(34, 42), 100]  # its own pre-roll, not the turn before
    # a turn the fallback ended is over (silence that long ends a turn whatever the models said)
    detector = smart()
    numbered(detector, 0.9, 10, 0)
    [end] = [e for e in numbered(detector, 0.1, 40, 10) if e.kind == "end"]
    assert end.reason == "fallback"
    [start] = numbered(detector, 0.9, 7, 50)
    assert not start.continues
    # a cough right after the end does not start a turn, and the silence goes on counting from the end
    detector = smart()
    ended_at_the_pause(detector)
    numbered(detector, 0.9, 3, 15)  # 96 ms of cough: shorter than a turn's onset
    numbered(detector, 0.1, -(-FALLBACK_MS // 32) - 5, 18)
    [start] = numbered(detector, 0.9, 7, 100)
    assert not start.continues


def test_silence_mode_never_continues_a_turn():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    numbered(detector, 0.9, 10, 0)
    [end] = [e for e in numbered(detector, 0.1, 13, 10) if e.kind == "end"]
    [start] = numbered(detector, 0.9, 7, 23)
    assert not start.continues


def test_trailing_marks_are_the_recognisers_own():
    assert trails_off("My favorite color is...") and trails_off("We went to the market and,")
    assert trails_off("Is it possible to") and trails_off("")
    assert not trails_off("What time is it?") and not trails_off("I would like to order.")


def test_a_sentence_end_the_recogniser_only_guessed_keeps_the_turn_open():
    assert trails_off("Please send the report to.", sentence_end=0.26)
    assert not trails_off("What time is it?", sentence_end=0.96)
    assert trails_off("Is it possible to", sentence_end=0.99)  # no sentence end at all: the text decides
    assert not trails_off("What time is it?", sentence_end=None)  # a backend that cannot tell


def test_a_runaway_greedy_pass_is_transcribed_again_by_faster_whispers_own_path(whisper, monkeypatch):
    import listen.asr

    repeated = "Something like the brand palace... " * 12
    assert compression_ratio(repeated) > COMPRESSION_RATIO_LIMIT > compression_ratio(
        "Please tell me the weather for tomorrow morning.")
    sentence = "Please tell me the weather for tomorrow morning."
    monkeypatch.setattr(listen.asr, "TOKENS_BASE", 0)  # any text now counts as too long for its audio
    monkeypatch.setattr(listen.asr, "TOKENS_PER_SECOND", 0)
    again = whisper.transcribe_turn(as_heard(speak(sentence)))
    assert word_error_rate(sentence, again.text) <= 0.25 and again.sentence_end is None


# Words cut short that Whisper (tiny.en) often still ends with a sentence mark, at a low probability
# (0.22-0.36 here). espeak's audio differs a little from call to call and the int8 kernels from CPU to
# CPU (a CI machine heard "My flight leave that." at 0.41), so the rule must hold for most of them and
# the ordering for all; the finished sentences sit at 0.67-0.96.
CUT_SHORT = ("Please send the report to", "Could you remind me to", "My flight leaves at")
FINISHED = ("Is it possible to change my appointment to Thursday?", "Please tell me the weather for tomorrow morning.",
            "What time does the museum open?")


def test_whisper_is_surer_of_a_finished_sentence_end_than_of_one_cut_short(whisper):
    finished = [whisper.transcribe_turn(as_heard(speak(text))) for text in FINISHED]
    cut_short = [whisper.transcribe_turn(as_heard(speak(text))) for text in CUT_SHORT]
    assert not any(trails_off(heard.text, heard.sentence_end) for heard in finished), finished
    assert max(heard.sentence_end for heard in cut_short) < min(heard.sentence_end for heard in finished), cut_short
    assert sum(trails_off(heard.text, heard.sentence_end) for heard in cut_short) >= 2, cut_short


def test_a_fallback_shorter_than_the_silence_end_is_refused_with_the_flag_named():
    from listen.settings import ListenSettings

    assert "--turn-fallback-silence-ms" in ListenSettings(turn_fallback_silence_ms=300).problem()
    assert ListenSettings(turn="silence", turn_fallback_silence_ms=300).problem() is None  # not used then
    assert ListenSettings().problem() is None


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


@pytest.fixture(scope="module")
def whisper():
    return WhisperASR()


def as_heard(audio: np.ndarray) -> np.ndarray:
    """What the listener hands the model at a pause: pre-roll, the speech, 160 ms and a window of silence."""
    return np.concatenate([np.zeros(4096, np.float32), trimmed(audio), np.zeros(3072, np.float32)])


def test_smart_turn_tells_a_finished_question_from_words_that_stop_short(turn_model):
    assert turn_model.complete(as_heard(speak("Please tell me the weather for tomorrow morning.")))
    assert not turn_model.complete(as_heard(speak("What I really want is")))
    assert not turn_model.complete(as_heard(speak("I would like to order")))


# ---- loopback sessions: real aiortc peer, Silero, whisper tiny.en, Smart Turn --------------------
from listen.service import LISTEN_KEY  # noqa: E402
from tests.conftest import server_args, start_server  # noqa: E402
from tests.support.speech_helpers import channel_events, is_voiced  # noqa: E402
from tests.support.speech_sender import SpeechTrack  # noqa: E402
from tests.test_listen import talking_client, wait_events  # noqa: E402


def of_type(client, *types: str) -> list[dict]:
    return [e for e in channel_events(client) if e["type"] in types]


def finals(client) -> list[dict]:
    return [e for e in of_type(client, "transcript") if e["final"]]


def spoke_over(client, track: SpeechTrack) -> list[float]:
    """Arrival times of voiced reply frames while the user's clip was still going out."""
    start, end = track.speech_started[-1], track.speech_ended[-1]
    return [f.arrival for f in client.audio if is_voiced(f) and start <= f.arrival <= end]


@pytest.fixture
async def turn_server(data_dir):
    running = await start_server(server_args(data_dir, "--listen", "echo"))
    yield running
    await running.runner.cleanup()


# A half only the turn model holds open is not a loopback test: through Opus its probability moves a lot
# ("Can you tell me where" 0.19 offline split one run in three; "I would like to order", 0.07 offline, had
# 0.51 live), so the audio's verdict is the unit tests'. Here: both signals wait ("What I really want is...":
# Smart Turn ~0.04 and Whisper's ellipsis), and the transcript alone ("We went to the market and...", 0.90).
@pytest.mark.parametrize("pair", [HESITATIONS[7], HESITATIONS[11]], ids=["both-say-wait", "transcript-trails-off"])
async def test_a_hesitation_is_one_turn_and_the_avatar_waits_for_its_end(turn_server, http, pair):
    track = SpeechTrack()
    client = await talking_client(turn_server.url, http, track)
    try:
        track.play(hesitant(*pair))
        await wait_events(client, lambda e: e["type"] == "start", timeout=30)
        await wait_events(client, lambda e: e["type"] == "turn", timeout=10)
        assert [e["type"] for e in of_type(client, "user_start", "user_end")] == ["user_start", "user_end"]
        [final] = finals(client)
        assert word_error_rate(full_text(pair), final["text"]) <= 0.25, final  # both halves, one turn
        assert not spoke_over(client, track)
        order = [e["type"] for e in of_type(client, "user_end", "start")]
        assert order[0] == "user_end", order
    finally:
        await client.close()


async def test_a_complete_question_is_answered_at_the_model_s_word(data_dir, http):
    """The model's "complete" (and a transcript that does not trail off) ends the turn, never the
    fallback silence: set long here, so a slow shared machine's recogniser cannot outrun it."""
    running = await start_server(server_args(data_dir, "--listen", "echo", "--turn-fallback-silence-ms", "5000"))
    sentence = "Please tell me the weather for tomorrow morning."
    track = SpeechTrack()
    client = await talking_client(running.url, http, track)
    try:
        track.play(speak(sentence))
        [timing] = await wait_events(client, lambda e: e["type"] == "turn", timeout=30)
        [end] = of_type(client, "user_end")
        assert end["reason"] == "model"  # not the fallback silence
        [final] = finals(client)
        assert word_error_rate(sentence, final["text"]) <= 0.25
        assert [e["text"] for e in of_type(client, "start")][:1] == [final["text"]]
        stages = timing["ms"]
        assert set(stages) == {"decision", "transcript", "tts_first_audio", "first_voiced_frame"}, stages
        assert max(stages.values()) == stages["first_voiced_frame"] and stages["decision"] <= stages["transcript"]
        metrics = await (await http.get(f"{running.url}/metrics")).text()
        assert 'avatar_turn_stage_seconds_count{mode="echo",stage="first_voiced_frame"} 1.0' in metrics
        assert 'avatar_turns_ended_total{reason="model"} 1.0' in metrics
        assert 'avatar_turn_preparations_total{outcome="used"} 1.0' in metrics  # prepared at the pause, released
    finally:
        await client.close()
        await running.runner.cleanup()


async def test_turn_silence_ends_turns_by_silence_as_before(data_dir, http):
    running = await start_server(server_args(data_dir, "--listen", "echo", "--turn", "silence"))
    track = SpeechTrack()
    client = await talking_client(running.url, http, track)
    try:
        track.play(speak("Please tell me the weather for tomorrow morning."))
        await wait_events(client, lambda e: e["type"] == "start", timeout=30)
        assert [e["reason"] for e in of_type(client, "user_end")] == ["silence"]
        assert running.app[LISTEN_KEY].turn == "silence"
    finally:
        await client.close()
        await running.runner.cleanup()


async def test_a_reply_prepared_during_a_hesitation_leaves_no_trace(data_dir, llm_server, http):
    """A long hesitation: the first half's transcript is back while the user is silent, so its
    reply is prepared (the LLM asked, its first sentence synthesised); the user goes on, and the
    prepared reply must vanish: not heard, not in the events, not in the chat history."""
    from tests.support.llm_server import Script

    # every answer is the same: a pause inside a word or two of the second half may prepare (and drop)
    # another reply, so which exchange becomes the answer is not fixed; how many there were is checked
    llm_server.default = Script(deltas=["The station is north of here."])
    running = await start_server(server_args(
        data_dir, "--llm-base-url", llm_server.base_url, "--llm-model", "test-model", "--listen", "chat",
        "--turn-fallback-silence-ms", "4000"))
    pair = HESITATIONS[5]  # both signals say "not finished" (Smart Turn ~0.03, no sentence end): the turn stays open
    track = SpeechTrack()
    client = await talking_client(running.url, http, track)
    try:
        track.play(hesitant(*pair, pause_s=2.5))
        await wait_events(client, lambda e: e["type"] == "end" and e["text"].startswith("The station"), timeout=40)
        listening = running.app[LISTEN_KEY].sessions[client.sessionid]
        dropped = listening.preparations_dropped
        assert dropped >= 1 and len(llm_server.exchanges) == dropped + 1  # each asked the LLM once, one answered
        assert llm_server.exchanges[0].body["messages"][-1]["content"].lower().startswith("the name of the hotel")
        assert not spoke_over(client, track)
        assert len(of_type(client, "start")) == 1  # the dropped replies were never spoken
        [final] = finals(client)
        history = running.context.sessions.get(client.sessionid).conversation.history.turns
        assert [turn.user for turn in history] == [final["text"]]
        assert word_error_rate(full_text(pair), final["text"]) <= 0.25
        assert llm_server.exchanges[1].body["messages"][-1]["content"] == final["text"]
        await asyncio.sleep(0.5)
        assert len(of_type(client, "turn")) == 1  # the dropped reply reported nothing
        metrics = await (await http.get(f"{running.url}/metrics")).text()
        assert f'avatar_turn_preparations_total{{outcome="dropped"}} {dropped}.0' in metrics  # counted, though
    finally:
        await client.close()
        await running.runner.cleanup()


async def test_speech_resumed_after_a_turn_the_models_ended_continues_it_and_one_answer_covers_both(
        data_dir, llm_server, http):
    """A finished sentence, a pause, then more of it: the turn ends at the pause (Smart Turn ~0.75;
    if it says unfinished, Whisper's full stop, ~0.96 sure, ends it after 480 ms), the user goes on
    within the fallback silence, and the turn continues: one transcript and one answer for the
    whole of it, and the first half's reply (if it began) silenced and gone from the chat history."""
    from tests.support.llm_server import Script

    llm_server.default = Script(deltas=["Your table is booked."])
    # a long fallback and a long pause: the first half can only end at the pause by the models' word
    running = await start_server(server_args(
        data_dir, "--llm-base-url", llm_server.base_url, "--llm-model", "test-model", "--listen", "chat",
        "--turn-fallback-silence-ms", "3000"))
    pair = ("What time is it?", "And when does the museum open?")
    track = SpeechTrack()
    client = await talking_client(running.url, http, track)
    try:
        track.play(hesitant(*pair, pause_s=1.2))
        await wait_events(client, lambda e: e["type"] == "transcript" and "museum" in e["text"], timeout=40)
        await wait_events(client, lambda e: e["type"] == "end" and not e.get("interrupted"), timeout=20)
        starts = of_type(client, "user_start")
        assert [s.get("continues", False) for s in starts] == [False, True], channel_events(client)
        assert [e["reason"] for e in of_type(client, "user_end")][0] in ("model", "transcript")
        final = finals(client)[-1]
        assert word_error_rate(full_text(pair), final["text"]) <= 0.25, final  # both halves
        history = running.context.sessions.get(client.sessionid).conversation.history.turns
        assert [turn.user for turn in history] == [final["text"]]  # the first half's exchange is gone
        assert llm_server.exchanges[-1].body["messages"][1:] == [{"role": "user", "content": final["text"]}]
        assert len(llm_server.exchanges) == 2  # the first half was answered (at its end), then the whole
        metrics = await (await http.get(f"{running.url}/metrics")).text()
        assert "avatar_turns_continued_total 1.0" in metrics
    finally:
        await client.close()
        await running.runner.cleanup()


def test_the_tts_holds_a_prepared_utterance_at_its_gate_and_drops_it_without_an_event():
    import time

    from tests.test_visemes import RecordingEngine, wait_for_end
    from ttsreal import TTSWorker
    from tts.espeak import EspeakLibrary, EspeakTTS

    engine = RecordingEngine()
    firsts: list[float] = []
    worker = TTSWorker(engine, on_error=lambda message: None, name="tts-gate",
                       on_first_audio=lambda backend, seconds: firsts.append(seconds))
    voice = EspeakTTS(EspeakLibrary.shared())
    try:
        dropped, released = Gate(), Gate()
        worker.say("Never heard. Not at all.", voice, dropped)
        deadline = time.monotonic() + 10
        while "tts_first_audio" not in dropped.marks:  # synthesised while held...
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        assert engine.chunks == [] and firsts == []  # ...but nothing reached the engine or the metrics
        dropped.drop()
        worker.say("Heard.", voice, released)
        time.sleep(0.3)
        assert engine.chunks == []
        released.release()
        wait_for_end(engine)
    finally:
        worker.stop()
    utterances = {e.text for c in engine.chunks for e in c.events}
    assert utterances == {"Heard."} and len(firsts) == 1
