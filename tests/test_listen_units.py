"""Listening stages on their own: turns, the uplink buffer, the ASR worker and its backends."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiohttp import web

from listen.asrqueue import FairQueue
from listen.asr import ASRBackend, ASRBusy, ASRWorker, OpenAIASR, WhisperASR, ASRError, default_whisper_model
from listen.settings import ListenSettings
from listen.turns import TurnDetector
from listen.uplink import FrameBuffer, MonoResampler
from listen.vad import WINDOW_MS, WINDOW_SAMPLES, SileroModel, VADStream
from tests.support.speech_sender import speak, word_error_rate

WINDOW = np.zeros(WINDOW_SAMPLES, np.float32)


def feed(detector: TurnDetector, probs: list[float]) -> list[str]:
    return [event.kind for prob in probs for event in detector.push(WINDOW, prob)]


def test_a_turn_needs_the_minimum_speech_and_ends_after_the_silence():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    assert feed(detector, [0.9] * 3 + [0.1] * 20) == []  # 96 ms: a cough
    assert feed(detector, [0.9] * 5) == []  # 160 ms
    assert feed(detector, [0.9]) == ["start"]  # 192 ms: the whole number of windows nearest to 200 ms
    assert feed(detector, [0.1] * 12) == ["pause"]  # 384 ms of silence: still the user's turn
    assert feed(detector, [0.1]) == ["end"]


def test_a_piece_is_cut_at_the_limit_even_when_a_pause_falls_on_it():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=1)  # 31 windows
    assert feed(detector, [0.9] * 6) == ["start"]
    feed(detector, [0.9] * 22)  # 28 windows so far
    assert feed(detector, [0.1] * 3) == ["cut"]  # the 31st window is also a 96 ms pause: the cut comes first
    assert feed(detector, [0.1] * 10) == ["end"]


def test_a_pause_offers_the_same_audio_the_end_will_carry():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    loud = [np.full(WINDOW_SAMPLES, i, np.float32) for i in range(1, 11)]
    events = [e for i, w in enumerate(loud) for e in detector.push(w, 0.9)]
    quiet = [e for _ in range(5) for e in detector.push(WINDOW, 0.1)]
    assert [e.kind for e in events] == ["start"] and [e.kind for e in quiet] == ["pause"]
    assert [e.kind for e in detector.push(loud[0], 0.9)] == ["resume"]  # the user spoke on
    rest = [e for _ in range(13) for e in detector.push(WINDOW, 0.1)]
    assert [e.kind for e in rest] == ["pause", "end"]
    np.testing.assert_array_equal(rest[0].audio, rest[1].audio)
    assert rest[1].audio.size == (10 + 5 + 1 + 1) * WINDOW_SAMPLES  # speech, the bridged pause, one silent window


def test_a_monologue_is_cut_into_bounded_pieces():
    detector = TurnDetector(0.5, min_speech_ms=200, end_silence_ms=400, max_utterance_s=30)
    pieces = []
    for _ in range(int(75_000 / WINDOW_MS)):  # 75 s of speech without a pause
        for event in detector.push(WINDOW, 0.9):
            if event.audio is not None:
                pieces.append(event.audio.size / 16000)
        assert len(detector._utterance) <= 30_000 // WINDOW_MS
    assert len(pieces) == 2 and all(29.0 < seconds <= 30.0 for seconds in pieces)


def test_silero_finds_one_turn_in_speech_between_silences():
    audio = np.concatenate([np.zeros(16000, np.float32), speak("Good morning, how are you today?"),
                            np.zeros(16000, np.float32)])
    vad = VADStream(SileroModel())
    detector = TurnDetector(0.5, 200, 400, 30)
    events = []
    for i in range(len(audio) // WINDOW_SAMPLES):
        window = audio[i * WINDOW_SAMPLES:(i + 1) * WINDOW_SAMPLES]
        events += detector.push(window, vad(window))
    turn = [e for e in events if e.kind in ("start", "end")]
    assert [e.kind for e in turn] == ["start", "end"]
    assert 1.5 < turn[1].audio.size / 16000 < 3.5


def test_a_flood_of_frames_keeps_only_the_newest():
    buffer = FrameBuffer(maxsize=5)
    for pts in range(100):
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.pts = pts
        buffer.put(frame)
    assert len(buffer) == 5 and buffer.dropped == 95
    assert buffer.get(0.1).pts == 95


def test_the_resampler_accepts_a_format_change_mid_stream():
    resample = MonoResampler()
    for rate, layout in ((48000, "stereo"), (8000, "mono"), (48000, "stereo")):
        channels = 2 if layout == "stereo" else 1
        frame = av.AudioFrame.from_ndarray(np.zeros((1, rate // 50 * channels), np.int16), format="s16", layout=layout)
        frame.sample_rate = rate
        resample(frame)
        assert resample.source == ("s16", layout, rate)


def test_whisper_loads_a_model_folder_and_says_what_to_do_with_a_bad_one(tmp_path):
    model = WhisperASR(default_whisper_model())
    sentence = "The train leaves the station at seven o'clock."
    assert word_error_rate(sentence, model.transcribe(speak(sentence))) <= 0.25
    (tmp_path / "empty").mkdir()
    with pytest.raises(ASRError, match="--asr-model"):
        WhisperASR(str(tmp_path / "empty"))
    assert "no such folder" in ListenSettings(asr_model=str(tmp_path / "missing")).problem()


class SlowBackend(ASRBackend):
    name = "slow"

    def __init__(self, gate: threading.Event):
        self.gate = gate

    def transcribe(self, audio):
        self.gate.wait(5)
        return f"{audio.size} samples"

    def close(self):
        pass


def test_the_worker_queue_is_bounded_and_answers_in_order():
    gate = threading.Event()
    worker = ASRWorker(lambda: SlowBackend(gate), requests=FairQueue(max_waiting=2))
    texts: list[str] = []

    def heard(transcript):
        texts.append(transcript.text)
    try:
        worker.submit(np.zeros(1, np.float32), heard, texts.append)
        deadline = time.monotonic() + 5
        while worker.pending and time.monotonic() < deadline:  # the worker holds the first one
            time.sleep(0.01)
        worker.submit(np.zeros(2, np.float32), heard, texts.append)
        worker.submit(np.zeros(3, np.float32), heard, texts.append)
        with pytest.raises(ASRBusy, match="busy"):
            worker.submit(np.zeros(4, np.float32), heard, texts.append)
        gate.set()
        while len(texts) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert texts == ["1 samples", "2 samples", "3 samples"]
        assert worker.stats.refused == 1
    finally:
        gate.set()
        worker.close()


async def test_openai_backend_posts_wav_to_a_compatible_endpoint():
    received: list[dict] = []

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        received.append({"model": form["model"], "name": upload.filename, "riff": upload.file.read(4)})
        return web.json_response({"text": " hello from the fake server "})

    app = web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        import asyncio

        backend = OpenAIASR(f"http://127.0.0.1:{port}/v1", "whisper-large-v3")
        text = await asyncio.get_running_loop().run_in_executor(None, backend.transcribe, np.zeros(16000, np.float32))
        backend.close()
        assert text == "hello from the fake server"
        assert received == [{"model": "whisper-large-v3", "name": "utterance.wav", "riff": b"RIFF"}]
        down = OpenAIASR(f"http://127.0.0.1:{port}/nothing-here", "m")
        with pytest.raises(ASRError, match="404"):
            await asyncio.get_running_loop().run_in_executor(None, down.transcribe, np.zeros(1600, np.float32))
        down.close()
    finally:
        await runner.cleanup()


def test_flags_that_cannot_work_are_refused_with_the_flag_named():
    import app as server_app
    from listen.settings import ListenConfigError
    from listen.service import register

    args = server_app.build_parser().parse_args(["--asr", "openai"])
    assert "--asr-base-url" in ListenSettings.from_args(args).problem()
    assert "--vad-threshold" in ListenSettings(vad_threshold=1.5).problem()
    assert "--vad-end-silence-ms" in ListenSettings(end_silence_ms=10).problem()
    with pytest.raises(ListenConfigError, match="--asr-base-url"):
        ctx = SimpleNamespace(args=args, llm=SimpleNamespace(settings=SimpleNamespace(problem=lambda: None)),
                              session_from=lambda body: None)
        register(web.Application(), ctx)
    defaults = ListenSettings.from_args(server_app.build_parser().parse_args([]))
    assert defaults.problem() is None and defaults.end_silence_ms <= 500 and defaults.barge_in


async def test_default_mode_is_chat_only_when_an_llm_is_configured():
    from httpapi import BadRequest
    from listen.service import ListenService

    assert ListenService(ListenSettings(), lambda: "chat is not configured").default_mode == "echo"
    assert ListenService(ListenSettings(), lambda: None).default_mode == "chat"
    assert ListenService(ListenSettings(default_mode="off"), lambda: None).mode_from({}) == "off"
    with pytest.raises(BadRequest):
        ListenService(ListenSettings(), lambda: None).mode_from({"listen": ["chat"]})


def test_a_ten_minute_monologue_through_the_listener_stays_bounded():
    """The listening thread with the real resampler and Silero, fed faster than real time: the
    turn is handed out in 30 s pieces, nothing piles up, and the turn ends when the user stops."""
    from listen.listener import Listener

    sentences = [speak(s) for s in ("The first part of a very long story.", "It goes on and on without a break.")]
    speech = np.concatenate([np.concatenate([s, np.zeros(1600, np.float32)]) for s in sentences])  # 100 ms gaps
    minutes = 10
    audio = np.concatenate([np.tile(speech, int(minutes * 60 * 16000 / len(speech)) + 1)[: minutes * 60 * 16000],
                            np.zeros(16000, np.float32)])
    events = []
    buffer = FrameBuffer()
    listener = Listener(buffer, VADStream(SileroModel()), TurnDetector(0.5, 200, 400, 30), engine=None,
                        mode=lambda: "echo", on_turn=events.append, name="listen-test")
    try:
        pcm = (audio * 32767).astype(np.int16)
        step = 1600  # 100 ms frames of 16 kHz mono (fewer, larger frames than an uplink's: the same work)
        for start in range(0, len(pcm), step):
            while len(buffer) > buffer.maxsize // 2:  # as fast as the listener goes, never dropping
                time.sleep(0.02)
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + step], format="s16", layout="mono")
            frame.sample_rate = 16000
            buffer.put(frame)
        deadline = time.monotonic() + 10
        while not any(e.kind == "end" for e in events) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    pieces = [e for e in events if e.kind in ("cut", "end")]
    assert [e.kind for e in events if e.kind in ("start", "end")] == ["start", "end"], [e.kind for e in events][:50]
    assert len(pieces) == minutes * 2 + 1 and all(e.audio.size <= 30 * 16000 for e in pieces), [e.audio.size for e in pieces]
    assert buffer.dropped == 0
