"""The hardening issues' reproductions against a real server process: its RSS and open files
before and after each attack, the newer surfaces' attacks (upload bombs, a camera nobody reads,
avatar switching, slow headers) with the peak RSS over the baseline, then connect/close cycles
(threads, fds, RSS at 0/25/50/100).

    python -m bench.bench_hardening [--cycles 100]

Loopback only; every loop is bounded. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp

from bench.common import loopback_only

from avatars.prepare import write_avatar
import numpy as np

from tests.support.attacks import (
    Attacker, NoiseCamera, ScriptedSpeechServer, avatar_form, black_clip, bomb_png, json_head, multipart_upload, raw_request,
    silent_flac, wav_declaring,
)
from tests.conftest import TEST_AVATAR_ID, synthetic_frames
from tests.support.rtc_client import ReceiverClient
from tests.support.server_process import ServerProcess
from tests.support.speech_sender import SpeechTrack

BIG_AVATARS = 6
BIG_FRAMES = 60  # 640x480: 55 MB each once loaded
CAMERA_WATCH_S = 25
SLOW_HEADER_CONNECTIONS = 50


async def attacks(attacker: Attacker, sid: str, speech: ScriptedSpeechServer, port: int):
    """(name, coroutine factory) for each reproduction, in the issue's order."""

    async def human(text: str, **extra) -> None:
        await attacker.post("/human", {"sessionid": sid, "text": text, **extra})

    async def voices() -> None:
        for voice in ("en+" + "A" * 37, "../../../../../../../../../dev/zero", "../../../../etc/shadow"):
            await human("hi", tts={"backend": "espeak", "voice": voice})

    async def uploads() -> None:
        flac = silent_flac(599)
        for _ in range(40):
            await attacker.call("POST", "/humanaudio", data=multipart_upload(sid, flac, "a.flac"))
        await attacker.call("POST", "/humanaudio", data=multipart_upload(sid, wav_declaring(1, 600)))

    async def long_sentence() -> None:
        await human("word " * 3990 + ".", interrupt=True)
        await asyncio.sleep(2.0)
        await attacker.post("/interrupt_talk", {"sessionid": sid})

    async def stuck_tts() -> None:
        for mode in ("hang", "drip"):
            speech.mode = mode
            await human("Stuck.", tts="openai", interrupt=True)
            await asyncio.sleep(1.0)
            await attacker.post("/interrupt_talk", {"sessionid": sid})
        speech.mode = "ok"

    async def openai_clients() -> None:
        for index in range(300):
            await human(f"Number {index}.", tts="openai", interrupt=True)
        await attacker.post("/interrupt_talk", {"sessionid": sid})

    async def malformed() -> None:
        for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"sessionid": ' + b"7" * 5000 + b"}"):
            await attacker.call("POST", "/human", data=raw, headers={"Content-Type": "application/json"})
        await attacker.call("POST", "/humanaudio", data=b"x", headers={"Content-Type": "multipart/form-data"})

    async def split_body() -> None:
        body = json.dumps({"sessionid": sid}).encode()
        await raw_request(port, json_head("/is_speaking", len(body)), [body[:10], body[10:]], 0.3, 10)

    return [("1-3 hostile voices", voices), ("4 40 × 599 s FLAC + 1 Hz WAV", uploads),
            ("5 one 20 k-char sentence", long_sentence), ("7 hanging/dripping TTS", stuck_tts),
            ("8 300 × /human tts=openai", openai_clients), ("9 malformed bodies", malformed),
            ("12 body in two segments", split_body)]


