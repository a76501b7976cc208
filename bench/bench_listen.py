"""Listening latency at a loopback aiortc client that speaks espeak-ng sentences, beside floors.

(a) echo: end of the user's speech (its last sample leaves the client) -> first voiced reply frame
    received, with its parts as the client sees the events: VAD end (-> user_end), ASR
    (user_end -> transcript), reply (transcript -> first voiced frame: TTS + engine + wire); and
    the server's own breakdown (the `turn` event: speech end -> decision, transcript, first LLM
    token, first TTS audio, first voiced frame handed to WebRTC).
    Floor: POST /human with the same text -> first voiced frame (TTS + engine + wire, no listening).
(b) the same in chat, with a local fake LLM whose first token takes 200 ms (the floor waits for it too).
(h) hesitations: 12 sentences with 0.7 s of silence inside (tests/support/hesitations.py): turns
    split (and of those, continued: the second half went on with the first), whether the last final
    transcript is the whole sentence, voiced reply frames while the user was still speaking, and end
    of speech -> first voiced reply; then the same for its 12 held-out sentences (written after the turn rule was tuned).
(c) barge-in: the user's speech onset -> the avatar's last voiced frame at the client; floor:
    POST /interrupt_talk -> last voiced frame (the same interrupt without listening).
(d) lips: the user's audio -> the same audio back at the client (the whole clip aligned by envelope
    cross-correlation, and its first voiced frame);
    floor: the server's own path, a chunk put into the engine -> received (engine + wire).
(e) ASR real-time factor (tiny.en, this machine), and the delay user_end -> transcript when
    N sessions finish an utterance at the same moment.

    python -m bench.bench_listen --trials 8 [--avatar default] [--sessions 1 2 4] [--turn smart|silence]
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from collections import Counter

import aiohttp
import numpy as np

from bench.common import ROOT, speech_bench_parser, start_server, summary_ms

import app as server_app
from listen.service import LISTEN_KEY
from media import CHUNK_SAMPLES, AudioChunk
from tests.support.hesitations import HELD_OUT, HESITATIONS, full_text, hesitant
from tests.support.llm_server import FakeLLMServer, Script
from tests.support.rtc_client import ReceiverClient
from tests.support.speech_helpers import channel_events, is_voiced, wait_voiced
from tests.support.speech_sender import SpeechTrack, speak, word_error_rate

SENTENCES = ["Please tell me the weather for tomorrow morning.", "I would like to visit the museum on Sunday.",
             "The train leaves the station at seven o'clock."]
LONG_TEXT = "This is a long answer that goes on for a while so that the user can cut in. " * 5
REPLY = "Sure."
LLM_FIRST_TOKEN_S = 0.2
BARGE_IN_WINDOW_S = 1.2  # the avatar's voice is looked for up to this long after the user's onset
PARTS = ("echo", "chat", "hesitation", "barge-in", "lips", "asr")
STAGES = ("decision", "transcript", "llm_first_token", "tts_first_audio", "first_voiced_frame")


async def wait_event(client: ReceiverClient, kind: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(e["type"] == kind for e in channel_events(client)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind} #{count}")
        await asyncio.sleep(0.005)


def trimmed(audio: np.ndarray, level: float = 0.02) -> np.ndarray:
    """The clip from its first to its last audible sample, so send times mark speech itself."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0]:loud[-1] + 1]


def timestamp_events(client: ReceiverClient) -> list[tuple[float, dict]]:
    """(arrival, event) for every data channel message, from now on."""
    stamped: list[tuple[float, dict]] = []
    client.channel.on("message", lambda m: stamped.append((time.monotonic(), json.loads(m))))
    return stamped


def first_after(stamped, kind: str, after: float) -> float:
    return next(t for t, e in stamped if e["type"] == kind and t >= after)


async def connect(url: str, http, track: SpeechTrack | None, listen: str, avatar: str) -> ReceiverClient:
    # the microphone hears no loudspeaker: the client says it cancels echo (else --echo-cancel auto
    # treats it as a loudspeaker client, half duplex until the canceller finds no echo; bench_echo)
    client = ReceiverClient(url, avatar=avatar, keep_video=False, offer_fields={"echo_cancellation": True})
    await client.connect(http, data_channel=True, uplink=track, listen=listen)
    await client.wait_for(video_frames=25, audio_frames=50)
    await asyncio.sleep(0.5)
    return client


