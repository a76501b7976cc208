"""Latency added by llm.py and the network TTS backends, against local fake services.

The services pace their output like a real one (tokens every 20 ms; MP3/PCM in
pieces), so the figures show what the client side adds: how soon the first
sentence / first audio is available compared with waiting for the whole reply.

    python -m bench.bench_llm_tts
"""

from __future__ import annotations

import asyncio
import statistics
import time

import edge_tts.communicate

from llm import Conversation, LLMClient, LLMSettings
from speech.sentences import SentenceAggregator
from tests.support.llm_server import MODEL, FakeLLMServer, Script
from tests.support.tts_servers import EDGE_RATE, PCM_RATE, FakeEdgeService, FakeSpeechServer, encode_mp3, pcm_s16, sine
from tts.edge import EdgeTTS
from tts.openai_speech import OpenAISpeechTTS

RUNS = 5
TOKEN_DELAY_S = 0.02
REPLY = (
    "Sure, here is the plan. First we meet at the station at nine. Then we take the train north, "
    "which takes about two hours. 到了以后我们先吃午饭，然后去看展览。Does that sound good?"
)


def tokens(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def bench_llm() -> None:
    server = FakeLLMServer(Script(deltas=tokens(REPLY), delay=TOKEN_DELAY_S))
    await server.start()
    client = LLMClient(LLMSettings(base_url=server.base_url, model=MODEL, api_key="sk", max_retries=0))
    firsts, totals, counts = [], [], []
    for _ in range(RUNS):
        conversation = Conversation(client)
        started = time.perf_counter()
        first = None
        count = 0
        async for _sentence in conversation.reply("plan?"):
            first = first or time.perf_counter() - started
            count += 1
        firsts.append(first)
        totals.append(time.perf_counter() - started)
        counts.append(count)
    await client.close()
    await server.close()
    print(f"llm: {len(tokens(REPLY))} deltas every {TOKEN_DELAY_S * 1000:.0f} ms, {counts[0]} sentences; "
          f"first sentence {statistics.median(firsts) * 1000:.0f} ms, whole reply {statistics.median(totals) * 1000:.0f} ms "
          f"(median of {RUNS})")


def bench_aggregator() -> None:
    deltas = tokens(REPLY * 50, 3)
    started = time.perf_counter()
    aggregator = SentenceAggregator()
    for delta in deltas:
        aggregator.push(delta)
    aggregator.flush()
    per = (time.perf_counter() - started) / len(deltas)
    print(f"aggregator: {per * 1e6:.1f} us per delta ({len(deltas)} deltas of 3 characters)")


def first_and_total(backend, text: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    first = None
    samples = 0
    for audio in backend.stream(text, lambda: False):
        first = first or time.perf_counter() - started
        samples += len(audio)
    return first, time.perf_counter() - started, samples / 16000


async def bench_tts(monkey_url: list) -> None:
    seconds = 3.0
    edge = FakeEdgeService(encode_mp3(sine(seconds, EDGE_RATE)), piece_bytes=1440, delay=0.05)
    await edge.start()
    monkey_url.append(edge_tts.communicate.WSS_URL)
    edge_tts.communicate.WSS_URL = edge.url
    runs = [await asyncio.to_thread(first_and_total, EdgeTTS(), "Hello") for _ in range(RUNS)]
    edge_tts.communicate.WSS_URL = monkey_url.pop()
    await edge.close()
    print(f"edge (fake service, {seconds:g} s MP3 in 1440-byte pieces every 50 ms): first audio "
          f"{statistics.median(r[0] for r in runs) * 1000:.0f} ms, last {statistics.median(r[1] for r in runs) * 1000:.0f} ms, "
          f"{runs[0][2]:.2f} s of 16 kHz audio")

    speech = FakeSpeechServer(pcm_s16(sine(seconds, PCM_RATE)), piece_bytes=4800, delay=0.05)
    await speech.start()
    backend = OpenAISpeechTTS(speech.base_url, api_key="sk", max_retries=0)
    runs = [await asyncio.to_thread(first_and_total, backend, "Hello") for _ in range(RUNS)]
    backend.close()
    await speech.close()
    print(f"openai speech (fake server, {seconds:g} s PCM in 100 ms pieces every 50 ms): first audio "
          f"{statistics.median(r[0] for r in runs) * 1000:.0f} ms, last {statistics.median(r[1] for r in runs) * 1000:.0f} ms")


async def main() -> None:
    await bench_llm()
    bench_aggregator()
    await bench_tts([])


if __name__ == "__main__":
    asyncio.run(main())
