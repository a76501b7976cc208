"""TTS backends by name: the --tts flags, `--tts auto`, and the per-process factory sessions take voices from."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from httpapi import positive_seconds
from tts import cloning
from tts.base import TTSBackend, TTSError
from tts.cloning import SERVICES, ServiceSettings
from tts.netloop import DEFAULT_FIRST_PIECE_S
from tts.reference import VoiceReference, resolve_reference

logger = logging.getLogger(__name__)

TTS_CHOICES = ("auto", "espeak", "piper", "edgetts", "openai", *SERVICES)
MAX_CACHED_BACKENDS = 256
TTS_BACKENDS = TTS_CHOICES[1:]


@dataclass(frozen=True)
class TTSSettings:
    backend: str = "espeak"
    voice: str | None = None
    proxy: str | None = None  # edgetts
    base_url: str | None = None  # openai
    model: str = "tts-1"  # openai
    timeout_s: float = 10.0  # network backends: first audio, and between pieces
    service: ServiceSettings | None = None  # sovits / cosyvoice / fishtts / xtts
    reference: VoiceReference | None = None  # the server's default reference voice (--REF_FILE)
    models_dir: Path = Path("models")  # piper: voices in models/piper/ besides installed voice packages


class TTSFactory:
    """Builds TTS backends for sessions; owns the process-wide TTS state.

    Backends are light and stateless, so one instance per (backend, voice) is
    shared by every session; what holds resources (espeak's library, the speech
    endpoint's HTTP client and its loop) exists once and is closed in `close()`.
    """

    def __init__(self, settings: TTSSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._backends: dict[tuple[str, str], TTSBackend] = {}
        self._speech = None  # tts.openai_speech.SpeechService, built on first use
        self._services: dict[str, ServiceSettings] = {}  # cloning services in use, each with one HTTP client
        self._piper = None  # tts.piper.PiperVoices: the loaded Piper models, built on first use

    def create(self, backend: str | None = None, voice: str | None = None,
               reference: VoiceReference | None = None) -> TTSBackend:
        """A backend by name (default: the server's), raising TTSError for unknown names or voices.

        `reference`: the voice a cloning service imitates; for the other backends a
        reference that is a plain name is their voice (LiveTalking's REF_FILE habit).
        """
        name = backend or self.settings.backend
        if name not in TTS_BACKENDS:
            raise TTSError(f"unknown TTS backend {str(name)[:40]!r}: choose one of {', '.join(TTS_BACKENDS)}")
        voice = voice or (self.settings.voice if name == self.settings.backend else None)
        if reference is None and name == self.settings.backend:
            reference = self.settings.reference
        if reference is not None and name not in SERVICES:
            if reference.voice_id is None:
                raise TTSError(f"the {name} TTS cannot clone a voice from a recording: use --tts "
                               f"{'/'.join(SERVICES)}, or name a voice")
            voice, reference = voice or reference.voice_id, None
        key = (name, voice or "", reference)
        with self._lock:
            cached = self._backends.get(key)
        if cached is not None:
            return cached
        built = self._build(name, voice, reference)
        with self._lock:
            if len(self._backends) >= MAX_CACHED_BACKENDS:
                self._backends.clear()  # only names from allow-lists get here; this just bounds the table
            return self._backends.setdefault(key, built)

    def _service(self, name: str) -> ServiceSettings:
        """The process-wide connection settings (and HTTP client) of a cloning service."""
        with self._lock:
            service = self._services.get(name)
            if service is None:
                configured = self.settings.service
                service = configured if configured is not None and configured.service == name \
                    else ServiceSettings(name)
                service.timeout_s = self.settings.timeout_s
                self._services[name] = service
            return service

    def _build(self, name: str, voice: str | None, reference: VoiceReference | None = None) -> TTSBackend:
        if name in SERVICES:
            from tts.cloning import BACKENDS

            return BACKENDS[name](self._service(name), reference, voice)
        if name == "espeak":
            from tts.espeak import EspeakLibrary, EspeakTTS

            return EspeakTTS(EspeakLibrary.shared(), voice or "en-us")
        if name == "piper":
            from tts.espeak import EspeakLibrary
            from tts.piper import PiperTTS, PiperVoices, find_voice

            # A path names a voice only from the command line; clients pick voices by name.
            files = find_voice(voice, self.settings.models_dir, allow_paths=voice is not None and voice == self.settings.voice)
            with self._lock:
                if self._piper is None:
                    self._piper = PiperVoices()
                voices = self._piper
            return PiperTTS(files, voices, EspeakLibrary.shared())
        if name == "edgetts":
            from tts.edge import DEFAULT_VOICE, EdgeTTS, check_voice

            timeout = max(1, round(self.settings.timeout_s))
            return EdgeTTS(check_voice(voice or DEFAULT_VOICE), proxy=self.settings.proxy,
                           connect_timeout=timeout, receive_timeout=timeout)
        from tts.openai_speech import DEFAULT_VOICE, OpenAISpeechTTS, SpeechService, check_voice

        voice = check_voice(voice or DEFAULT_VOICE)
        if not self.settings.base_url:
            raise TTSError("the openai TTS backend needs the server started with --tts-base-url")
        with self._lock:
            if self._speech is None:
                self._speech = SpeechService(self.settings.base_url, self.settings.model,
                                             first_piece_s=self.settings.timeout_s,
                                             between_pieces_s=self.settings.timeout_s)
            service = self._speech
        return OpenAISpeechTTS(voice=voice, service=service)

    def voices(self) -> list[dict[str, str]]:
        """What a page may offer: the server's default, every installed Piper voice, espeak."""
        from tts.piper import voice_catalogue

        listed = [{"backend": self.settings.backend, "voice": self.settings.voice or "",
                   "label": f"server default ({self.settings.backend})"}]
        listed += [{"backend": "piper", "voice": name, "label": f"{name} (piper, natural, offline)"}
                   for name in sorted(voice_catalogue(self.settings.models_dir))]
        listed.append({"backend": "espeak", "voice": "en-us", "label": "en-us (espeak, robotic, offline)"})
        return listed

    def close(self) -> None:
        """Shut the shared clients (server shutdown)."""
        with self._lock:
            speech, self._speech = self._speech, None
            services, self._services = list(self._services.values()), {}
            piper, self._piper = self._piper, None
            self._backends.clear()
        if speech is not None:
            speech.close()
        for service in services:
            service.close()
        if piper is not None:
            piper.clear()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tts", choices=TTS_CHOICES, default="auto",
                        help="speech engine; auto = edgetts when it can be reached, else piper when a voice is installed "
                             "(natural, offline), else espeak (robotic, offline)")
    parser.add_argument("--voice", default=None, help="TTS voice (espeak: en-us, cmn, ...; piper: en_US-joe-medium, "
                                                      "a folder or a .onnx path; edgetts: en-US-AriaNeural, ...)")
    parser.add_argument("--tts-proxy", dest="tts_proxy", default=None, help="HTTP proxy for edgetts")
    parser.add_argument("--tts-base-url", dest="tts_base_url", default=None,
                        help="OpenAI-compatible speech endpoint for --tts openai (e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--tts-model", dest="tts_model", default="tts-1", help="model for --tts openai")
    parser.add_argument("--tts-timeout", dest="tts_timeout", type=positive_seconds, default=DEFAULT_FIRST_PIECE_S,
                        metavar="SECONDS", help="network TTS: longest wait for the first audio and between pieces "
                                                "(a stuck service ends the sentence with an error event)")
    cloning.add_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> TTSSettings:
    """--tts auto picks edgetts when Microsoft's service answers, else a Piper voice when one is
    installed, else espeak (both offline)."""
    from tts.piper import voice_catalogue

    backend = args.tts
    voice = args.voice
    if backend == "auto":
        from tts.edge import reachable

        if reachable(proxy=args.tts_proxy):
            backend = "edgetts"
        else:
            backend = "piper" if voice_catalogue(args.models_dir) else "espeak"
        logger.info("tts auto: %s", {"edgetts": "edgetts (service reachable)", "piper": "piper (offline, natural)",
                                     "espeak": "espeak (offline; pip install -r requirements.txt for a natural voice)"}[backend])
        if backend == "piper" and voice is not None and "/" not in voice and not voice.endswith(".onnx") \
                and voice not in voice_catalogue(args.models_dir):
            voice = None  # a voice named for another backend (en-us, en-US-AriaNeural): piper's default
    if backend == "openai" and not args.tts_base_url:
        raise TTSError("--tts openai needs --tts-base-url (an OpenAI-compatible /v1 endpoint)")
    service = cloning.ServiceSettings(backend, args.tts_server, args.tts_lang, args.tts_sample_rate) \
        if backend in cloning.SERVICES else None
    reference = resolve_reference(args.data_dir, args.ref_file, args.ref_text)
    if reference is not None and reference.audio is not None and service is None:
        raise TTSError(f"--REF_FILE {args.ref_file} is a recording, which only a cloning TTS can use: "
                       f"add --tts {'|'.join(cloning.SERVICES)}")
    return TTSSettings(backend=backend, voice=voice, proxy=args.tts_proxy,
                       base_url=args.tts_base_url, model=args.tts_model, timeout_s=args.tts_timeout,
                       service=service, reference=reference, models_dir=args.models_dir)


def start_factory(settings: TTSSettings) -> TTSFactory:
    """The process's TTS factory; a Piper voice is loaded now, and one that cannot be leaves
    the server speaking with espeak (the error says what to do)."""
    factory = TTSFactory(settings)
    if settings.backend == "piper":
        try:
            factory.create()
        except TTSError as exc:
            logger.error("%s; speaking with espeak instead", exc)
            factory.settings = dataclasses.replace(settings, backend="espeak", voice=None)
    return factory
