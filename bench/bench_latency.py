"""Speech latency at a loopback aiortc listener, beside the floor of the same path.

(a) POST /human -> first voiced audio frame received;
(b) POST /interrupt_talk -> last voiced audio frame received.
The floor is the part no engine can remove: the time from the server handing a
voiced chunk to aiortc (encode, send, the listener's jitter buffer and decode)
to the listener receiving it, measured on the same chunks. Engine latency is
then (a) - floor: text -> TTS -> engine -> the wire.

    python -m bench.bench_latency --trials 20 [--avatar default] [--model lite]
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import numpy as np

from bench.common import speech_bench_parser, ROOT, start_server, summary_ms

import app as server_app
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import VOICED_LEVEL, is_voiced, wait_voiced

SENTENCES = ["Hello, how are you today?", "The weather is lovely this morning.", "Let me tell you a story."]
LONG_TEXT = "This is a long answer that goes on for a while so that we can interrupt it in the middle. " * 4


def record_handover(session) -> list[tuple[float, bool]]:
    """Wrap the session's audio track to log (time, voiced) as each chunk goes to aiortc."""
    log: list[tuple[float, bool]] = []
    track = session.player.audio
    original = track.recv

    async def recv():
        frame = await original()
        log.append((time.monotonic(), int(np.abs(frame.to_ndarray()).max()) > VOICED_LEVEL))
        return frame

    track.recv = recv
    return log


async def run(args) -> dict:
    application, runner, url = await start_server(
        "--model", args.model, "--tts", args.tts, "--avatar_id", args.avatar, "--max_session", "4")
    results = {"speak": [], "speak_floor": [], "interrupt": [], "interrupt_floor": []}
    async with aiohttp.ClientSession() as http:
        client = ReceiverClient(url, keep_video=False)
        await client.connect(http)
        await client.wait_for(video_frames=25, audio_frames=50)
        session = application[server_app.CONTEXT_KEY].sessions.get(client.sessionid)
        handed = record_handover(session)
        await asyncio.sleep(1.0)
        for trial in range(args.trials):
            # (a) text -> first voiced frame at the listener
            since, since_handed = len(client.audio), len(handed)
            posted = time.monotonic()
            async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "type": "echo",
                                                       "text": SENTENCES[trial % len(SENTENCES)]}) as r:
                assert r.status == 200
            first = await wait_voiced(client, since)
            first_handed = next(t for t, voiced in handed[since_handed:] if voiced)
            results["speak"].append(first.arrival - posted)
            results["speak_floor"].append(first.arrival - first_handed)
            await asyncio.sleep(2.5)

            # (b) interrupt -> last voiced frame at the listener
            async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "type": "echo",
                                                       "text": LONG_TEXT}) as r:
                assert r.status == 200
            await wait_voiced(client, len(client.audio))
            await asyncio.sleep(0.5 + (trial % 5) * 0.013)  # land at varied points within a frame
            posted = time.monotonic()
            async with http.post(f"{url}/interrupt_talk", json={"sessionid": client.sessionid}) as r:
                assert r.status == 200
            await asyncio.sleep(1.0)
            last = [f for f in client.audio if is_voiced(f)][-1]
            last_handed = [t for t, voiced in handed if voiced][-1]
            results["interrupt"].append(last.arrival - posted)
            results["interrupt_floor"].append(last.arrival - last_handed)
            await asyncio.sleep(0.5)
        stats = session.player.stats
        await client.close()
    await runner.cleanup()
    results["late_ticks"] = stats.late_ticks
    results["ticks"] = stats.ticks
    return results


def main() -> None:
    parser = speech_bench_parser(__doc__)
    parser.add_argument("--json", help="also write raw results here")
    parser.add_argument("--tts", default="espeak", choices=["espeak", "piper"], help="the server's TTS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = asyncio.run(run(args))
    print(f"engine {args.model}, avatar {args.avatar}, {args.trials} trials, {args.tts}")
    print(f"(a) /human -> first voiced frame: {summary_ms(results['speak'])}; floor {summary_ms(results['speak_floor'])}")
    print(f"(b) /interrupt_talk -> last voiced frame: {summary_ms(results['interrupt'])}; floor {summary_ms(results['interrupt_floor'])}")
    print(f"late ticks: {results['late_ticks']} of {results['ticks']}")
    if args.json:
        (ROOT / args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
