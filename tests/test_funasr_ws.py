"""/api/asr speaks FunASR's websocket client protocol (LiveTalking's ASR page) with our recogniser."""

from __future__ import annotations

import numpy as np
import pytest

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


async def test_a_2pass_client_gets_its_final_result_as_2pass_offline(server, http):
    """FunASR names a 2pass client's final result "2pass-offline"; LiveTalking's ASR page forwards only that
    (or "offline") to /human. Other modes come back as they were asked."""
    for asked, answered in (("2pass", "2pass-offline"), ("online", "online"), ("offline", "offline")):
        async with http.ws_connect(f"{server.url}/api/asr") as socket:
            await socket.send_json({"chunk_size": [5, 10, 5], "wav_name": "h5", "is_speaking": True,
                                    "chunk_interval": 10, "itn": False, "mode": asked})
            await socket.send_json({"chunk_size": [5, 10, 5], "wav_name": "h5", "is_speaking": False,
                                    "chunk_interval": 10, "mode": asked})
            reply = await socket.receive_json(timeout=10)
        assert reply == {"mode": answered, "wav_name": "h5", "is_final": True, "text": ""}, asked


async def test_sockets_are_capped_per_address_and_an_idle_one_is_closed(server, http, monkeypatch):
    import aiohttp

    import listen.funasr_ws as funasr_ws

    monkeypatch.setattr(funasr_ws, "IDLE_TIMEOUT_S", 1.0)
    sockets = [await http.ws_connect(f"{server.url}/api/asr", autoping=True)
               for _ in range(funasr_ws.MAX_SOCKETS_PER_ADDRESS)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{server.url}/api/asr")
        assert refused.value.status == 429
        closing = await sockets[0].receive(timeout=10)  # it sent nothing: the server closes it
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert sockets[0].close_code == funasr_ws.IDLE_CLOSE_CODE
        for socket in sockets[1:]:
            await socket.receive(timeout=10)
        async with http.ws_connect(f"{server.url}/api/asr") as again:  # their places are free again
            await again.send_json({"is_speaking": True})
            await again.send_json({"is_speaking": False})
            assert (await again.receive_json(timeout=10))["is_final"] is True
    finally:
        for socket in sockets:
            await socket.close()
