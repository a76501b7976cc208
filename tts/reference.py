"""The reference voice a cloning TTS imitates: a short recording and what it says.

Clients name it (`refaudio`/`reftext` in /offer, `tts: {ref_file, ref_text}` in
/human, `--REF_FILE`/`--REF_TEXT`). A recording must be an audio file inside
the server's data directory, so a client can never make the server read, or
send to a TTS service, any other file. Fish-Speech can also use a voice stored
on its own server by id: a name without a path or an audio extension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tts.base import TTSError

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus")
MAX_REFERENCE_BYTES = 20 * 1024 * 1024
MAX_REFERENCE_TEXT = 1000
REFERENCE_ID = re.compile(r"^[A-Za-z0-9\u4e00-\u9fff][\w\u4e00-\u9fff .-]{0,63}$")


@dataclass(frozen=True)
class VoiceReference:
    """Either a recording (`audio`, inside data/) or a service-side voice id, plus its transcript."""

    audio: Path | None = None
    voice_id: str | None = None
    text: str = ""

    def read_audio(self) -> bytes:
        """The recording's bytes (blocking; TTS threads call this)."""
        if self.audio is None:
            raise TTSError("this TTS service needs a reference recording: pass refaudio / ref_file")
        return self.audio.read_bytes()


def resolve_reference(data_dir: Path, ref_file: object, ref_text: object = "") -> VoiceReference | None:
    """Validate what a client named; None when it named nothing. Raises TTSError with what to fix."""
    if ref_text is None:
        ref_text = ""
    if not isinstance(ref_text, str) or len(ref_text) > MAX_REFERENCE_TEXT:
        raise TTSError(f"the reference text must be a string of at most {MAX_REFERENCE_TEXT} characters")
    if ref_file is None or ref_file == "":
        return None
    if not isinstance(ref_file, str) or len(ref_file) > 500:
        raise TTSError("the reference audio must be a path (string) inside the data directory")
    if Path(ref_file).suffix.lower() not in AUDIO_SUFFIXES:
        if REFERENCE_ID.match(ref_file) and "/" not in ref_file and "\\" not in ref_file and ".." not in ref_file:
            return VoiceReference(voice_id=ref_file, text=ref_text)
        raise TTSError(f"reference {ref_file!r} is neither an audio file ({', '.join(AUDIO_SUFFIXES)}) "
                       f"inside the data directory nor a voice id")
    root = data_dir.resolve()
    candidate = Path(ref_file)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise TTSError(f"reference audio {ref_file!r} is outside the data directory: put it under data/ and name it "
                       f"relative to it")
    if not path.is_file():
        raise TTSError(f"reference audio {ref_file!r} not found in the data directory")
    if path.stat().st_size > MAX_REFERENCE_BYTES:
        raise TTSError(f"reference audio {ref_file!r} is over {MAX_REFERENCE_BYTES // (1024 * 1024)} MB: "
                       f"a few seconds of speech is enough")
    return VoiceReference(audio=path, text=ref_text)
