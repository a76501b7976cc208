"""Echo cancellation (issue 19): CPU, echo reduction and behaviour through a leaky loudspeaker.

(a) offline, the canceller alone on espeak speech through a delay and a gain (hand-over and
    arrival jitter as on a loopback): CPU per second of audio (% of one core, thread time),
    ERLE over the whole run and once converged, the delay estimate, the seconds of half duplex
    before convergence, and Silero windows the output still calls speech.
(b) loopback, a real aiortc client whose microphone mixes the received avatar audio back in
    (tests/support/leaky_mic.py), no AEC on the client: per trial 3 x ~6 s of avatar speech
    (echo mode) counting self-interruptions (user_start) and transcripts of its own words;
    the listening thread's CPU while the avatar speaks (% of one core, the whole listener:
    resampling, canceller, VAD, turns); then a user sentence over the avatar once the canceller
    converged: onset -> the avatar's last voiced frame at the client, beside the floor
    (POST /interrupt_talk -> last voiced frame), and the transcript's WER.

    python -m bench.bench_echo --trials 3     (the tests' synthetic avatar, in a temporary data folder)
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import numpy as np

from bench.common import speech_bench_parser, start_server, summary_ms
from listen.service import LISTEN_KEY
from tests.support.leaky_mic import LeakyMic
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import channel_events, is_voiced, wait_voiced
from tests.support.speech_sender import speak, word_error_rate

LEAKS = ((-6.0, 0.08), (0.0, 0.25))
TEXTS = ["This is a long story about a lighthouse keeper and his cat, who lived on a rock in the cold grey sea.",
         "Every evening the keeper climbed the stairs, lit the great lamp, and watched the ships pass by.",
         "In winter the storms were loud and the waves were high, but the light was always shining."]
USER = "Please tell me the weather for tomorrow morning."
SR = 16000


def offline(gain_db: float, delay_s: float) -> dict:
    from listen.echo import EchoCanceller
    from listen.vad import WINDOW_SAMPLES, SileroModel, VADStream
    from tests.test_echo import FRAME, echo_of

    far = np.concatenate([speak(t) for t in TEXTS])
    total = len(far) + SR
    mic = echo_of(far, delay_s * 1000, 10 ** (gain_db / 20), total)
    rng = np.random.default_rng(0)
    canceller = EchoCanceller()
    frames = total // FRAME
    padded = np.concatenate([far, np.zeros(total - len(far), np.float32)])
    chunks = [(padded[k * FRAME:(k + 1) * FRAME] * 32767).astype(np.int16) for k in range(frames)]
    handed = 1000.0 + np.arange(frames) * 0.02 + np.abs(rng.normal(0, 0.005, frames))
    arrived = 1000.0 + (np.arange(frames) + 1) * 0.02 + np.abs(rng.normal(0, 0.005, frames))
    outs, converged_at = [], None
    start = time.thread_time()  # read twice only: on these VMs one read costs ~0.2 ms
    for k in range(frames):
        canceller.reference(chunks[k], float(handed[k]), k * FRAME)
        outs.append(canceller.process(mic[k * FRAME:(k + 1) * FRAME], float(arrived[k])))
        if converged_at is None and canceller.converged:
            converged_at = k * FRAME
    cpu = time.thread_time() - start
    out = np.concatenate(outs)
    n = len(out)
    settled = converged_at or n

    def erle(a: slice) -> float:
        return float(10 * np.log10(np.sum(mic[a] ** 2) / max(np.sum(out[a] ** 2), 1e-12)))

    vad = VADStream(SileroModel())
    speech = [vad(out[i:i + WINDOW_SAMPLES]) >= 0.5 for i in range(0, n - WINDOW_SAMPLES, WINDOW_SAMPLES)]
    return {"cpu_pct": 100 * cpu / (n / SR), "erle_all": erle(slice(0, n)), "erle_converged": erle(slice(settled, n)),
            "delay_ms": canceller.delay_ms, "half_duplex_s": canceller.muted_blocks / 100,
            "speech_windows": int(sum(speech)), "seconds": n / SR}


def thread_cpu(thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def data_dir() -> str:
    """A data folder with the tests' synthetic avatar (no set-up needed)."""
    import tempfile
    from pathlib import Path

    from tests.conftest import TEST_AVATAR_ID, synthetic_frames, write_avatar

    root = Path(tempfile.mkdtemp(prefix="bench-echo-"))
    write_avatar(root / "avatars" / TEST_AVATAR_ID, synthetic_frames(), {"source": "synthetic", "fps": 25})
    return str(root)


