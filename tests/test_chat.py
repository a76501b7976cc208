"""Chat through a live session: a local OpenAI-compatible server, the real openai client, espeak."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import connected_client, free_port, server_args, start_server
from tests.support.llm_server import Script
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import channel_events, post, wait_silent, wait_voiced

REPLY = ["Sure. ", "The first ", "sentence is short. ", "The second one ", "takes a little longer. ", "Done!"]
SENTENCES = ["Sure.", "The first sentence is short.", "The second one takes a little longer.", "Done!"]


@pytest.fixture
async def chat_server(data_dir, llm_server):
    running = await start_server(server_args(
        data_dir, "--llm-base-url", llm_server.base_url, "--llm-model", "test-model",
        "--tts-proxy", f"http://127.0.0.1:{free_port()}"))
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def client(chat_server, http):
    receiver = await connected_client(chat_server.url, http)
    yield receiver
    await receiver.close()


async def wait_event(client: ReceiverClient, predicate, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in channel_events(client):
            if predicate(event):
                return event
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no such event in {channel_events(client)}")


def starts(client: ReceiverClient) -> list[str]:
    return [e["text"] for e in channel_events(client) if e["type"] == "start"]


async def test_reply_is_spoken_sentence_by_sentence_before_the_stream_ends(chat_server, llm_server, http, client):
    llm_server.queue(Script(deltas=REPLY, delay=0.25))
    since = len(client.audio)
    status, body = await post(http, f"{chat_server.url}/human",
                              {"sessionid": client.sessionid, "text": "Tell me something.", "type": "chat"})
    assert status == 200 and body["code"] == 0
    first = await wait_voiced(client, since)
    exchange = llm_server.exchanges[-1]
    assert exchange.finished is None or first.arrival < exchange.finished, "speech waited for the whole reply"
    await wait_event(client, lambda e: e["type"] == "end" and e["text"] == "Done!", timeout=20)
    assert starts(client) == SENTENCES
    assert exchange.body["messages"][-1] == {"role": "user", "content": "Tell me something."}

    # The next question carries the history of what was heard.
    llm_server.queue(Script(deltas=["Again."]))
    await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "More?", "type": "chat"})
    await wait_event(client, lambda e: e["type"] == "end" and e["text"] == "Again.")
    history = llm_server.exchanges[-1].body["messages"]
    assert {"role": "assistant", "content": " ".join(SENTENCES)} in history


async def test_interrupt_closes_the_upstream_stream_and_keeps_only_what_was_heard(chat_server, llm_server, http, client):
    llm_server.queue(Script(deltas=["First sentence is spoken. "] + ["and then it goes on and on "] * 40, delay=0.1))
    since = len(client.audio)
    await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "Talk.", "type": "chat"})
    await wait_voiced(client, since)
    status, _ = await post(http, f"{chat_server.url}/interrupt_talk", {"sessionid": client.sessionid})
    assert status == 200
    await asyncio.wait_for(llm_server.disconnected.wait(), 2.0)
    assert llm_server.exchanges[-1].finished is None
    await wait_silent(client, quiet_s=0.5, timeout=5)
    spoken_before = len(starts(client))
    await asyncio.sleep(1.0)
    assert len(starts(client)) == spoken_before, "sentences kept coming after the interrupt"

    llm_server.queue(Script(deltas=["Okay."]))
    await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "Hi.", "type": "chat"})
    await wait_event(client, lambda e: e["type"] == "end" and e["text"] == "Okay.")
    assistant = [m for m in llm_server.exchanges[-1].body["messages"] if m["role"] == "assistant"]
    assert all("goes on and on" not in m["content"] for m in assistant), "unheard text entered the history"


@pytest.mark.parametrize("script, kind", [
    (Script(status=401), "auth"),
    (Script(status=429), "rate_limit"),
    (Script(deltas=["Hi. "], malformed_after=1), "malformed"),
])
async def test_llm_errors_reach_the_client_and_the_session_keeps_working(chat_server, llm_server, http, client, script, kind):
    llm_server.queue(script, script)  # the client retries once, as it does in production
    status, _ = await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "Hi", "type": "chat"})
    assert status == 200
    error = await wait_event(client, lambda e: e["type"] == "error")
    assert error["source"] == "llm" and error["kind"] == kind and error["msg"]
    since = len(client.audio)
    await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "Still alive.", "type": "echo"})
    await wait_voiced(client, since)


async def test_failing_tts_backend_sends_an_error_event_and_the_session_goes_on(chat_server, http, client):
    status, _ = await post(http, f"{chat_server.url}/human",
                           {"sessionid": client.sessionid, "text": "Hello.", "type": "echo", "tts": "edgetts"})
    assert status == 200
    error = await wait_event(client, lambda e: e["type"] == "error", timeout=15)
    assert error["source"] == "tts" and "espeak" in error["msg"]
    since = len(client.audio)
    await post(http, f"{chat_server.url}/human", {"sessionid": client.sessionid, "text": "Espeak works.", "type": "echo"})
    await wait_voiced(client, since)


async def test_unreachable_llm_endpoint_is_an_error_event(data_dir, http):
    running = await start_server(server_args(
        data_dir, "--llm-base-url", f"http://127.0.0.1:{free_port()}/v1", "--llm-model", "m"))
    receiver = ReceiverClient(running.url, keep_video=False)
    try:
        await receiver.connect(http, data_channel=True)
        await receiver.wait_for(audio_frames=5)
        await post(http, f"{running.url}/human", {"sessionid": receiver.sessionid, "text": "Hi", "type": "chat"})
        error = await wait_event(receiver, lambda e: e["type"] == "error", timeout=15)
        assert error["kind"] == "unreachable"
    finally:
        await receiver.close()
        await running.runner.cleanup()


async def test_chat_without_configuration_says_how_to_configure_it(server, http, monkeypatch):
    receiver = ReceiverClient(server.url, keep_video=False)
    await receiver.connect(http)
    try:
        status, body = await post(http, f"{server.url}/human", {"sessionid": receiver.sessionid, "text": "Hi", "type": "chat"})
        assert status == 503 and "--llm-base-url" in body["msg"]
    finally:
        await receiver.close()
