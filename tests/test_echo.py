"""The echo canceller and its delay estimate on real-ish signals: espeak speech through a delay and a gain.

These run the real AEC3 (livekit wheel) and the real Silero VAD; no timing is asserted
(CPU cost and ERLE figures are in bench/bench_echo.py and BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from listen.echo import EchoCanceller, FarEnd, MicClock, Ring, wanted
from listen.echodelay import MIN_PEAK_RATIO, DelayTracker, LagEstimate, gcc_phat
from listen.vad import WINDOW_SAMPLES, SileroModel, VADStream
from tests.support.speech_sender import speak

SR = 16000
FRAME = 320  # 20 ms, as the uplink and the audio track hand them over


@pytest.fixture(scope="module")
def avatar_speech() -> np.ndarray:
    return np.concatenate([speak("This is a long story about a lighthouse keeper and his cat who lived by the sea."),
                           speak("The waves were high and the wind was cold, but the light was always on.")])


@pytest.fixture(scope="module")
def user_speech() -> np.ndarray:
    return speak("Please tell me the weather for tomorrow morning.")


def echo_of(far: np.ndarray, delays_ms, gain: float, total: int) -> np.ndarray:
    """What a microphone hears of `far`: delayed by delays_ms (a number, or one per 20 ms frame) and scaled."""
    out = np.zeros(total, np.float32)
    for k in range(total // FRAME):
        d = int((delays_ms if np.isscalar(delays_ms) else delays_ms[k]) * SR / 1000)
        lo = k * FRAME - d
        if lo >= 0 and lo + FRAME <= len(far):
            out[k * FRAME:(k + 1) * FRAME] = far[lo:lo + FRAME] * gain
    return out


def run_canceller(far: np.ndarray, mic: np.ndarray, jitter_ms: float = 5.0, seed: int = 0,
                  canceller: EchoCanceller | None = None) -> tuple[EchoCanceller, np.ndarray]:
    """Feed the far end as the audio track would (stamped by a clock) and the mic as the uplink would
    (each 20 ms frame stamped on arrival, with jitter); the output aligned with the input."""
    rng = np.random.default_rng(seed)
    canceller = canceller or EchoCanceller()
    t0 = 1000.0
    far = np.concatenate([far, np.zeros(max(0, len(mic) - len(far)), np.float32)])
    outs = []
    for k in range(len(mic) // FRAME):
        late = abs(rng.normal(0, jitter_ms / 1000))  # the track hands chunks over a little late, never early
        canceller.reference((far[k * FRAME:(k + 1) * FRAME] * 32767).astype(np.int16), t0 + k * 0.02 + late,
                            k * FRAME)
        arrival = t0 + (k + 1) * 0.02 + abs(rng.normal(0, jitter_ms / 1000))
        outs.append(canceller.process(mic[k * FRAME:(k + 1) * FRAME], arrival))
    return canceller, np.concatenate(outs)


def erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(mic[:len(out)] ** 2) / max(np.sum(out ** 2), 1e-12)))


def voiced(audio: np.ndarray, model: SileroModel, threshold: float = 0.5) -> list[bool]:
    vad = VADStream(model)
    return [vad(audio[i:i + WINDOW_SAMPLES]) >= threshold for i in range(0, len(audio) - WINDOW_SAMPLES, WINDOW_SAMPLES)]


def speech_windows(audio: np.ndarray, model: SileroModel) -> int:
    return sum(voiced(audio, model))


def longest_run(flags: list[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


@pytest.mark.parametrize("delay_ms", [50, 80, 250, 480])
def test_gcc_phat_finds_the_delay_of_speech_through_a_delay_and_gain(avatar_speech, delay_ms):
    max_lag = 700 * SR // 1000
    window = 24000
    start = 8000 + max_lag
    d = delay_ms * SR // 1000
    noise = np.random.default_rng(1).normal(0, 0.003, window).astype(np.float32)
    mic = 0.5 * avatar_speech[start - d:start - d + window] + noise
    ref = avatar_speech[start - max_lag:start + window]
    estimate = gcc_phat(mic, ref, max_lag)
    assert abs(estimate.lag - d) <= 16, (estimate, d)  # within 1 ms
    assert estimate.confidence > 5


def test_gcc_phat_has_no_confidence_in_unrelated_audio(avatar_speech, user_speech):
    max_lag = 700 * SR // 1000
    for start in (0, 8000, 16000):
        mic = user_speech[start:start + 16000]
        ref = avatar_speech[start:start + 16000 + max_lag]
        assert gcc_phat(mic, ref, max_lag).confidence < MIN_PEAK_RATIO

def test_the_tracker_ignores_a_stray_peak_and_follows_a_real_move():
    tracker = DelayTracker(agree=3, tolerance=64)
    for lag in (1600, 1605, 1598):
        tracker.update(LagEstimate(lag, 20.0))
    assert tracker.delay == 1600
    assert not tracker.update(LagEstimate(5000, 30.0))  # one wrong peak (double talk)
    assert not tracker.update(LagEstimate(9000, 2.0))  # no confidence: ignored
    assert tracker.delay == 1600
    for lag in (2400, 2402, 2399):
        tracker.update(LagEstimate(lag, 20.0))
    assert tracker.delay == 2400


@pytest.mark.parametrize("delay_ms, gain", [(80, 0.5), (250, 1.0), (500, 1.0)])
def test_the_canceller_finds_the_delay_and_removes_the_echo(avatar_speech, delay_ms, gain):
    total = len(avatar_speech) + SR
    mic = echo_of(avatar_speech, delay_ms, gain, total)
    canceller, out = run_canceller(avatar_speech, mic)
    # the far end is timed as a client plays it: after the latest hand-over so far (here up to ~20 ms late)
    assert canceller.delay_ms is not None and -25 <= canceller.delay_ms - delay_ms <= 5, canceller.stats()
    tail = slice(len(out) // 2, len(out))  # converged
    assert erle_db(mic[tail], out[tail]) >= 20, erle_db(mic[tail], out[tail])
    assert canceller.erle_db is not None and canceller.erle_db >= 10, canceller.stats()


def test_a_drifting_delay_is_followed(avatar_speech):
    speech = np.concatenate([avatar_speech, avatar_speech])
    total = len(speech) + SR
    frames = total // FRAME
    # a clock drifting by 0.5 ms/s, and halfway the client's jitter buffer grows by 80 ms
    delays = 120 + np.arange(frames) * 0.02 * 0.5 + np.where(np.arange(frames) >= frames // 2, 80, 0)
    mic = echo_of(speech, delays, 0.7, total)
    canceller, out = run_canceller(speech, mic)
    assert canceller.tracker.moves >= 2, canceller.tracker.__dict__
    assert -25 <= canceller.delay_ms - delays[-1] <= 6, (canceller.stats(), delays[-1])
    tail = slice(len(out) * 3 // 4, len(out) - SR)
    assert erle_db(mic[tail], out[tail]) >= 10


def test_the_vad_hears_the_user_over_the_echo_but_not_the_echo_alone(avatar_speech, user_speech):
    """The point of it all: after the canceller, Silero finds no speech in the avatar's echo at 0 dB,
    and still finds the user's sentence spoken over it."""
    model = SileroModel()
    total = len(avatar_speech) + SR
    mic = echo_of(avatar_speech, 250, 1.0, total)
    assert speech_windows(mic, model) > 50  # the raw echo is plainly speech to the VAD
    _, out = run_canceller(avatar_speech, mic)
    settled = 3 * SR  # the first delay estimates need ~1.5 s of the avatar's voice
    assert speech_windows(out[settled:], model) <= 2  # a stray window, never a turn (200 ms = 6 windows)

    with_user = mic.copy()
    at = 6 * SR
    with_user[at:at + len(user_speech)] += user_speech
    _, out = run_canceller(avatar_speech, with_user)  # the avatar talks on: double talk all along
    heard = voiced(out[at:at + len(user_speech)], model)
    assert longest_run(heard) >= 7, heard  # 200 ms of speech in a row: a turn starts, the avatar is interrupted
    assert sum(heard) >= 0.3 * speech_windows(user_speech, model)