async def loopback(gain_db: float, delay_s: float, trials: int, out: dict, echo_cancel: str = "auto") -> None:
    from tests.conftest import TEST_AVATAR_ID

    root = data_dir()
    application, runner, url = await start_server(
        "--model", "lite", "--tts", "espeak", "--max_session", "2", "--data-dir", root, "--avatar_id", TEST_AVATAR_ID,
        "--models-dir", f"{root}/no-models", "--echo-cancel", echo_cancel)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(trials):
                client = ReceiverClient(url, keep_video=False)
                mic = LeakyMic(client, gain_db, delay_s)
                await client.connect(http, data_channel=True, uplink=mic, listen="echo")
                await client.wait_for(video_frames=5, audio_frames=10)
                listening = application[LISTEN_KEY].sessions[client.sessionid]
                while listening.listener is None:
                    await asyncio.sleep(0.05)
                cpu0, t0 = thread_cpu(listening.listener._thread), time.monotonic()
                for index, text in enumerate(TEXTS, 1):
                    async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "text": text}) as r:
                        assert r.status == 200
                    while sum(e["type"] == "end" for e in channel_events(client)) < index:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.6)
                out["cpu"].append(100 * (thread_cpu(listening.listener._thread) - cpu0) / (time.monotonic() - t0))
                events = channel_events(client)
                out["self_interruptions"].append(sum(e["type"] == "user_start" for e in events))
                out["self_transcripts"].append(sum(e["type"] == "transcript" for e in events))
                echo = listening.echo
                out["delay_ms"].append(echo.delay_ms if echo is not None and echo.delay_ms else float("nan"))
                out["erle_db"].append(echo.erle_db if echo is not None and echo.erle_db else float("nan"))
                out["avatar_s"].append(time.monotonic() - t0)
                if echo_cancel == "off":  # the control: the same leak without the canceller
                    await client.close()
                    continue
                # barge-in once converged, and the floor
                for by_voice in (True, False):
                    since = len(client.audio)
                    async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "text": " ".join(TEXTS)}) as r:
                        assert r.status == 200
                    await wait_voiced(client, since, timeout=20)
                    await asyncio.sleep(1.5)
                    finals = sum(e["type"] == "transcript" and e["final"] for e in channel_events(client))
                    if by_voice:
                        starts = len(mic.speech_started)
                        mic.play(speak(USER))
                        while len(mic.speech_started) <= starts:
                            await asyncio.sleep(0.002)
                        onset = mic.speech_started[-1]
                    else:
                        onset = time.monotonic()
                        async with http.post(f"{url}/interrupt_talk", json={"sessionid": client.sessionid}) as r:
                            assert r.status == 200
                    await asyncio.sleep(1.5)
                    voiced = [f for f in client.audio[since:] if is_voiced(f) and f.arrival < onset + 1.5]
                    out["barge_in" if by_voice else "floor"].append(voiced[-1].arrival - onset)
                    if by_voice:
                        deadline = time.monotonic() + 20
                        while time.monotonic() < deadline:
                            texts = [e["text"] for e in channel_events(client) if e["type"] == "transcript" and e["final"]]
                            if len(texts) > finals:
                                out["wer"].append(word_error_rate(USER, texts[finals]))
                                break
                            await asyncio.sleep(0.05)
                        else:
                            out["wer"].append(1.0)
                    await asyncio.sleep(4.0)
                await client.close()
    finally:
        await runner.cleanup()


async def main() -> None:
    parser = speech_bench_parser(__doc__)
    parser.add_argument("--control", action="store_true", help="also run each leak with --echo-cancel off")
    args = parser.parse_args()
    for gain_db, delay_s in LEAKS:
        label = f"{gain_db:+.0f} dB, {delay_s * 1000:.0f} ms"
        r = offline(gain_db, delay_s)
        print(f"[offline {label}] canceller CPU {r['cpu_pct']:.2f} % of a core; ERLE {r['erle_all']:.1f} dB overall, "
              f"{r['erle_converged']:.1f} dB once converged; delay {r['delay_ms']:.1f} ms; half duplex "
              f"{r['half_duplex_s']:.1f} s of {r['seconds']:.1f} s; VAD speech windows in the output {r['speech_windows']}")
        out = {k: [] for k in ("cpu", "self_interruptions", "self_transcripts", "delay_ms", "erle_db", "avatar_s",
                               "barge_in", "floor", "wer")}
        await loopback(gain_db, delay_s, args.trials, out)
        print(f"[loopback {label}] {args.trials} trials x {statistics.median(out['avatar_s']):.1f} s of avatar speech: "
              f"self-interruptions {sum(out['self_interruptions'])}, own-word transcripts {sum(out['self_transcripts'])}; "
              f"listener CPU median {statistics.median(out['cpu']):.1f} % of a core (min {min(out['cpu']):.1f}, "
              f"max {max(out['cpu']):.1f}); delay {statistics.median(out['delay_ms']):.0f} ms; "
              f"ERLE {statistics.median(out['erle_db']):.1f} dB")
        if args.control:
            control = {k: [] for k in out}
            await loopback(gain_db, delay_s, args.trials, control, echo_cancel="off")
            print(f"[control, --echo-cancel off, {label}] self-interruptions {sum(control['self_interruptions'])}, "
                  f"own-word transcripts {sum(control['self_transcripts'])}; listener CPU median "
                  f"{statistics.median(control['cpu']):.1f} % of a core")
        print(f"[loopback {label}] barge-in onset -> avatar silent {summary_ms(out['barge_in'])}; floor "
              f"(/interrupt_talk) {summary_ms(out['floor'])}; WER median {statistics.median(out['wer']):.2f} "
              f"max {max(out['wer']):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
