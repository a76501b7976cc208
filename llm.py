"""Streaming LLM replies, cut into sentences for TTS, with per-session history.

One `LLMClient` per process holds the settings and one `openai.AsyncOpenAI`
(an HTTP connection pool); each session has a `Conversation` owning its
`ChatHistory`. `Conversation.reply(text)` is an async generator of sentences,
each released as soon as it ends. The HTTP stream is read by a task of its own,
so `interrupt()` closes it at once; cancelling the consuming task or closing the
generator closes it too. The session reports playback with `mark_spoken(sentence)`
and `interrupt()`, so after barge-in the history keeps only what was heard.
All methods run on the event loop; one reply at a time per conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import openai

from httpapi import redact_url
from speech.sentences import DEFAULT_MIN_COMMA_CHARS, SentenceAggregator, join_sentences

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
DASHSCOPE_DEFAULT_MODEL = "qwen-plus"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
DASHSCOPE_KEY_ENV = "DASHSCOPE_API_KEY"
NO_KEY = "no-key"  # local OpenAI-compatible servers (Ollama, vLLM) ignore the key, the client needs one
PROMPT_FILE_SUFFIXES = (".txt", ".md")
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly digital human talking with the user by voice. Answer briefly in plain "
    "spoken sentences, in the user's language, without markdown, lists or emoji."
)
NOT_CONFIGURED = (
    "chat is not configured: start the server with --llm-base-url/--llm-model and set " + OPENAI_KEY_ENV
)


class LLMErrorKind(enum.Enum):
    NOT_CONFIGURED = "not_configured"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    MALFORMED = "malformed"
    SERVER = "server"


class LLMError(Exception):
    """A chat reply failed; `str(error)` tells the user what to do, `kind` says which case it was."""

    def __init__(self, message: str, kind: LLMErrorKind):
        super().__init__(message)
        self.kind = kind


def is_dashscope(base_url: str | None) -> bool:
    return bool(base_url) and "dashscope" in (urlparse(base_url).hostname or "")


def read_system_prompt(value: str | None) -> str:
    """`value` is the prompt itself, or a path to a file holding it."""
    if not value:
        return DEFAULT_SYSTEM_PROMPT
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    if value.endswith(PROMPT_FILE_SUFFIXES) and not any(c.isspace() for c in value):
        raise LLMError(f"system prompt file {value} does not exist: fix --llm-system-prompt", LLMErrorKind.NOT_CONFIGURED)
    return value


@dataclass(frozen=True)
class LLMSettings:
    base_url: str | None = None
    model: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    api_key: str | None = None
    timeout: float = 30.0  # seconds for connecting and between streamed chunks
    max_retries: int = 1
    max_history_turns: int = 10  # earlier exchanges sent with each request
    max_history_chars: int = 6000
    min_comma_chars: int = DEFAULT_MIN_COMMA_CHARS

    @classmethod
    def from_args(
        cls,
        base_url: str | None,
        model: str | None,
        system_prompt: str | None = None,
        environ: Mapping[str, str] = os.environ,
        **options,
    ) -> LLMSettings:
        """Settings from CLI values; the key comes from the environment, never from the command line.

        With only OPENAI_API_KEY set, OpenAI's endpoint is used; with a DashScope base URL,
        DASHSCOPE_API_KEY is read first. A base URL without a key (a local server) is fine.
        """
        dashscope = is_dashscope(base_url)
        api_key = (environ.get(DASHSCOPE_KEY_ENV) if dashscope else None) or environ.get(OPENAI_KEY_ENV) or None
        if not base_url and api_key:
            base_url = OPENAI_BASE_URL
        if base_url and not model:
            model = DASHSCOPE_DEFAULT_MODEL if dashscope else OPENAI_DEFAULT_MODEL if base_url == OPENAI_BASE_URL else None
        return cls(base_url=base_url, model=model, system_prompt=read_system_prompt(system_prompt), api_key=api_key, **options)

    @property
    def key_env(self) -> str:
        return DASHSCOPE_KEY_ENV if is_dashscope(self.base_url) else OPENAI_KEY_ENV

    def problem(self) -> str | None:
        """Why chat cannot work with these settings, or None."""
        if not self.base_url:
            return NOT_CONFIGURED
        if not self.model:
            return f"chat needs a model for {self.base_url}: start the server with --llm-model"
        return None


@dataclass
class Turn:
    """One exchange. Sentences are appended as generated and counted as spoken when played."""

    user: str
    image: str | None = None  # sent with this turn's request only, never with later ones
    generated: list[str] = field(default_factory=list)
    spoken: int = 0
    interrupted: bool = False
    tag: object | None = None  # the caller's handle on the exchange (a reply's gate), for `retract`

    @property
    def pending(self) -> bool:
        return not self.interrupted and self.spoken < len(self.generated)

    @property
    def assistant(self) -> str:
        """What the user heard, or will hear unless interrupted."""
        return join_sentences(self.generated[: self.spoken] if self.interrupted else self.generated)


class ChatHistory:
    """A session's exchanges, capped by turns and characters (oldest go first)."""

    def __init__(self, max_turns: int = 10, max_chars: int = 6000):
        self.max_chars = max_chars
        self.turns: deque[Turn] = deque(maxlen=max_turns + 1)  # + the exchange in progress

    def start(self, user_text: str, image: str | None = None, tag: object | None = None) -> Turn:
        turn = Turn(user_text, image, tag=tag)
        self.turns.append(turn)
        return turn

    def messages(self, system_prompt: str) -> list[dict[str, Any]]:
        """Chat messages for the newest turn: kept turns within the character cap, oldest first.

        A turn interrupted before anything was heard keeps its user text, merged into the
        next user message, so roles still alternate.
        """
        kept: list[Turn] = []
        chars = 0
        for turn in reversed(self.turns):
            chars += len(turn.user) + len(turn.assistant)
            if kept and chars > self.max_chars:
                break
            kept.append(turn)
        messages = [{"role": "system", "content": system_prompt}]
        unanswered: list[str] = []
        for turn in reversed(kept):
            unanswered.append(turn.user)
            if turn.assistant and turn is not self.turns[-1]:
                messages.append({"role": "user", "content": "\n".join(unanswered)})
                messages.append({"role": "assistant", "content": turn.assistant})
                unanswered = []
        content: Any = "\n".join(unanswered)
        image = self.turns[-1].image if self.turns else None
        if image:
            content = [{"type": "text", "text": content}, {"type": "image_url", "image_url": {"url": image}}]
        messages.append({"role": "user", "content": content})
        return messages