@pytest.mark.parametrize("noise", [0.0, 0.001], ids=["silent-mic", "noisy-mic"])
def test_a_client_that_hears_no_echo_is_half_duplex_only_at_first(avatar_speech, user_speech, noise):
    """A headset (or an aiortc client) sends no echo: after the avatar's first second or so the canceller
    knows, stops silencing the microphone while the avatar speaks, and the user is heard over it."""
    total = len(avatar_speech) + SR
    mic = np.random.default_rng(2).normal(0, noise, total).astype(np.float32)
    at = 5 * SR
    mic[at:at + len(user_speech)] += user_speech
    canceller, out = run_canceller(avatar_speech, mic)
    assert canceller.no_echo and canceller.delay_ms is None
    assert canceller.muted_blocks < 300  # at most the first 3 s of the avatar's voice
    heard = voiced(out[at:at + len(user_speech)], SileroModel())
    assert sum(heard) >= 0.8 * speech_windows(user_speech, SileroModel())


def test_disabled_it_is_the_identity_and_keeps_no_reference(avatar_speech):
    canceller = EchoCanceller(enabled=False)
    mic = avatar_speech[:FRAME * 10]
    canceller.reference(np.ones(FRAME, np.int16), 1.0, 0)
    assert not canceller.far.started
    assert canceller.process(mic, 1.0) is mic


