"""Voice-cloning TTS services (GPT-SoVITS, CosyVoice, Fish-Speech, XTTS) against local fakes of their APIs."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from media import SAMPLE_RATE
from tests.conftest import server_args, start_server
from tests.support.tts_servers import FakeCloningService, wav_header
from tests.support.tts_servers import pcm_s16, sine
from tts.base import TTSError
from tts.cloning import BACKENDS, SERVICES, ServiceSettings
from tts.httpaudio import PCMDecoder
from tts.reference import VoiceReference, resolve_reference

WAIT = 5.0
REF_TEXT = "This is how I sound."


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def voices(data_dir) -> Path:
    """Two reference recordings inside the test data directory."""
    folder = data_dir / "voices"
    folder.mkdir(exist_ok=True)
    for name, hz in (("me.wav", 220.0), ("you.wav", 330.0)):
        (folder / name).write_bytes(wav_header(16000) + pcm_s16(sine(0.5, 16000, hz)))
    return folder


@pytest.fixture
def settings():
    """ServiceSettings made by a test, closed after it (each owns a network loop and a client)."""
    made: list[ServiceSettings] = []

    def make(name: str, url: str) -> ServiceSettings:
        made.append(ServiceSettings(name, url))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
async def service():
    started = []

    async def start(name: str, **options) -> FakeCloningService:
        fake = FakeCloningService(name, **options)
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.close()


def consume(backend, text: str, cancel_after_first: bool = False) -> list[tuple[float, np.ndarray]]:
    got: list[tuple[float, np.ndarray]] = []
    for audio in backend.stream(text, lambda: cancel_after_first and bool(got)):
        assert audio.dtype == np.float32 and audio.ndim == 1
        got.append((time.monotonic(), audio))
    return got


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pcm_decoder_reads_a_wav_header_split_anywhere():
    tone = sine(0.5, 24000)
    data = wav_header(24000) + pcm_s16(tone)
    for size in (1, 7, 45, 4096):
        decoder = PCMDecoder(rate=11025, wav_header=True)  # the header's rate wins
        out = [decoder.push(data[i:i + size]) for i in range(0, len(data), size)] + [decoder.flush()]
        audio = np.concatenate(out)
        assert decoder.rate == 24000
        assert abs(len(audio) - 8000) < 80 and abs(peak_hz(audio) - 440) < 5
    with pytest.raises(TTSError, match="did not send WAV"):
        PCMDecoder(16000, wav_header=True).push(b"<html>not audio</html>")


EXPECTED_REQUEST = {
    "sovits": lambda ref: {"text": "Hello there", "text_lang": "auto", "ref_audio_path": str(ref.audio),
                           "prompt_text": REF_TEXT, "prompt_lang": "auto", "media_type": "wav",
                           "streaming_mode": True},
    "cosyvoice": lambda ref: {"tts_text": "Hello there", "prompt_text": REF_TEXT},
    "fishtts": lambda ref: {"text": "Hello there", "format": "wav", "streaming": True, "use_memory_cache": "on",
                            "references": [{"audio": __import__("base64").b64encode(ref.audio.read_bytes()).decode(),
                                            "text": REF_TEXT}]},
    "xtts": lambda ref: {"text": "Hello there", "language": "en", "add_wav_header": False, "stream_chunk_size": "20",
                         "gpt_cond_latent": [[0.1, 0.2], [0.3, 0.4]], "speaker_embedding": [0.5, 0.6]},
}


@pytest.mark.parametrize("name", SERVICES)
async def test_each_service_streams_the_cloned_voice_as_it_arrives(name, service, settings, voices, data_dir):
    fake = await service(name)
    reference = resolve_reference(data_dir, "voices/me.wav", REF_TEXT)
    tts = BACKENDS[name](settings(name, fake.url), reference)
    got = await asyncio.to_thread(consume, tts, "Hello there")
    assert got[0][0] < fake.log.finished, "the first audio waited for the whole answer"
    audio = np.concatenate([a for _, a in got])
    assert abs(len(audio) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE  # one second, resampled from the service's rate
    assert abs(peak_hz(audio) - 440) < 5
    assert fake.log.requests[-1] == EXPECTED_REQUEST[name](reference)
    if name in ("cosyvoice", "xtts"):  # the recording itself was uploaded
        upload = fake.uploads[0]
        assert upload.get("prompt_wav", upload.get("wav_file")) == (voices / "me.wav").read_bytes()


async def test_xtts_clones_a_reference_once_per_process(service, settings, voices, data_dir):
    fake = await service("xtts", seconds=0.2)
    shared = settings("xtts", fake.url)
    for _ in range(2):
        tts = BACKENDS["xtts"](shared, resolve_reference(data_dir, "voices/me.wav"))
        await asyncio.to_thread(consume, tts, "Hi")
    assert len(fake.uploads) == 1 and len(fake.log.requests) == 3  # one clone, two syntheses


async def test_cosyvoice_without_reference_uses_a_builtin_speaker(service, settings):
    fake = await service("cosyvoice", seconds=0.2)
    tts = BACKENDS["cosyvoice"](settings("cosyvoice", fake.url), None, voice="英文女")
    await asyncio.to_thread(consume, tts, "Hi")
    assert fake.log.requests == [{"tts_text": "Hi", "spk_id": "英文女"}]


@pytest.mark.parametrize("name", SERVICES)
async def test_cancel_closes_the_connection(name, service, settings, voices, data_dir):
    fake = await service(name, seconds=3.0, delay=0.1)
    tts = BACKENDS[name](settings(name, fake.url), resolve_reference(data_dir, "voices/me.wav", REF_TEXT))
    got = await asyncio.to_thread(consume, tts, "Hello", True)
    assert len(got) == 1
    await asyncio.wait_for(fake.log.hung_up.wait(), WAIT)
    assert fake.log.finished is None


async def test_failures_say_what_to_check(service, settings, voices, data_dir):
    reference = resolve_reference(data_dir, "voices/me.wav", REF_TEXT)
    fake = await service("fishtts", status=500)
    tts = BACKENDS["fishtts"](settings("fishtts", fake.url), reference)
    with pytest.raises(TTSError, match="Fish-Speech answered 500 at .*: .*scripted failure"):
        await asyncio.to_thread(consume, tts, "Hello")
    tts = BACKENDS["sovits"](settings("sovits", f"http://127.0.0.1:{closed_port()}"), reference)
    with pytest.raises(TTSError, match="could not reach GPT-SoVITS .*--tts-server"):
        await asyncio.to_thread(consume, tts, "Hello")
    tts = BACKENDS["sovits"](settings("sovits", fake.url), None)
    with pytest.raises(TTSError, match="clones a voice: give a reference recording"):
        await asyncio.to_thread(consume, tts, "Hello")


async def test_a_stalled_service_ends_the_sentence_and_an_interrupt_ends_the_wait(service, voices, data_dir):
    """A service that accepts and then sends nothing: an error after --tts-timeout, or at once on interrupt."""
    fake = await service("cosyvoice", delay=30.0)  # the first piece would come after 30 s
    reference = resolve_reference(data_dir, "voices/me.wav", REF_TEXT)
    stalled = ServiceSettings("cosyvoice", fake.url, timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(TTSError, match="did not start sending audio within 0.5 s"):
            await asyncio.to_thread(consume, BACKENDS["cosyvoice"](stalled, reference), "Hello")
        assert time.monotonic() - started < 5
        patient = ServiceSettings("cosyvoice", fake.url, timeout_s=60.0)
        interrupt_at = time.monotonic() + 0.5
        started = time.monotonic()
        backend = BACKENDS["cosyvoice"](patient, reference)
        got = await asyncio.to_thread(lambda: list(backend.stream("Hello", lambda: time.monotonic() > interrupt_at)))
        assert got == [] and time.monotonic() - started < 3
        patient.close()
    finally:
        stalled.close()


def test_reference_paths_stay_inside_the_data_directory(voices, data_dir, tmp_path):
    assert resolve_reference(data_dir, "voices/me.wav").audio == (voices / "me.wav").resolve()
    assert resolve_reference(data_dir, str(voices / "me.wav")).audio == (voices / "me.wav").resolve()
    assert resolve_reference(data_dir, "speaker_1") == VoiceReference(voice_id="speaker_1")
    assert resolve_reference(data_dir, None) is None and resolve_reference(data_dir, "") is None
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF")
    for bad, words in ((str(outside), "outside the data directory"), ("../secret.wav", "outside the data directory"),
                       ("voices/none.wav", "not found"), ("/etc/passwd", "neither an audio file"),
                       ("a/b", "neither"), (42, "must be a path")):
        with pytest.raises(TTSError, match=words):
            resolve_reference(data_dir, bad)
    with pytest.raises(TTSError, match="reference text"):
        resolve_reference(data_dir, "voices/me.wav", ["not", "text"])


async def test_server_clones_the_voices_clients_name(service, voices, data_dir, http):
    """--tts cosyvoice: /offer's refaudio/reftext become the session's voice; /human's tts dict overrides it."""
    from tests.support.rtc_client import ReceiverClient

    fake = await service("cosyvoice", seconds=0.3)
    running = await start_server(server_args(data_dir, "--tts", "cosyvoice", "--tts-server", fake.url))
    client = ReceiverClient(running.url)
    try:
        client.pc.addTransceiver("video", direction="recvonly")
        client.pc.addTransceiver("audio", direction="recvonly")
        await client.pc.setLocalDescription(await client.pc.createOffer())
        bad_offer = {"sdp": client.pc.localDescription.sdp, "type": "offer", "refaudio": "../../etc/passwd.wav"}
        async with http.post(f"{running.url}/offer", json=bad_offer) as response:
            assert response.status == 400 and "outside the data directory" in (await response.json())["msg"]
        offer = {"sdp": client.pc.localDescription.sdp, "type": "offer", "refaudio": "voices/me.wav",
                 "reftext": REF_TEXT}
        async with http.post(f"{running.url}/offer", json=offer) as response:
            assert response.status == 200, await response.text()
            sessionid = (await response.json())["sessionid"]
        say = {"sessionid": sessionid, "text": "First sentence.", "type": "echo"}
        async with http.post(f"{running.url}/human", json=say) as response:
            assert response.status == 200, await response.text()
        other = {**say, "text": "Second sentence.", "tts": {"ref_file": "voices/you.wav", "ref_text": "Other."}}
        async with http.post(f"{running.url}/human", json=other) as response:
            assert response.status == 200, await response.text()
        bad = {**say, "tts": {"ref_file": "../outside.wav"}}
        async with http.post(f"{running.url}/human", json=bad) as response:
            assert response.status == 400
        deadline = time.monotonic() + 20
        while len(fake.uploads) < 2:
            assert time.monotonic() < deadline, fake.log.requests
            await asyncio.sleep(0.05)
    finally:
        await client.close()
        await running.runner.cleanup()
    assert fake.log.requests[:2] == [{"tts_text": "First sentence.", "prompt_text": REF_TEXT},
                                     {"tts_text": "Second sentence.", "prompt_text": "Other."}]
    assert fake.uploads[0]["prompt_wav"] == (voices / "me.wav").read_bytes()
    assert fake.uploads[1]["prompt_wav"] == (voices / "you.wav").read_bytes()


def test_livetalking_flags_set_the_server_voice(data_dir, voices):
    from tts.factory import settings_from_args as tts_settings
    from tts.factory import TTSFactory

    args = server_args(data_dir, "--tts", "sovits", "--TTS_SERVER", "http://127.0.0.1:9", "--REF_FILE",
                       "voices/me.wav", "--REF_TEXT", REF_TEXT)
    settings = tts_settings(args)
    factory = TTSFactory(settings)
    backend = factory.create()
    factory.close()
    assert backend.settings.url == "http://127.0.0.1:9"
    assert backend.reference == VoiceReference(audio=(voices / "me.wav").resolve(), text=REF_TEXT)
    assert factory.create("espeak").voice == "en-us"  # the server's recording is not forced on other backends
    assert TTSFactory(tts_settings(server_args(data_dir, "--REF_FILE", "de"))).create().voice == "de"
    with pytest.raises(TTSError, match="only a cloning TTS can use"):
        tts_settings(server_args(data_dir, "--REF_FILE", "voices/me.wav"))