async def turn_latency(url, http, avatar, listen, trials, clips, results, key):
    track = SpeechTrack()
    client = await connect(url, http, track, listen, avatar)
    stamped = timestamp_events(client)
    for trial in range(trials):
        since = len(client.audio)
        ends = len(track.speech_ended)
        track.play(clips[trial % len(clips)])
        while len(track.speech_ended) <= ends:
            await asyncio.sleep(0.005)
        spoken = track.speech_ended[-1]
        first = await wait_voiced(client, since, timeout=20)
        user_end = first_after(stamped, "user_end", spoken - 1.0)
        transcript = first_after(stamped, "transcript", user_end)
        results[key].append(first.arrival - spoken)
        results[key + "_vad"].append(user_end - spoken)
        results[key + "_asr"].append(transcript - user_end)
        results[key + "_reply"].append(first.arrival - transcript)
        await wait_event(client, "end", trial + 1)
        turn = [e for _, e in stamped if e["type"] == "turn"]
        for stage, ms in (turn[-1]["ms"].items() if turn else ()):
            results.setdefault(f"{key}_stage_{stage}", []).append(ms / 1000)
        results.setdefault(key + "_reasons", []).append(turn[-1]["reason"] if turn else "?")
        await asyncio.sleep(0.8)
    for trial in range(trials):  # floor: the same text typed, no listening
        since = len(client.audio)
        posted = time.monotonic()
        text = SENTENCES[trial % len(SENTENCES)] if listen == "echo" else "Hi."
        body = {"sessionid": client.sessionid, "text": text, "type": listen}
        async with http.post(f"{url}/human", json=body) as r:
            assert r.status == 200
        first = await wait_voiced(client, since, timeout=20)
        results[key + "_floor"].append(first.arrival - posted)
        await asyncio.sleep(3.0)
    await client.close()


async def hesitations(url, http, avatar, results, sentences=HESITATIONS, key="hesitation"):
    """Each hesitation sentence once: split turns, speech over the user, end of speech -> reply."""
    track = SpeechTrack()
    client = await connect(url, http, track, "echo", avatar)
    stamped = timestamp_events(client)
    for first, second in sentences:
        since = len(client.audio)
        mark = len(stamped)
        ends = len(track.speech_ended)
        track.play(hesitant(first, second))
        while len(track.speech_ended) <= ends:
            await asyncio.sleep(0.005)
        started, spoken = track.speech_started[-1], track.speech_ended[-1]
        reply = await wait_voiced(client, len(client.audio), timeout=20)
        await asyncio.sleep(0.3)
        while any(is_voiced(f) for f in client.audio[-10:]):  # the reply plays out
            await asyncio.sleep(0.1)
        events = [e for _, e in stamped[mark:]]
        over = [f for f in client.audio[since:] if is_voiced(f) and started <= f.arrival <= spoken]
        split = sum(e["type"] == "user_end" for e in events) > 1
        results[key + "_split"].append(split)
        results[key + "_over"].append(bool(over))
        results[key].append(reply.arrival - spoken)
        results[key + "_reasons"].append(",".join(e["reason"] for e in events if e["type"] == "user_end"))
        results[key + "_continued"].append(any(e["type"] == "user_start" and e.get("continues") for e in events))
        finals = [e["text"] for e in events if e["type"] == "transcript" and e["final"]]
        results[key + "_whole"].append(bool(finals) and word_error_rate(full_text((first, second)), finals[-1]) <= 0.25)
        if split:
            results[key + "_split_at"].append(first)
        await asyncio.sleep(1.0)
    await client.close()


