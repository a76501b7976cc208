"""Decoding uploaded audio (anything FFmpeg reads) to 16 kHz mono float32."""

from __future__ import annotations

import io

import av
import numpy as np

from media import SAMPLE_RATE

MAX_AUDIO_SECONDS = 600
MIN_SAMPLE_RATE = 8000  # below this a tiny file "decodes" to minutes of resampled audio
FORMATS_HINT = "send wav, mp3, ogg, m4a or flac"


class AudioDecodeError(Exception):
    pass


class AudioTooLong(AudioDecodeError):
    """The audio runs past the seconds the caller allowed (decoding stopped there)."""


def decode_audio(data: bytes, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Decode and resample a whole file (blocking: run it in an executor).

    Decoding stops as soon as the output passes `max_seconds`, so a small file
    that declares a long duration costs no more than that.
    """
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not read the upload as audio ({exc}): {FORMATS_HINT}") from None
    pieces: list[np.ndarray] = []
    total = 0
    limit = int(max_seconds * SAMPLE_RATE)
    try:
        with container:
            if not container.streams.audio:
                raise AudioDecodeError(f"the upload has no audio stream: {FORMATS_HINT}")
            check_rate(container.streams.audio[0].sample_rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                check_rate(frame.sample_rate)
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    pieces.append(samples)
                    total += samples.size
                if total > limit:
                    raise AudioTooLong(f"audio longer than {max_seconds:.0f} s")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioDecodeError(f"could not decode the upload ({exc}): {FORMATS_HINT}") from None
    if not pieces:
        raise AudioDecodeError("the upload decodes to no audio samples")
    return np.concatenate(pieces).astype(np.float32, copy=False)


def check_rate(rate: int | None) -> None:
    if not rate or rate < MIN_SAMPLE_RATE:
        raise AudioDecodeError(f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz: resample the audio first")
