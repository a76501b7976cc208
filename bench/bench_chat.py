"""Chat: first LLM token on the wire from the LLM -> first voiced audio frame at the listener.

A local OpenAI-compatible server streams a reply (tokens every 30 ms, like a
fast hosted model); the real openai client, sentence aggregation, espeak, the
engine and WebRTC do the rest. The floor (the server handing a voiced chunk to
aiortc -> the listener receiving it) is measured on the same frames.

    python -m bench.bench_chat --trials 20
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from bench.common import speech_bench_parser, start_server, summary_ms

import app as server_app
from bench_latency import record_handover
from tests.support.llm_server import FakeLLMServer, Script
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import wait_voiced

REPLY = ["Sure", ",", " here", " is", " my", " answer", ".", " It", " has", " a", " second", " sentence", " too", "."]


async def run(args) -> dict:
    llm = FakeLLMServer()
    base_url = await llm.start()
    application, runner, url = await start_server(
        "--model", args.model, "--tts", "espeak", "--avatar_id", args.avatar,
        "--llm-base-url", base_url, "--llm-model", "bench")
    results = {"token_to_voice": [], "floor": []}
    async with aiohttp.ClientSession() as http:
        client = ReceiverClient(url, keep_video=False)
        await client.connect(http)
        await client.wait_for(video_frames=25, audio_frames=50)
        session = application[server_app.CONTEXT_KEY].sessions.get(client.sessionid)
        handed = record_handover(session)
        for _ in range(args.trials):
            llm.queue(Script(deltas=REPLY, delay=0.03))
            since, since_handed = len(client.audio), len(handed)
            async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "type": "chat",
                                                       "text": "Question?"}) as r:
                assert r.status == 200
            first = await wait_voiced(client, since)
            first_handed = next(t for t, voiced in handed[since_handed:] if voiced)
            token = llm.exchanges[-1].first_delta_at
            results["token_to_voice"].append(first.arrival - token)
            results["floor"].append(first.arrival - first_handed)
            await asyncio.sleep(3.5)
            async with http.post(f"{url}/interrupt_talk", json={"sessionid": client.sessionid}) as r:
                assert r.status == 200
            await asyncio.sleep(0.3)
        await client.close()
    await runner.cleanup()
    await llm.close()
    return results


def main() -> None:
    parser = speech_bench_parser(__doc__)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(args))
    print(f"engine {args.model}, avatar {args.avatar}, espeak, tokens every 30 ms, first sentence 7 tokens")
    print(f"first LLM token -> first voiced frame: {summary_ms(results['token_to_voice'])}; "
          f"floor {summary_ms(results['floor'])}")


if __name__ == "__main__":
    main()