async def newer_surfaces(attacker: Attacker, server: ServerProcess, http: aiohttp.ClientSession) -> None:
    """The reliability issue's attacks on the newer surfaces, each with the peak RSS over the RSS before it."""
    print("| attack | RSS before → after (MB) | peak over before (MB) | answers |")
    print("|---|---|---|---|")

    async def measured(name: str, attack) -> None:
        before = server.rss_mb()
        server.reset_peak()
        attacker.statuses.clear()
        await attack()
        await asyncio.sleep(0.5)
        answers = ", ".join(f"{count}×{status}" for status, count in sorted(attacker.statuses.items()))
        peak = max(0.0, server.peak_rss_mb() - before)
        print(f"| {name} | {before:.0f} → {server.rss_mb():.0f} | {peak:.0f} | {answers or '—'} |")

    async def task_done(task_id: str) -> None:
        for _ in range(600):  # bounded: 120 s
            _, body, _ = await attacker.call("GET", f"/api/avatar/task/{task_id}")
            if body["data"]["status"] in ("completed", "failed"):
                return
            await asyncio.sleep(0.2)

    async def png_bombs() -> None:
        bomb = bomb_png(20000)
        await asyncio.gather(*(attacker.call("POST", "/api/avatar/task",
                                             data=avatar_form(bomb, "bomb.png", avatar_id=f"bomb{i}"))
                               for i in range(4)))

    async def uhd_clip() -> None:
        _, body, _ = await attacker.call("POST", "/api/avatar/task",
                                         data=avatar_form(black_clip(3.0), "uhd.mp4", avatar_id="uhd"))
        if body.get("data"):
            await task_done(body["data"]["task_id"])

    async def camera() -> None:
        client = ReceiverClient(server.url, keep_video=False)
        await client.connect(http, uplink=SpeechTrack(), camera=NoiseCamera())
        await client.wait_for(video_frames=25)
        await asyncio.sleep(2.0)
        started = server.rss_mb()
        await asyncio.sleep(CAMERA_WATCH_S)
        print(f"<!-- camera + mic: RSS {started:.0f} → {server.rss_mb():.0f} MB over {CAMERA_WATCH_S} s once the "
              f"session was up -->")
        await client.close()

    async def switches() -> None:
        client = ReceiverClient(server.url, keep_video=False)
        await client.connect(http)
        await client.wait_for(video_frames=5)
        for round_ in range(2):
            for index in range(BIG_AVATARS):
                await asyncio.sleep(1.05)  # --set-avatar-interval 1
                await attacker.post("/set_avatar", {"sessionid": client.sessionid, "avatar": f"big{index}"})
        await client.close()

    async def slow_headers() -> None:
        async def one() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for byte in b"GET /config HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                            return
                    except asyncio.TimeoutError:
                        pass
            except ConnectionError:
                return
            finally:
                writer.close()

        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(one() for _ in range(SLOW_HEADER_CONNECTIONS)))
        print(f"<!-- {SLOW_HEADER_CONNECTIONS} slow-header connections all closed after "
              f"{asyncio.get_running_loop().time() - started:.1f} s -->")

    await measured("4 × 20000² PNG (48 kB each) at once", png_bombs)
    await measured("a 3 s 4K H.264 clip (28 kB)", uhd_clip)
    await measured(f"camera 640×480 + mic, {CAMERA_WATCH_S} s, no --llm-vision", camera)
    await measured(f"12 /set_avatar over {BIG_AVATARS} × 55 MB avatars", switches)
    await measured(f"{SLOW_HEADER_CONNECTIONS} slow-header connections", slow_headers)


async def run(cycles: int) -> None:
    loopback_only()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_avatar(data / "avatars" / TEST_AVATAR_ID, synthetic_frames(), {"source": "synthetic", "fps": 25})
        for index in range(BIG_AVATARS):
            frame = np.full((480, 640, 3), 40 * index, np.uint8)
            write_avatar(data / "avatars" / f"big{index}", [frame] * BIG_FRAMES, {"source": "flat", "fps": 25})
        speech = ScriptedSpeechServer()
        await speech.start()
        server = ServerProcess(data, Path(tmp) / "server.log", "--tts", "espeak", "--tts-base-url", speech.base_url,
                               "--tts-timeout", "2", "--max_session", "8", "--avatar-cache-mb", "120",
                               "--header-timeout", "10")
        try:
            async with aiohttp.ClientSession() as http:
                await server.wait_ready(http)
                attacker = Attacker(http, server.url)
                victim = ReceiverClient(server.url, keep_video=False)
                await victim.connect(http, data_channel=True)
                await victim.wait_for(video_frames=25)
                print("| attack | RSS before → after (MB) | fds before → after | answers |")
                print("|---|---|---|---|")
                for name, attack in await attacks(attacker, victim.sessionid, speech, server.port):
                    before_rss, before_fds = server.rss_mb(), server.fds()
                    attacker.statuses.clear()
                    await attack()
                    await asyncio.sleep(0.5)
                    answers = ", ".join(f"{count}×{status}" for status, count in sorted(attacker.statuses.items()))
                    print(f"| {name} | {before_rss:.0f} → {server.rss_mb():.0f} | {before_fds} → {server.fds()} "
                          f"| {answers or '—'} |")
                await victim.close()
                print(f"\nserver alive: {server.alive()}; tracebacks in its log: {server.log().count('Traceback')}\n")
                await newer_surfaces(attacker, server, http)
                print(f"\nserver alive: {server.alive()}; tracebacks in its log: {server.log().count('Traceback')}\n")
                print("| cycles | threads | fds | RSS (MB) |")
                print("|---|---|---|---|")
                checkpoints = {0, cycles // 4, cycles // 2, cycles}
                for cycle in range(cycles + 1):
                    if cycle in checkpoints:
                        await asyncio.sleep(1.5)  # let the last close finish
                        print(f"| {cycle} | {server.threads()} | {server.fds()} | {server.rss_mb():.0f} |")
                    if cycle == cycles:
                        break
                    client = ReceiverClient(server.url, keep_video=False)
                    await client.connect(http)
                    await client.wait_for(video_frames=3)
                    await client.close()
        finally:
            server.stop()
            await speech.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100)
    asyncio.run(run(parser.parse_args().cycles))


if __name__ == "__main__":
    main()
