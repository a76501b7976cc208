"""/api/asr speaks FunASR's websocket client protocol (LiveTalking's ASR page) with our recogniser."""

from __future__ import annotations

import numpy as np

from tests.support.speech_sender import speak, word_error_rate

SENTENCE = "I would like to visit the museum on Sunday."
PIECE_SAMPLES = 960  # 60 ms, as the FunASR client sends


async def test_an_utterance_over_the_socket_comes_back_as_text(server, http):
    pcm = (np.clip(speak(SENTENCE), -1, 1) * 32767).astype("<i2").tobytes()
    async with http.ws_connect(f"{server.url}/api/asr") as socket:
        await socket.send_str("not json")
        assert "error" in (await socket.receive_json(timeout=10))
        await socket.send_json({"is_speaking": False})  # nothing open: ignored
        await socket.send_json({"mode": "offline", "wav_name": "mic", "is_speaking": True, "itn": True})
        for start in range(0, len(pcm), PIECE_SAMPLES * 2):
            await socket.send_bytes(pcm[start:start + PIECE_SAMPLES * 2])
        await socket.send_json({"is_speaking": False})
        reply = await socket.receive_json(timeout=60)
    assert reply["is_final"] is True and reply["mode"] == "offline" and reply["wav_name"] == "mic"
    assert word_error_rate(SENTENCE, reply["text"]) <= 0.25, reply


async def test_an_empty_utterance_answers_empty_text(server, http):
    async with http.ws_connect(f"{server.url}/api/asr") as socket:
        await socket.send_json({"is_speaking": True, "wav_name": "x" * 500})
        await socket.send_json({"is_speaking": False})
        reply = await socket.receive_json(timeout=10)
    assert reply == {"mode": "offline", "wav_name": "x" * 64, "is_final": True, "text": ""}
