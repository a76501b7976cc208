"""llm.py against a local OpenAI-compatible streaming server, through the real openai client."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from llm import (
    NOT_CONFIGURED,
    ChatHistory,
    Conversation,
    LLMClient,
    LLMError,
    LLMErrorKind,
    LLMSettings,
)
from tests.support.llm_server import MODEL, Script

TIMEOUT = 0.5  # seconds; the openai client must give up fast in tests
WAIT = 5.0  # bound on every wait for the server


def settings_for(base_url: str, **options) -> LLMSettings:
    options.setdefault("timeout", TIMEOUT)
    return LLMSettings(base_url=base_url, model=MODEL, api_key="sk-test", max_retries=0, **options)


@pytest.fixture
async def client(llm_server):
    client = LLMClient(settings_for(llm_server.base_url))
    yield client
    await client.close()


async def collect(conversation: Conversation, text: str) -> list[str]:
    return [sentence async for sentence in conversation.reply(text)]


def speak_all(conversation: Conversation, sentences: list[str]) -> None:
    for sentence in sentences:
        conversation.mark_spoken(sentence)


def start_reply(conversation: Conversation, tag: object | None = None) -> tuple[asyncio.Task, list[str], asyncio.Event]:
    """Consume a reply in a task: (task, sentences so far, set at the first sentence)."""
    got: list[str] = []
    first = asyncio.Event()

    async def consume():
        async for sentence in conversation.reply("hi", tag=tag):
            got.append(sentence)
            first.set()

    return asyncio.create_task(consume()), got, first


async def test_sentences_arrive_in_order(llm_server, client):
    llm_server.queue(Script(deltas=["Hello", " there. How", " are you? I am", " fine", ". 再见！"]))
    sentences = await collect(Conversation(client), "hi")
    assert sentences == ["Hello there.", "How are you?", "I am fine.", "再见！"]
    body = llm_server.exchanges[0].body
    assert body["model"] == MODEL and body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "hi"
    assert llm_server.exchanges[0].headers["Authorization"] == "Bearer sk-test"


async def test_first_sentence_arrives_before_the_stream_ends(llm_server, client):
    llm_server.queue(Script(deltas=["First one.", " Second", " one.", " Third one."], delay=0.2))
    conversation = Conversation(client)
    replies = conversation.reply("hi")
    first = await asyncio.wait_for(anext(replies), WAIT)
    assert first == "First one."
    exchange = llm_server.exchanges[0]
    assert exchange.finished is None and exchange.sent_deltas < 4
    assert [s async for s in replies] == ["Second one.", "Third one."]
    assert exchange.finished is not None


async def test_cancelling_the_reply_task_closes_the_upstream_request(llm_server, client):
    llm_server.queue(Script(deltas=["One. "] + ["more "] * 50, delay=0.1))
    conversation = Conversation(client)
    task, got, first = start_reply(conversation)
    await asyncio.wait_for(first.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(llm_server.disconnected.wait(), WAIT)
    exchange = llm_server.exchanges[0]
    assert exchange.disconnected is not None and exchange.finished is None
    assert exchange.sent_deltas < 51
    assert got == ["One."]


async def test_closing_the_generator_early_closes_the_upstream_request(llm_server, client):
    llm_server.queue(Script(deltas=["One. ", "Two. "] + ["more "] * 50, delay=0.1))
    conversation = Conversation(client)
    async with contextlib.aclosing(conversation.reply("hi")) as replies:
        async for sentence in replies:
            assert sentence == "One."
            break
    await asyncio.wait_for(llm_server.disconnected.wait(), WAIT)
    assert llm_server.exchanges[0].finished is None


async def test_interrupt_stops_the_reply_and_closes_the_stream(llm_server, client):
    llm_server.queue(Script(deltas=["One. ", "Two. ", "Three. "] + ["more. "] * 30, delay=0.1))
    conversation = Conversation(client)
    got = []
    async for sentence in conversation.reply("hi"):
        got.append(sentence)
        if sentence == "Two.":
            conversation.interrupt()
    assert got == ["One.", "Two."]  # no sentence after the interrupt
    await asyncio.wait_for(llm_server.disconnected.wait(), WAIT)


async def test_interrupt_closes_a_stalled_stream_at_once(llm_server):
    client = LLMClient(settings_for(llm_server.base_url, timeout=30))
    llm_server.queue(Script(deltas=["One. ", "Two. "], stall_after=1))
    conversation = Conversation(client)
    task, got, first = start_reply(conversation)
    await asyncio.wait_for(first.wait(), WAIT)
    conversation.interrupt()  # the server sends nothing more; the reply must not wait for it
    await asyncio.wait_for(task, WAIT)  # ends quietly
    await asyncio.wait_for(llm_server.disconnected.wait(), WAIT)
    assert got == ["One."]
    await client.close()


async def test_history_keeps_what_was_spoken(llm_server, client):
    llm_server.queue(
        Script(deltas=["Paris is the capital. ", "It is big."]),
        Script(deltas=["One. ", "Two. ", "Three."]),
        Script(deltas=["Nothing heard."]),
        Script(deltas=["Ok."]),
    )
    conversation = Conversation(client)
    speak_all(conversation, await collect(conversation, "capital of France?"))

    # Interrupted after one sentence was heard: only that one stays.
    sentences = await collect(conversation, "count")
    conversation.mark_spoken(sentences[0])
    conversation.interrupt()

    # Interrupted before anything was heard: the question stays, merged with the next one.
    await collect(conversation, "say something")
    conversation.interrupt()

    await collect(conversation, "again")
    messages = llm_server.exchanges[3].body["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "capital of France?"),
        ("assistant", "Paris is the capital. It is big."),
        ("user", "count"),
        ("assistant", "One."),
        ("user", "say something\nagain"),
    ]


async def test_a_reply_still_playing_counts_as_said(llm_server, client):
    llm_server.queue(Script(deltas=["Hi. ", "Hello."]), Script(deltas=["Ok."]))
    conversation = Conversation(client)
    await collect(conversation, "one")  # queued for TTS, not played yet, not interrupted
    await collect(conversation, "two")
    messages = llm_server.exchanges[1].body["messages"]
    assert messages[2] == {"role": "assistant", "content": "Hi. Hello."}


async def test_history_is_capped_by_turns_and_characters(llm_server):
    client = LLMClient(settings_for(llm_server.base_url, max_history_turns=2))
    llm_server.default = Script(deltas=["Answer."])
    conversation = Conversation(client)
    for index in range(5):
        speak_all(conversation, await collect(conversation, f"question {index}"))
    users = [m["content"] for m in llm_server.exchanges[-1].body["messages"] if m["role"] == "user"]
    assert users == ["question 2", "question 3", "question 4"]

    history = ChatHistory(max_turns=10, max_chars=40)
    for index in range(5):
        turn = history.start(f"question number {index}")  # 17 characters
        turn.generated, turn.spoken = ["Fine."], 1
    history.start("x" * 100)
    messages = history.messages("system")
    assert [m["content"] for m in messages] == ["system", "x" * 100]  # the newest always goes
    history.start("last")
    assert [m["content"] for m in history.messages("system")][1:] == ["last"]  # over the cap: dropped
    await client.close()


@pytest.mark.parametrize(
    "status,kind,words",
    [
        (401, LLMErrorKind.AUTH, "rejected the API key (401): set OPENAI_API_KEY"),
        (403, LLMErrorKind.AUTH, "(403)"),
        (404, LLMErrorKind.NOT_FOUND, "--llm-model"),
        (429, LLMErrorKind.RATE_LIMIT, "(429)"),
        (500, LLMErrorKind.SERVER, "(500)"),
    ],
)
async def test_http_errors_become_clear_llm_errors(llm_server, client, status, kind, words):
    llm_server.queue(Script(status=status))
    with pytest.raises(LLMError) as caught:
        await collect(Conversation(client), "hi")
    assert caught.value.kind is kind
    assert words in str(caught.value)
    assert len(llm_server.exchanges) == 1  # no retries


async def test_a_server_that_does_not_answer_times_out(llm_server, client):
    llm_server.queue(Script(headers_delay=30))
    with pytest.raises(LLMError) as caught:
        await collect(Conversation(client), "hi")
    assert caught.value.kind is LLMErrorKind.TIMEOUT
    assert "--llm-timeout" in str(caught.value)


async def test_a_stream_that_stalls_times_out_and_keeps_what_was_said(llm_server, client):
    llm_server.queue(Script(deltas=["One. ", "Two. "], stall_after=1))
    conversation = Conversation(client)
    got = []
    with pytest.raises(LLMError) as caught:
        async for sentence in conversation.reply("hi"):
            got.append(sentence)
    assert caught.value.kind is LLMErrorKind.TIMEOUT
    assert got == ["One."]


async def test_an_unreachable_endpoint_is_reported():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    client = LLMClient(settings_for(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(LLMError) as caught:
        await collect(Conversation(client), "hi")
    assert caught.value.kind is LLMErrorKind.UNREACHABLE
    assert f"127.0.0.1:{port}" in str(caught.value) and "--llm-base-url" in str(caught.value)
    await client.close()


@pytest.mark.parametrize("after", [0, 2])
async def test_a_malformed_stream_is_reported(llm_server, client, after):
    llm_server.queue(Script(deltas=["One. ", "Two. "], malformed_after=after))
    with pytest.raises(LLMError) as caught:
        await collect(Conversation(client), "hi")
    assert caught.value.kind is LLMErrorKind.MALFORMED
    assert "OpenAI-compatible" in str(caught.value)


async def test_chat_without_configuration_says_how_to_configure_it():
    settings = LLMSettings.from_args(None, None, environ={})
    client = LLMClient(settings)
    assert not client.configured
    with pytest.raises(LLMError) as caught:
        await collect(Conversation(client), "hi")
    assert caught.value.kind is LLMErrorKind.NOT_CONFIGURED
    assert str(caught.value) == NOT_CONFIGURED
    assert "--llm-base-url" in NOT_CONFIGURED and "OPENAI_API_KEY" in NOT_CONFIGURED


def test_settings_take_the_key_from_the_environment(tmp_path):
    env = {"OPENAI_API_KEY": "sk-openai", "DASHSCOPE_API_KEY": "sk-dash"}
    openai_only = LLMSettings.from_args(None, None, environ={"OPENAI_API_KEY": "sk-openai"})
    assert openai_only.base_url == "https://api.openai.com/v1" and openai_only.model
    assert openai_only.api_key == "sk-openai" and openai_only.problem() is None

    dash = LLMSettings.from_args("https://dashscope.aliyuncs.com/compatible-mode/v1", None, environ=env)
    assert dash.api_key == "sk-dash" and dash.model == "qwen-plus" and dash.key_env == "DASHSCOPE_API_KEY"

    local = LLMSettings.from_args("http://127.0.0.1:11434/v1", None, environ={})
    assert local.api_key is None and "--llm-model" in local.problem()

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You are a pirate.\n", encoding="utf-8")
    assert LLMSettings.from_args(None, None, str(prompt), environ={}).system_prompt == "You are a pirate."
    assert LLMSettings.from_args(None, None, "Be brief.", environ={}).system_prompt == "Be brief."
    with pytest.raises(LLMError, match="does not exist"):
        LLMSettings.from_args(None, None, str(tmp_path / "missing.txt"), environ={})


async def test_the_system_prompt_is_sent(llm_server):
    client = LLMClient(settings_for(llm_server.base_url, system_prompt="You are a pirate."))
    await collect(Conversation(client), "hi")
    assert llm_server.exchanges[0].body["messages"][0] == {"role": "system", "content": "You are a pirate."}
    await client.close()


async def test_a_retracted_reply_leaves_no_trace_in_the_history(llm_server, client):
    """A reply prepared for a turn the user did not end (issue 18): its question and answer go."""
    llm_server.queue(Script(deltas=["Kept. "]), Script(deltas=["Prepared. ", "More."], stall_after=1),
                     Script(deltas=["Ok."]))
    conversation = Conversation(client)
    speak_all(conversation, await collect(conversation, "first"))
    conversation.retract(object())  # a reply that never started (it waited behind another): nothing goes
    assert [turn.user for turn in conversation.history.turns] == ["first"]
    tag = object()
    task, got, first = start_reply(conversation, tag)
    await asyncio.wait_for(first.wait(), WAIT)
    conversation.retract(tag)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await collect(conversation, "second")
    messages = llm_server.exchanges[2].body["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "first"), ("assistant", "Kept."), ("user", "second")]
    await asyncio.wait_for(llm_server.disconnected.wait(), WAIT)  # the prepared request was closed