class LLMClient:
    """Process-wide: settings plus one pooled `AsyncOpenAI` (absent when chat is not configured)."""

    def __init__(self, settings: LLMSettings):
        self.settings = settings
        self._openai: openai.AsyncOpenAI | None = None
        self.on_first_token: Callable[[float], None] | None = None  # seconds to the first delta (metrics)
        if settings.problem() is None:
            self._openai = openai.AsyncOpenAI(
                api_key=settings.api_key or NO_KEY,
                base_url=settings.base_url,
                timeout=settings.timeout,
                max_retries=settings.max_retries,
            )

    @property
    def configured(self) -> bool:
        return self._openai is not None

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """Text deltas of one streamed completion; every failure becomes an `LLMError`."""
        if self._openai is None:
            raise LLMError(self.settings.problem() or NOT_CONFIGURED, LLMErrorKind.NOT_CONFIGURED)
        requested: float | None = time.perf_counter()
        try:
            response = await self._openai.chat.completions.create(
                model=self.settings.model, messages=messages, stream=True
            )
            async with response:
                async for chunk in response:
                    choices = getattr(chunk, "choices", None)
                    if not isinstance(choices, list):
                        raise self._malformed()
                    for choice in choices:
                        content = getattr(getattr(choice, "delta", None), "content", None)
                        if content:
                            if requested is not None and self.on_first_token is not None:
                                self.on_first_token(time.perf_counter() - requested)
                            requested = None
                            yield content
        except openai.APIError as error:
            raise self._translate(error) from error
        except (ValueError, TypeError, AttributeError) as error:  # undecodable SSE data or JSON of the wrong shape
            raise self._malformed() from error

    def _malformed(self) -> LLMError:
        return LLMError(
            f"the LLM at {self.settings.base_url} sent a malformed stream: check that --llm-base-url "
            "points at an OpenAI-compatible API (usually ending in /v1)",
            LLMErrorKind.MALFORMED,
        )

    def _translate(self, error: openai.APIError) -> LLMError:
        s = self.settings
        if isinstance(error, openai.AuthenticationError):
            return LLMError(f"LLM rejected the API key (401): set {s.key_env}", LLMErrorKind.AUTH)
        if isinstance(error, openai.PermissionDeniedError):
            return LLMError(f"LLM refused the request (403): check that the key in {s.key_env} may use model {s.model}", LLMErrorKind.AUTH)
        if isinstance(error, openai.NotFoundError):
            return LLMError(f"LLM endpoint or model not found (404): check --llm-base-url ({s.base_url}) and --llm-model ({s.model})", LLMErrorKind.NOT_FOUND)
        if isinstance(error, openai.RateLimitError):
            return LLMError("LLM rate limit or quota exceeded (429): wait a moment and retry, or check the account's quota", LLMErrorKind.RATE_LIMIT)
        if isinstance(error, openai.APITimeoutError):
            return LLMError(f"LLM did not answer within {s.timeout:g} s: check the endpoint's load or raise --llm-timeout", LLMErrorKind.TIMEOUT)
        if isinstance(error, openai.APIConnectionError):
            return LLMError(f"could not reach the LLM at {s.base_url}: check --llm-base-url and the network", LLMErrorKind.UNREACHABLE)
        if isinstance(error, openai.APIResponseValidationError):
            return self._malformed()
        status = getattr(error, "status_code", None)
        where = f" ({status})" if status else ""
        return LLMError(f"LLM request failed{where}: {error.message}", LLMErrorKind.SERVER)

    async def close(self) -> None:
        if self._openai is not None:
            await self._openai.close()