async def barge_in(url, http, avatar, trials, results):
    track = SpeechTrack()
    client = await connect(url, http, track, "echo", avatar)
    interjection = trimmed(speak("Wait, stop please."))
    for trial in range(trials):
        for interrupt_by_voice in (True, False):
            async with http.post(f"{url}/human", json={"sessionid": client.sessionid, "text": LONG_TEXT}) as r:
                assert r.status == 200
            await wait_voiced(client, len(client.audio), timeout=20)
            await asyncio.sleep(0.6 + (trial % 5) * 0.013)
            if interrupt_by_voice:
                starts = len(track.speech_started)
                track.play(interjection)
                while len(track.speech_started) <= starts:
                    await asyncio.sleep(0.002)
                onset = track.speech_started[-1]
            else:
                onset = time.monotonic()
                async with http.post(f"{url}/interrupt_talk", json={"sessionid": client.sessionid}) as r:
                    assert r.status == 200
            # the avatar's voice up to 1.2 s after the onset, but not its answer to the interjection, which
            # may begin within that time (its "start" event comes before its first voiced frame)
            seen, until = len(client.channel_messages), onset + BARGE_IN_WINDOW_S
            while time.monotonic() < until:
                if any(json.loads(m)["type"] == "start" for m in client.channel_messages[seen:]):
                    until = time.monotonic()
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(max(0.0, onset + BARGE_IN_WINDOW_S - time.monotonic()))
            last = [f for f in client.audio if is_voiced(f) and f.arrival < until][-1]
            results["barge_in" if interrupt_by_voice else "barge_in_floor"].append(last.arrival - onset)
            await asyncio.sleep(3.0)  # the echo of the interjection plays out
    await client.close()


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    step = rate // 50
    usable = samples[: len(samples) // step * step].astype(np.float32)
    return np.sqrt((usable.reshape(-1, step) ** 2).mean(axis=1))


async def lips(url, http, avatar, trials, application, results):
    track = SpeechTrack()
    client = await connect(url, http, track, "lips", avatar)
    session = application[server_app.CONTEXT_KEY].sessions.get(client.sessionid)
    clip = trimmed(speak("One two three four five."))
    for trial in range(trials):
        since = len(client.audio)
        starts = len(track.speech_started)
        track.play(clip)
        while len(track.speech_started) <= starts:
            await asyncio.sleep(0.002)
        onset = track.speech_started[-1]
        await asyncio.sleep(len(clip) / 16000 + 1.0)
        got = client.audio[since:]
        received = envelope(np.concatenate([f.data for f in got]) / 32768.0, 48000)
        sent = envelope(clip, 16000)
        scores = [np.corrcoef(sent, received[lag:lag + len(sent)])[0, 1] for lag in range(len(received) - len(sent))]
        best = int(np.argmax(scores))
        results["lips"].append(got[best].arrival - onset)
        results["lips_onset"].append(next(f.arrival for f in got if is_voiced(f)) - onset)
        await asyncio.sleep(0.5)
    # floor: a voiced chunk put straight into the engine -> received
    await client.pc.close()  # stop the uplink so only our chunks are voiced
    client2 = await connect(url, http, None, "off", avatar)
    session = application[server_app.CONTEXT_KEY].sessions.get(client2.sessionid)
    tone = (0.3 * np.sin(np.arange(CHUNK_SAMPLES * 10) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    for trial in range(trials):
        since = len(client2.audio)
        put = time.monotonic()
        for i in range(10):
            session.engine.audio_in.put(AudioChunk(tone[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES], True,
                                                   session.engine.epoch))
        first = await wait_voiced(client2, since, timeout=10)
        results["lips_floor"].append(first.arrival - put)
        await asyncio.sleep(0.6)
    await client2.close()
    await client.close()


def direct_asr(clips, results) -> None:
    """The recogniser alone on this machine: seconds of compute per second of speech."""
    from listen.asr import WhisperASR

    model = WhisperASR()
    model.transcribe(clips[0])  # warm-up
    for clip in clips * 2:
        started = time.perf_counter()
        model.transcribe(clip)
        results["asr_direct_rtf"].append((time.perf_counter() - started) / (len(clip) / 16000))


async def concurrent_asr(url, http, avatar, counts, application, results):
    for n in counts:
        tracks = [SpeechTrack() for _ in range(n)]
        clients = [await connect(url, http, t, "echo", avatar) for t in tracks]
        stamps = [timestamp_events(c) for c in clients]
        await asyncio.sleep(0.5)
        clip = speak(SENTENCES[0])
        for t in tracks:
            t.play(clip)
        deadline = time.monotonic() + 60
        while any(not [e for _, e in s if e["type"] == "transcript"] for s in stamps) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        delays = [first_after(s, "transcript", 0) - first_after(s, "user_end", 0) for s in stamps]
        results[f"asr_delay_{n}"] = delays
        for c in clients:
            await c.close()
        await asyncio.sleep(1.0)
    asr = application[LISTEN_KEY].asr_worker().stats
    results["asr_rtf"] = asr.real_time_factor
    results["asr_utterances"] = asr.utterances


async def run(args) -> dict:
    llm = FakeLLMServer(Script(deltas=[REPLY], delay=LLM_FIRST_TOKEN_S))
    await llm.start()
    application, runner, url = await start_server(
        "--model", args.model, "--tts", "espeak", "--avatar_id", args.avatar, "--max_session", "8",
        "--llm-base-url", llm.base_url, "--llm-model", "test-model", *(["--turn", args.turn] if args.turn else []))
    keys = ["echo", "echo_vad", "echo_asr", "echo_reply", "echo_floor", "chat", "chat_vad", "chat_asr",
            "chat_reply", "chat_floor", "barge_in", "barge_in_floor", "lips", "lips_onset", "lips_floor", "asr_direct_rtf",
            *(k + part for k in ("hesitation", "held_out")
              for part in ("", "_split", "_over", "_reasons", "_split_at", "_continued", "_whole"))]
    results: dict = {k: [] for k in keys}
    clips = [trimmed(speak(s)) for s in SENTENCES]
    async with aiohttp.ClientSession() as http:
        if "echo" in args.parts:
            await turn_latency(url, http, args.avatar, "echo", args.trials, clips, results, "echo")
        if "chat" in args.parts:
            await turn_latency(url, http, args.avatar, "chat", args.trials, clips, results, "chat")
        if "hesitation" in args.parts:
            await hesitations(url, http, args.avatar, results)
            await hesitations(url, http, args.avatar, results, HELD_OUT, "held_out")
        if "barge-in" in args.parts:
            await barge_in(url, http, args.avatar, args.trials, results)
        if "lips" in args.parts:
            await lips(url, http, args.avatar, args.trials, application, results)
        if "asr" in args.parts:
            await asyncio.get_running_loop().run_in_executor(None, direct_asr, clips, results)
            await concurrent_asr(url, http, args.avatar, args.sessions, application, results)
    await runner.cleanup()
    await llm.close()
    return results


def main() -> None:
    parser = speech_bench_parser(__doc__)
    parser.set_defaults(trials=8)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--json", help="also write raw results here")
    parser.add_argument("--turn", choices=("smart", "silence"), default=None, help="the server's --turn (default its own)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = asyncio.run(run(args))
    med = lambda key: f"{statistics.median(r[key]) * 1000:.0f} ms"  # noqa: E731
    print(f"engine {args.model}, avatar {args.avatar}, {args.trials} trials, espeak, tiny.en, turn {args.turn or 'default'}")
    for mode in ("echo", "chat"):
        if not r[mode]:
            continue
        print(f"({mode}) end of speech -> first voiced reply: {summary_ms(r[mode])}; parts p50: VAD end {med(mode + '_vad')}, "
              f"ASR {med(mode + '_asr')}, reply {med(mode + '_reply')}; floor (/human) {summary_ms(r[mode + '_floor'])}")
        stages = [f"{stage} {med(f'{mode}_stage_{stage}')}" for stage in STAGES if r.get(f"{mode}_stage_{stage}")]
        print(f"    server breakdown p50, from the end of speech: {', '.join(stages)}; turns ended by "
              f"{', '.join(f'{k} {v}' for k, v in sorted(Counter(r[mode + '_reasons']).items()))}")
    for key, name in (("hesitation", "hesitations"), ("held_out", "held-out hesitations")):
        if r[key]:
            print(f"{name} ({len(r[key])} sentences, 0.7 s pause): split {sum(r[key + '_split'])} "
                  f"{r[key + '_split_at']} (continued {sum(r[key + '_continued'])}), last transcript the whole "
                  f"sentence {sum(r[key + '_whole'])}, spoke over the user {sum(r[key + '_over'])}; end of speech -> first "
                  f"voiced reply {summary_ms(r[key])}; ended by {dict(Counter(r[key + '_reasons']))}")
    if r["barge_in"]:
        print(f"barge-in: onset -> avatar silent {summary_ms(r['barge_in'])}; floor (/interrupt_talk) {summary_ms(r['barge_in_floor'])}")
    if r["lips"]:
        print(f"lips: user audio -> back at the client, whole clip aligned {summary_ms(r['lips'])}, first voiced frame "
              f"{summary_ms(r['lips_onset'])}; floor (engine + wire) {summary_ms(r['lips_floor'])}")
    if "asr_rtf" in r:
        print(f"ASR real-time factor {r['asr_rtf']:.3f} over {r['asr_utterances']} utterances in sessions; "
              f"alone p50 {statistics.median(r['asr_direct_rtf']):.3f} ({len(r['asr_direct_rtf'])} runs)")
    for n in args.sessions if "asr" in args.parts else ():
        print(f"{n} sessions finishing at once: user_end -> transcript {summary_ms(r[f'asr_delay_{n}'])}")
    if args.json:
        (ROOT / args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
