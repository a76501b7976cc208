"""Listening end to end: an aiortc client speaks espeak-ng sentences into its microphone track."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from listen.service import LISTEN_KEY
from tests.conftest import server_args, start_server
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import channel_events, post, wait_voiced
from tests.support.speech_sender import SpeechTrack, speak, word_error_rate

SENTENCES = [
    "Please tell me the weather for tomorrow morning.",
    "I would like to visit the museum on Sunday.",
    "The train leaves the station at seven o'clock.",
]


@pytest.fixture
async def listen_server(data_dir):
    running = await start_server(server_args(data_dir, "--max_session", "3"))
    yield running
    await running.runner.cleanup()


async def talking_client(url: str, http, track: SpeechTrack, listen: str | None = None, avatar: str | None = None,
                         **options) -> ReceiverClient:
    receiver = ReceiverClient(url, avatar=avatar, keep_video=avatar is not None)
    await receiver.connect(http, data_channel=True, uplink=track, listen=listen, **options)
    await receiver.wait_for(video_frames=5, audio_frames=10)
    return receiver


async def wait_events(client: ReceiverClient, predicate, count: int = 1, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in channel_events(client) if predicate(e)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{count} such events not seen in {channel_events(client)}")


def is_final(event: dict) -> bool:
    return event["type"] == "transcript" and event["final"]


def kinds(client: ReceiverClient, finals_only: bool = False) -> list[str]:
    """Event types in order; with `finals_only`, partial transcripts (a pause inside a turn) left out."""
    return [e["type"] for e in channel_events(client)
            if not (finals_only and e["type"] == "transcript" and not e["final"])]


async def test_echo_transcribes_speech_and_speaks_it_back(listen_server, http):
    track = SpeechTrack()
    client = await talking_client(listen_server.url, http, track, listen="echo")
    try:
        transcripts = []
        for index, sentence in enumerate(SENTENCES):
            track.play(speak(sentence))
            found = await wait_events(client, is_final, count=index + 1, timeout=20)
            transcripts.append(found[-1]["text"])
            await wait_events(client, lambda e: e["type"] == "end", count=index + 1, timeout=20)
        wer = word_error_rate(" ".join(SENTENCES), " ".join(transcripts))
        assert wer <= 0.25, (wer, transcripts)
        sequence = [k for k in kinds(client, finals_only=True)
                    if k in ("user_start", "user_end", "transcript", "start", "end")]
        assert sequence == ["user_start", "user_end", "transcript", "start", "end"] * len(SENTENCES), sequence
        spoken = [e["text"] for e in channel_events(client) if e["type"] == "start"]
        assert spoken == transcripts
        listening = listen_server.app[LISTEN_KEY].sessions[client.sessionid]
        assert listening.speculations_used == len(SENTENCES)  # each transcript was started at the pause
    finally:
        await client.close()


@pytest.fixture
async def chat_listen_server(data_dir, llm_server):
    running = await start_server(server_args(
        data_dir, "--llm-base-url", llm_server.base_url, "--llm-model", "test-model"))
    yield running
    await running.runner.cleanup()


async def test_chat_sends_the_transcript_to_the_llm_with_history(chat_listen_server, llm_server, http):
    from tests.support.llm_server import Script

    llm_server.queue(Script(deltas=["It will be sunny. ", "Take a hat."]), Script(deltas=["On Sunday it opens at ten."]))
    track = SpeechTrack()
    client = await talking_client(chat_listen_server.url, http, track)  # chat is the default with an LLM
    try:
        track.play(speak(SENTENCES[0]))
        await wait_events(client, lambda e: e["type"] == "end" and e["text"] == "Take a hat.", timeout=25)
        first = llm_server.exchanges[0].body["messages"]
        transcript = next(e["text"] for e in channel_events(client) if is_final(e))
        assert first[-1] == {"role": "user", "content": transcript}
        assert word_error_rate(SENTENCES[0], transcript) <= 0.25, transcript

        track.play(speak(SENTENCES[1]))
        await wait_events(client, lambda e: e["type"] == "end" and e["text"].startswith("On Sunday"), timeout=25)
        second = llm_server.exchanges[1].body["messages"]
        assert {"role": "assistant", "content": "It will be sunny. Take a hat."} in second
        assert second[-1]["role"] == "user" and "museum" in second[-1]["content"].lower()
    finally:
        await client.close()


def voiced_burst(ms: int) -> np.ndarray:
    """The first `ms` of a spoken word: speech to the VAD, but shorter than a turn."""
    audio = speak("Hey there")
    onset = int(np.argmax(np.abs(audio) > 0.05))
    return audio[onset:onset + 16 * ms]


async def test_barge_in_interrupts_the_avatar_but_a_cough_does_not(listen_server, http):
    track = SpeechTrack()
    client = await talking_client(listen_server.url, http, track, listen="echo")
    try:
        long_text = "This is a long story about a lighthouse keeper and his cat. " * 6
        since = len(client.audio)
        await post(http, f"{listen_server.url}/human", {"sessionid": client.sessionid, "text": long_text})
        await wait_voiced(client, since)
        track.play(voiced_burst(100))
        await asyncio.sleep(1.5)
        assert "user_start" not in kinds(client), "a 100 ms burst started a turn"
        assert not [e for e in channel_events(client) if e["type"] == "end"], "a cough cut the avatar off"

        track.play(speak("Wait, stop please."))
        ended = await wait_events(client, lambda e: e["type"] == "end", timeout=10)
        assert ended[0]["interrupted"] is True
        order = kinds(client)
        assert order.index("user_start") < order.index("end")
    finally:
        await client.close()


async def test_off_ignores_the_uplink_and_listen_switches_modes(listen_server, http):
    track = SpeechTrack()
    client = await talking_client(listen_server.url, http, track, listen="off")
    try:
        track.play(speak(SENTENCES[2]))
        while track.busy:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert not [k for k in kinds(client) if k in ("user_start", "transcript", "start")]

        url = f"{listen_server.url}/listen"
        assert (await post(http, url, {"sessionid": client.sessionid, "listen": "shout"}))[0] == 400
        assert (await post(http, url, {"sessionid": "nope", "listen": "echo"}))[0] == 404
        status, body = await post(http, url, {"sessionid": client.sessionid, "listen": "echo"})
        assert status == 200 and body["data"] == {"listen": "echo"}
        track.play(speak(SENTENCES[2]))
        found = await wait_events(client, is_final, timeout=20)
        assert word_error_rate(SENTENCES[2], found[0]["text"]) <= 0.25, found
    finally:
        await client.close()


async def test_offer_rejects_an_unknown_listen_mode(listen_server, http):
    status, body = await post(http, f"{listen_server.url}/offer", {"sdp": "v=0", "type": "offer", "listen": "loud"})
    assert status == 400 and "listen" in body["msg"]


@pytest.mark.parametrize("case", ["silence", "white-noise", "pcmu-8khz", "stereo-16khz", "never-sends-rtp"])
async def test_bad_uplinks_leave_the_session_speaking(listen_server, http, case):

    track = SpeechTrack(rate=16000 if case == "stereo-16khz" else 48000, channels=2 if case == "stereo-16khz" else 1,
                        stalled=case == "never-sends-rtp")
    codec = "PCMU" if case == "pcmu-8khz" else None
    client = await talking_client(listen_server.url, http, track, listen="echo", audio_codec=codec)
    try:
        if case == "white-noise":
            track.play(np.random.default_rng(0).normal(0, 0.3, 16000 * 3).astype(np.float32))
        elif case in ("pcmu-8khz", "stereo-16khz"):
            track.play(speak(SENTENCES[0]))
            found = await wait_events(client, is_final, timeout=20)
            limit = 0.5 if codec else 0.25  # 8 kHz mu-law is telephone band: tiny.en on robotic speech loses words
            assert word_error_rate(SENTENCES[0], found[0]["text"]) <= limit, found
            listener = listen_server.app[LISTEN_KEY].sessions[client.sessionid].listener
            assert listener.resample.source[2] == (8000 if codec else 48000), listener.resample.source
        await asyncio.sleep(2.0 if case != "white-noise" else 3.5)
        if case in ("silence", "never-sends-rtp"):
            assert "user_start" not in kinds(client)
        listening = listen_server.app[LISTEN_KEY].sessions[client.sessionid]
        if case == "never-sends-rtp":
            assert listening.listener is None, "a listener thread was started for a peer that sends nothing"
        if listening.reader is not None:
            assert len(listening.reader.sink) <= listening.reader.sink.maxsize
        since = len(client.audio)
        status, _ = await post(http, f"{listen_server.url}/human", {"sessionid": client.sessionid, "text": "Still here."})
        assert status == 200
        await wait_voiced(client, since)
    finally:
        await client.close()


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    step = rate // 50
    usable = samples[: len(samples) // step * step].astype(np.float32)
    return np.sqrt((usable.reshape(-1, step) ** 2).mean(axis=1))


VOICED_RMS = 0.02


def voiced_frames(env: np.ndarray) -> int:
    return int((env > VOICED_RMS).sum())


async def test_lips_plays_the_users_audio_back_and_moves_the_mouth(listen_server, http):
    import cv2

    from tests.conftest import PHOTO_AVATAR_ID

    track = SpeechTrack()
    client = await talking_client(listen_server.url, http, track, listen="lips", avatar=PHOTO_AVATAR_ID)
    try:
        listening = listen_server.app[LISTEN_KEY].sessions[client.sessionid]
        deadline = time.monotonic() + 10
        while (listening.listener is None or len(listening.reader.sink) > 2) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the listener has started and caught up with the uplink
        await asyncio.sleep(0.5)
        clip = speak("One two three four five six seven eight nine ten.")
        track.play(clip)
        first = await wait_voiced(client, len(client.audio), timeout=10)
        assert not track.speech_ended or first.arrival < track.speech_ended[0], "lips waited for the whole clip"
        while track.busy:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        await client.close()
    assert not [k for k in kinds(client) if k in ("user_start", "transcript")], "lips mode ran turn detection"

    received = np.concatenate([f.data for f in client.audio]).astype(np.float32) / 32768.0
    sent, got = envelope(clip, 16000), envelope(received, 48000)
    # The avatar's audio track carries the user's audio: nearly all of its voiced time comes back,
    # and no more than was sent (pauses may be shortened: lips drains a backlog in the user's silences).
    assert voiced_frames(got) <= 1.3 * voiced_frames(sent), (voiced_frames(got), voiced_frames(sent))
    assert voiced_frames(got) >= 0.8 * voiced_frames(sent), (voiced_frames(got), voiced_frames(sent))

    frames = [cv2.cvtColor(f.data, cv2.COLOR_BGR2GRAY).astype(np.float32) for f in client.video[5:]]
    changes = [float(np.abs(a - b).mean()) for a, b in zip(frames, frames[1:])]
    assert max(changes) > 2 * np.median(changes), "the avatar did not move with the user's speech"


class ColourCamera(MediaStreamTrack):
    """A camera that films a plain red card at 10 fps (640x480)."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self._pts = 0

    async def recv(self):
        import fractions

        import av

        await asyncio.sleep(0.1)
        image = np.zeros((480, 640, 3), np.uint8)
        image[:, :, 2] = 220
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = self._pts, fractions.Fraction(1, 90000)
        self._pts += 9000
        return frame