class Conversation:
    """One session's chat: replies as sentences, history of what was actually heard."""

    def __init__(self, client: LLMClient, history: ChatHistory | None = None):
        self.client = client
        settings = client.settings
        self.history = history or ChatHistory(settings.max_history_turns, settings.max_history_chars)
        self._readers: set[asyncio.Task] = set()  # HTTP streams of replies in progress
        self._current: Turn | None = None  # the exchange of the newest reply

    async def reply(self, user_text: str, image: str | None = None,
                    first_delta: Callable[[], None] | None = None, tag: object | None = None) -> AsyncIterator[str]:
        """Sentences of the answer, each as soon as it is complete (`first_delta()` at the first text).

        Ends quietly, without another sentence, once `interrupt()` is called. Cancelling the
        task that iterates it, or closing the generator, also closes the HTTP stream.
        """
        if not self.client.configured:
            raise LLMError(self.client.settings.problem() or NOT_CONFIGURED, LLMErrorKind.NOT_CONFIGURED)
        turn = self._current = self.history.start(user_text, image, tag)
        aggregator = SentenceAggregator(self.client.settings.min_comma_chars)
        deltas: asyncio.Queue[str | LLMError | None] = asyncio.Queue()  # holds at most one reply
        reader = asyncio.create_task(self._read_stream(self.history.messages(self.client.settings.system_prompt), deltas))
        self._readers.add(reader)
        started = time.perf_counter()
        try:
            while (delta := await deltas.get()) is not None:
                if isinstance(delta, LLMError):
                    raise delta
                if first_delta is not None:
                    first_delta()
                    first_delta = None
                for sentence in aggregator.push(delta):
                    if turn.interrupted:
                        return
                    if not turn.generated:
                        logger.info("llm: first sentence after %.0f ms", 1000 * (time.perf_counter() - started))
                    turn.generated.append(sentence)
                    yield sentence
            tail = aggregator.flush()
            if tail and not turn.interrupted:
                turn.generated.append(tail)
                yield tail
        except BaseException:
            turn.interrupted = True  # cancelled, closed early or failed: keep only what gets heard
            raise
        finally:
            self._readers.discard(reader)
            if not reader.done():
                reader.cancel()
                await asyncio.wait([reader])

    async def _read_stream(self, messages: list[dict[str, str]], deltas: asyncio.Queue[str | LLMError | None]) -> None:
        """Reads the HTTP stream in its own task, so `interrupt()` can close it at once."""
        try:
            async with contextlib.aclosing(self.client.stream(messages)) as stream:
                async for delta in stream:
                    deltas.put_nowait(delta)
        except LLMError as error:
            deltas.put_nowait(error)
        except Exception as error:
            logger.exception("llm: reading the stream failed")
            deltas.put_nowait(LLMError(f"chat failed unexpectedly ({error!r}): see the server log", LLMErrorKind.SERVER))
        finally:
            deltas.put_nowait(None)

    def mark_spoken(self, sentence: str) -> None:
        """The audio of `sentence` was played out in full (sentences play in order)."""
        for turn in self.history.turns:
            if turn.spoken < len(turn.generated) and turn.generated[turn.spoken] == sentence:
                turn.spoken += 1
                return
        logger.debug("llm: spoken sentence not awaited by any turn: %r", sentence)

    def retract(self, tag: object) -> None:
        """The reply tagged `tag` (`reply(tag=...)`) answered a turn the user did not end, or went on
        with: its exchange (the user's words included) leaves the history, and if it is the reply in
        progress its HTTP stream is closed. Nothing happens if it never started."""
        if tag is None:
            return
        for turn in [turn for turn in self.history.turns if turn.tag is tag]:
            self.history.turns.remove(turn)
        if self._current is not None and self._current.tag is tag:
            self._current = None
            for reader in self._readers:
                reader.cancel()

    def interrupt(self) -> None:
        """Playback was cut: sentences not yet heard leave the history; a running reply ends
        now (its HTTP stream is closed) without another sentence."""
        for turn in self.history.turns:
            if turn.spoken < len(turn.generated) or turn is self.history.turns[-1]:
                turn.interrupted = True
        for reader in self._readers:
            reader.cancel()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm-base-url", dest="llm_base_url", default=None,
                        help="OpenAI-compatible chat endpoint (OpenAI, Ollama, vLLM, DashScope...); key from "
                             "OPENAI_API_KEY or DASHSCOPE_API_KEY")
    parser.add_argument("--llm-model", dest="llm_model", default=None)
    parser.add_argument("--llm-system-prompt", dest="llm_system_prompt", default=None,
                        help="system prompt text, or a path to a .txt/.md file holding it")


def settings_from_args(args: argparse.Namespace) -> LLMSettings:
    settings = LLMSettings.from_args(args.llm_base_url, args.llm_model, args.llm_system_prompt)
    logger.info("chat: %s", settings.problem() or f"{settings.model} at {redact_url(settings.base_url)}")
    return settings
