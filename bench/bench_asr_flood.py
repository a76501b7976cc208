"""Recognition shared fairly: a WebRTC talker's transcripts while /api/asr sockets flood the recogniser,
and how soon idle sockets are closed, against a real server process.

    python -m bench.bench_asr_flood [--sockets 8] [--flood-seconds 30]

The sockets come from two loopback addresses (the per-address cap is 4) and send
`--flood-seconds` utterances back to back; the talker (an aiortc client in echo mode)
speaks three sentences. For each: end of the user's turn -> final transcript, and the
flood utterances transcribed meanwhile. Then four sockets connect and send nothing:
seconds until the server closes them. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from avatars.prepare import write_avatar
from bench.common import loopback_only
from tests.conftest import TEST_AVATAR_ID, synthetic_frames
from tests.support.attacks import flood_asr_socket, transcribed
from tests.support.rtc_client import ReceiverClient
from tests.support.server_process import ServerProcess
from tests.support.speech_helpers import channel_events
from tests.support.speech_sender import SpeechTrack, speak, word_error_rate

ADDRESSES = ("127.0.0.1", "127.0.0.2")
SENTENCES = ["Please tell me the weather for tomorrow morning.",
             "I would like to visit the museum on Sunday.",
             "The train leaves the station at seven o'clock."]
MAX_FLOOD_UTTERANCES = 40  # per socket
TRANSCRIPT_WAIT_S = 120.0
IDLE_SOCKETS = 4


async def flood(client: aiohttp.ClientSession, url: str, pcm: bytes, stop: asyncio.Event, replies: list) -> None:
    try:
        await flood_asr_socket(client, url, pcm, stop, replies, MAX_FLOOD_UTTERANCES, TRANSCRIPT_WAIT_S)
    except aiohttp.WSServerHandshakeError as exc:
        replies.append({"error": f"refused {exc.status}"})


async def wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def talker_under_flood(http: aiohttp.ClientSession, url: str, sockets: int, flood_s: float) -> None:
    words = np.concatenate([speak(" ".join(SENTENCES)), np.zeros(8000, np.float32)])
    pcm = (np.clip(np.resize(words, int(flood_s * 16000)), -1, 1) * 32767).astype("<i2").tobytes()
    stop, done = asyncio.Event(), []
    clients = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) for address in ADDRESSES]
    tasks = [asyncio.create_task(flood(clients[i % len(clients)], url, pcm, stop, done)) for i in range(sockets)]
    track = SpeechTrack()
    talker = ReceiverClient(url, keep_video=False, offer_fields={"echo_cancellation": True})  # no loudspeaker
    rows = []
    try:
        await talker.connect(http, data_channel=True, uplink=track, listen="echo")
        await talker.wait_for(video_frames=5, audio_frames=10)
        await wait(lambda: transcribed(done) > 0, TRANSCRIPT_WAIT_S)  # the model is loaded

        def count(kind: str, final: bool | None = None) -> int:
            return sum(1 for e in channel_events(talker) if e["type"] == kind and (final is None or e["final"] == final))

        for index, sentence in enumerate(SENTENCES):
            track.play(speak(sentence))
            await wait(lambda: count("user_end") > index, 30)
            ended, before = time.monotonic(), transcribed(done)
            heard = await wait(lambda: count("transcript", final=True) > index, TRANSCRIPT_WAIT_S)
            texts = [e["text"] for e in channel_events(talker) if e["type"] == "transcript" and e["final"]]
            rows.append((sentence, (time.monotonic() - ended) * 1000 if heard else None,
                         transcribed(done) - before,
                         word_error_rate(sentence, texts[index]) if heard else None))
    finally:
        stop.set()
        await talker.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()
    refused = [reply["error"] for reply in done if str(reply.get("error", "")).startswith("refused")]
    print(f"{sockets} sockets sending {flood_s:.0f} s utterances ({len(refused)} refused: {sorted(set(refused))}); "
          f"flood utterances transcribed: {transcribed(done)}\n")
    print("| talker's sentence | turn end → transcript (ms) | flood utterances meanwhile | WER |")
    print("|---|---|---|---|")
    for sentence, ms, meanwhile, wer in rows:
        print(f"| {sentence} | {'none' if ms is None else f'{ms:.0f}'} | {meanwhile} | "
              f"{'—' if wer is None else f'{wer:.2f}'} |")
    waits = [ms for _, ms, _, _ in rows if ms is not None]
    if waits:
        print(f"\n{len(waits)} of {len(rows)} transcripts; median {statistics.median(waits):.0f} ms, "
              f"fastest {min(waits):.0f} ms")


async def connect(http: aiohttp.ClientSession, url: str, within_s: float) -> aiohttp.ClientWebSocketResponse:
    """A socket, once the flood's sockets have given their places back (the server sees them hang up)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await http.ws_connect(f"{url}/api/asr")
        except aiohttp.WSServerHandshakeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def idle_sockets(http: aiohttp.ClientSession, url: str) -> None:
    started = time.monotonic()
    sockets = [await connect(http, url, 30) for _ in range(IDLE_SOCKETS)]
    print(f"\nthe flood's places were free again {time.monotonic() - started:.1f} s after its clients left")
    opened = time.monotonic()
    closed = []
    for socket in sockets:
        await socket.receive(timeout=120)
        closed.append(time.monotonic() - opened)
        await socket.close()
    print(f"\n{IDLE_SOCKETS} idle sockets closed by the server after {min(closed):.1f}–{max(closed):.1f} s "
          f"(close code {sockets[0].close_code})")


async def run(sockets: int, flood_s: float) -> None:
    loopback_only()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_avatar(data / "avatars" / TEST_AVATAR_ID, synthetic_frames(), {"source": "synthetic", "fps": 25})
        server = ServerProcess(data, Path(tmp) / "server.log", "--tts", "espeak", "--max_session", "4")
        try:
            async with aiohttp.ClientSession() as http:
                await server.wait_ready(http)
                await talker_under_flood(http, server.url, sockets, flood_s)
                await idle_sockets(http, server.url)
                print(f"\nserver alive: {server.alive()}; tracebacks in its log: {server.log().count('Traceback')}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=8)
    parser.add_argument("--flood-seconds", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(run(args.sockets, args.flood_seconds))


if __name__ == "__main__":
    main()