@pytest.mark.parametrize("vision", [True, False])
async def test_camera_frame_goes_with_the_chat_turn_only_with_llm_vision(data_dir, llm_server, http, vision):
    import base64

    import cv2

    from tests.support.llm_server import Script

    flags = ["--llm-base-url", llm_server.base_url, "--llm-model", "test-model"] + (["--llm-vision"] if vision else [])
    running = await start_server(server_args(data_dir, *flags))
    llm_server.queue(Script(deltas=["I see red."]))
    track = SpeechTrack()
    client = await talking_client(running.url, http, track, camera=ColourCamera())
    try:
        await asyncio.sleep(0.5)
        track.play(speak(SENTENCES[0]))
        await wait_events(client, lambda e: e["type"] == "end", timeout=25)
        reader = running.app[LISTEN_KEY].sessions[client.sessionid].camera_reader
        if vision:
            assert reader is not None and reader.frames > 3
        else:  # never used, so never received: the answer says sendonly and nothing is decoded
            assert reader is None and "a=sendonly" in client.pc.remoteDescription.sdp.split("m=audio")[0]
        if vision:  # the reply was prepared at the pause, the camera frame taken then, and released at the end
            metrics = await (await http.get(f"{running.url}/metrics")).text()
            assert 'avatar_turn_preparations_total{outcome="used"} 1.0' in metrics, [l for l in metrics.splitlines() if "prepar" in l or "turns_ended" in l]
        content = llm_server.exchanges[-1].body["messages"][-1]["content"]  # a pause inside may have asked first
        if not vision:
            assert isinstance(content, str)
            return
        text, image = content
        assert text["type"] == "text" and "weather" in text["text"].lower()
        url = image["image_url"]["url"]
        assert image["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
        jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert max(jpeg.shape[:2]) == 512
        blue, green, red = jpeg.reshape(-1, 3).mean(axis=0)
        assert red > 180 and blue < 40 and green < 40
    finally:
        await client.close()
        await running.runner.cleanup()


async def test_talking_clients_that_come_and_go_leave_no_threads_or_sessions(listen_server, http):
    import gc
    import threading
    import warnings

    from listen.router import SessionListening
    from session import Session

    def live() -> int:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(1 for obj in gc.get_objects() if isinstance(obj, (Session, SessionListening)))

    clip = speak("Hello there.")
    for cycle in range(3):
        track = SpeechTrack()
        client = await talking_client(listen_server.url, http, track, listen="echo")
        if cycle % 2:
            track.play(clip)  # leave while a turn is being detected or transcribed
            await asyncio.sleep(0.6)
        await client.close()
        deadline = time.monotonic() + 3.0
        while len(listen_server.context.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(listen_server.context.sessions) == 0
    assert not listen_server.app[LISTEN_KEY].sessions
    await asyncio.sleep(0.3)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("listen-")]
    deadline = time.monotonic() + 3.0
    while live() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert live() == 0, "closed sessions or their listening are still referenced"


async def test_a_pause_inside_a_turn_gives_a_partial_transcript_before_the_final_one(data_dir, http):

    def trimmed(audio):
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        return audio[loud[0]:loud[-1] + 1]

    gap = np.zeros(int(16000 * 0.28), np.float32)  # longer than the 96 ms pause, shorter than the turn's end
    # --turn silence: the pause never ends the turn. With the turn model it may: Whisper sometimes hears
    # "I would like to visit her." with a full stop, and Smart Turn calls that finished (a hesitation the
    # models split, which the continued turn then repairs); this test is about the partial transcript,
    # which both modes publish the same way.
    running = await start_server(server_args(data_dir, "--turn", "silence"))
    track = SpeechTrack()
    client = await talking_client(running.url, http, track, listen="echo")
    try:
        # The rest of the turn lasts seconds, so the pause's transcription is back while it is
        # still open however slow the machine: only then is a partial transcript meaningful.
        rest = [trimmed(speak(text)) for text in ("museum on Sunday.", SENTENCES[2], SENTENCES[0])]
        short_gap = np.zeros(1600, np.float32)
        track.play(np.concatenate([trimmed(speak("I would like to visit the")), gap,
                                   *[part for clip in rest for part in (clip, short_gap)]]))
        final = await wait_events(client, lambda e: e["type"] == "transcript" and e["final"], timeout=30)
        events = [e for e in channel_events(client) if e["type"] in ("user_start", "user_end", "transcript")]
        partials = [e["text"] for e in events if e["type"] == "transcript" and not e["final"]]
        assert [e["type"] for e in events].count("user_start") == 1, events  # one turn, not two
        assert partials and "visit" in partials[0].lower() and "museum" not in partials[0].lower(), events
        kinds_seen = [e["type"] if e["type"] != "transcript" else ("final" if e["final"] else "partial") for e in events]
        assert kinds_seen[0] == "user_start" and kinds_seen[-2:] == ["user_end", "final"], kinds_seen
        reference = " ".join([SENTENCES[1], SENTENCES[2], SENTENCES[0]])
        assert word_error_rate(reference, final[0]["text"]) <= 0.25, final
    finally:
        await client.close()
        await running.runner.cleanup()


async def test_asr_openai_sends_each_turn_to_a_compatible_endpoint(data_dir, http):
    import io
    import wave

    from aiohttp import web

    uploads: list[float] = []

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        with wave.open(io.BytesIO(form["file"].file.read())) as wav:
            uploads.append(wav.getnframes() / wav.getframerate())
        return web.json_response({"text": "Transcribed by the service."})

    fake = web.Application()
    fake.router.add_post("/v1/audio/transcriptions", transcriptions)
    runner = web.AppRunner(fake)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    running = await start_server(server_args(data_dir, "--asr", "openai", "--asr-base-url",
                                             f"http://127.0.0.1:{port}/v1", "--listen", "echo"))
    track = SpeechTrack()
    client = await talking_client(running.url, http, track)
    try:
        clip = speak(SENTENCES[2])
        track.play(clip)
        found = await wait_events(client, lambda e: e["type"] == "transcript" and e["final"], timeout=20)
        assert found[0]["text"] == "Transcribed by the service."
        await wait_events(client, lambda e: e["type"] == "start" and e["text"] == "Transcribed by the service.")
        assert uploads and abs(uploads[-1] - len(clip) / 16000) < 1.0, uploads  # the turn's audio, as WAV
    finally:
        await client.close()
        await running.runner.cleanup()
        await runner.cleanup()
