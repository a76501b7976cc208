"""Decoding uploaded audio (anything FFmpeg reads) to 16 kHz mono float32."""

from __future__ import annotations

import io

import av
import numpy as np

from media import SAMPLE_RATE

MAX_AUDIO_SECONDS = 600


class AudioDecodeError(Exception):
    pass


def decode_audio(data: bytes, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Decode and resample a whole file (blocking: run it in an executor)."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(f"could not read the upload as audio ({exc}): send wav, mp3, ogg, m4a or flac") from None
    pieces: list[np.ndarray] = []
    total = 0
    limit = int(max_seconds * SAMPLE_RATE)
    try:
        with container:
            if not container.streams.audio:
                raise AudioDecodeError("the upload has no audio stream: send wav, mp3, ogg, m4a or flac")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    pieces.append(samples)
                    total += samples.size
                if total > limit:
                    raise AudioDecodeError(f"audio longer than {max_seconds:.0f} s")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(f"could not decode the upload ({exc}): send wav, mp3, ogg, m4a or flac") from None
    if not pieces:
        raise AudioDecodeError("the upload decodes to no audio samples")
    return np.concatenate(pieces).astype(np.float32, copy=False)