def test_ring_and_far_end_fill_gaps_with_silence():
    ring = Ring(100)
    ring.write(0, np.ones(10, np.float32))
    ring.write(30, np.full(10, 2.0, np.float32))  # 20 samples skipped
    assert ring.read(0, 40).tolist() == [1.0] * 10 + [0.0] * 20 + [2.0] * 10
    ring.write(200, np.full(10, 3.0, np.float32))
    assert ring.read(0, 10).tolist() == [0.0] * 10  # older than the ring holds
    assert ring.read(195, 20).tolist() == [0.0] * 5 + [3.0] * 10 + [0.0] * 5
    far = FarEnd()
    far.push(np.full(FRAME, 16384, np.int16), 10.0, 0)
    far.push(np.full(FRAME, 16384, np.int16), 10.06, 3 * FRAME)  # two chunks skipped by the track: silence
    assert far.read(0, 4 * FRAME).tolist() == [0.5] * FRAME + [0.0] * 2 * FRAME + [0.5] * FRAME
    far.push(np.full(FRAME, 8192, np.int16), 10.095, 4 * FRAME)  # a late track's burst: plays after the one before
    assert far.read(4 * FRAME, FRAME).tolist() == [0.25] * FRAME
    assert far.t0 == pytest.approx(10.0)


def test_hand_over_jitter_does_not_warp_the_reference(avatar_speech):
    """The client plays by the track's timestamps: chunks handed over 0-15 ms late land where their
    pts says, end to end, and the timeline's origin is the earliest hand-over."""
    rng = np.random.default_rng(1)
    far = FarEnd()
    chunks = len(avatar_speech) // FRAME
    for k in range(chunks):
        far.push((avatar_speech[k * FRAME:(k + 1) * FRAME] * 32767).astype(np.int16),
                 20.0 + k * 0.02 + abs(rng.normal(0, 0.005)), k * FRAME)
    back = far.read(chunks * FRAME - far._ring.size, far._ring.size)
    sent = avatar_speech[chunks * FRAME - far._ring.size:chunks * FRAME]
    assert np.max(np.abs(back - sent)) < 1e-4
    assert far.t0 == pytest.approx(20.0, abs=0.001)


def test_the_mic_clock_takes_the_earliest_arrival():
    clock = MicClock(window_s=1.0)
    anchors = [clock.add(320, 5.0 + (k + 1) * 0.02 + (0.03 if k % 3 else 0.0)) for k in range(30)]
    assert anchors[-1] == pytest.approx(5.0)


def test_auto_cancels_for_clients_that_say_nothing_or_have_none():
    assert wanted("auto", None) and wanted("auto", False) and not wanted("auto", True)
    assert wanted("on", True) and not wanted("off", None)
