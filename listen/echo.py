"""Echo cancellation of one session's uplink, with the avatar's own audio as the far-end reference.

A client without echo cancellation (a kiosk, a speakerphone, a phone bridge, a
browser with it switched off) sends the avatar's voice back in its microphone,
50-500 ms later. The server knows exactly what the avatar said and when: every
20 ms chunk handed to WebRTC reaches `EchoCanceller.reference` with the session
clock's time of hand-over. `EchoCanceller.process` runs on the listener thread,
before the VAD, the turn detector and recognition:

- `FarEnd` places the avatar's audio on the timeline a client plays it by, `MicClock`
  the microphone's samples on the same wall clock (arrival, earliest over 10 s);
- `DelayTracker` (GCC-PHAT, listen/echodelay.py) estimates the echo delay from the
  signals themselves and follows it;
- each 10 ms block goes through WebRTC's AEC3 (`livekit.rtc.AudioProcessingModule`,
  Apache-2.0) with its reference: echoes up to LEAD_MS late are left to AEC3's own
  delay search, later ones are brought back to that lead;
- AEC3's output is what the VAD hears, except: half duplex (silence while the avatar
  speaks) until AEC3 has converged after each (re)alignment; silence for blocks the
  linear filter (listen/echolinear.py) shows to be echo alone; and the linear filter's
  output under double talk once it is good, since AEC3's suppressor gates a voice's
  first syllables. Recognition gets the linear filter's output (`for_asr`).

The canceller is enabled per session (`enabled`), and the AEC3 module is created
only on first use, so a client with its own echo cancellation costs nothing.
"""

from __future__ import annotations

import argparse
import threading
from collections import deque
from typing import Callable, Protocol

import numpy as np

from listen.echodelay import DelayTracker, LagEstimate, gcc_phat
from listen.echolinear import LinearEcho
from media import SAMPLE_RATE

BLOCK = SAMPLE_RATE // 100  # AEC3 takes 10 ms frames
LEAD_MS = 250  # echoes up to this late are left to AEC3's own delay search (it reaches ~450 ms); later ones are
# brought back to this lead, so that an error of -230..+200 ms in the estimate still cancels
MAX_DELAY_MS = 1000  # echo delays searched: 50-500 ms of network, jitter buffers and device, plus margin
WINDOW_S = 1.5  # microphone audio correlated per delay estimate
ESTIMATE_EVERY_S = 0.5
ACQUIRE_EVERY_S = 0.2  # until the first delay is known
MARGIN_MS = 20
LINEAR_LEAD = MARGIN_MS * SAMPLE_RATE // 1000  # the linear filter's 40 ms span the echo at 20 ms +- 20 ms
TRACK_TOLERANCE_MS = 10  # smaller moves are left to AEC3's own delay search
REALIGN_MS = 20  # a delay move larger than this counts as a new alignment (converging again)
CONVERGE_S = 1.5  # of avatar speech with the reference aligned, at least, before AEC3's output is trusted alone
CONVERGED_ERLE = 30.0  # ... and AEC3 removing 15 dB of it over the last ~0.5 s
RECENT_DECAY = 0.98
LINEAR_TRUSTED = 100.0  # the linear filter's output goes to the VAD under double talk once it removes 20 dB
LINEAR_YOUNG = 100  # blocks the linear filter adapts on unconditionally (1 s of echo alone) after a (re)alignment
RESIDUAL_GATE = 4.0  # a block the linear filter took 6 dB or more out of, while the avatar speaks, is echo alone
NO_ECHO_ESTIMATES = 5  # estimates over the avatar's voice that find no echo of it: none to cancel, no half duplex
IDLE_MARGIN = SAMPLE_RATE // 2  # after the avatar's last voiced chunk + the longest echo delay + this, AEC3 rests
RING_S = 4.0  # far-end and microphone history kept
ANCHOR_S = 10.0  # the mic timeline's anchor is the earliest arrival over this long
FAR_ACTIVE_RMS = 0.003  # far-end level (full scale 1.0) above which the avatar counts as speaking
ECHO_ALONE = 0.1  # AEC3 kept less than this of the mic's energy: the block may be echo alone
ERLE_DECAY = 0.995  # per 10 ms block: the ERLE figure reflects the last ~2 s of avatar speech
STATS_EVERY_S = 2.0  # an "echo" event (delay, ERLE) at most this often, while the avatar speaks
ECHO_CHOICES = ("auto", "on", "off")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("echo cancellation (the user hears the avatar through a loudspeaker)")
    group.add_argument("--echo-cancel", dest="echo_cancel", choices=ECHO_CHOICES, default="auto",
                       help="remove the avatar's own voice from the user's microphone (for loudspeakers, kiosks, "
                            "phones): auto = for clients that report no echo cancellation of their own or say "
                            "nothing (aiortc, phones); on = always; off = never (headsets only)")


def wanted(setting: str, client_cancels: bool | None) -> bool:
    """Whether a session cancels echo: `client_cancels` is what the client said of its own AEC (None: nothing)."""
    if setting == "auto":
        return client_cancels is not True
    return setting == "on"


class Processor(Protocol):
    """10 ms int16 blocks in, echo-cancelled in place (AEC3's interface, see `LivekitAEC3`)."""

    def reverse(self, block: np.ndarray) -> None: ...

    def capture(self, block: np.ndarray, delay_ms: int) -> None: ...


class LivekitAEC3:
    """WebRTC's AEC3 as wrapped by the livekit wheel (imported on first use: it loads a native library)."""

    def __init__(self) -> None:
        try:
            from livekit import rtc
        except ImportError:
            raise RuntimeError("echo cancellation needs the livekit package: pip install -r requirements.txt, "
                               "or run with --echo-cancel off") from None
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self._delay_ms: int | None = None

    def _frame(self, block: np.ndarray):
        return self._rtc.AudioFrame(block.tobytes(), SAMPLE_RATE, 1, BLOCK)

    def reverse(self, block: np.ndarray) -> None:
        self._apm.process_reverse_stream(self._frame(block))

    def capture(self, block: np.ndarray, delay_ms: int) -> None:
        frame = self._frame(block)
        if delay_ms != self._delay_ms:  # AEC3 keeps it: one FFI call less per 10 ms
            self._apm.set_stream_delay_ms(delay_ms)
            self._delay_ms = delay_ms
        self._apm.process_stream(frame)
        block[:] = np.frombuffer(frame.data, np.int16)


class Ring:
    """The last `size` samples of a stream addressed by absolute sample index; unknown samples read as 0."""

    def __init__(self, size: int):
        self._data = np.zeros(size, np.float32)
        self.size = size
        self.end = 0  # one past the newest sample written

    def write(self, index: int, samples: np.ndarray) -> None:
        if index > self.end:  # a gap (ticks skipped, frames lost): silence
            self._data[np.arange(max(self.end, index - self.size), index) % self.size] = 0.0
        if len(samples) > self.size:
            index, samples = index + len(samples) - self.size, samples[-self.size:]
        start = index % self.size
        if start + len(samples) <= self.size:
            self._data[start:start + len(samples)] = samples
        else:
            self._data[np.arange(index, index + len(samples)) % self.size] = samples
        self.end = max(self.end, index + len(samples))

    def read(self, index: int, count: int) -> np.ndarray:
        out = np.zeros(count, np.float32)
        lo, hi = max(index, self.end - self.size), min(index + count, self.end)
        if hi > lo:
            start, stop = lo % self.size, (hi - 1) % self.size + 1
            if start < stop:  # no wrap: a slice (the common case, cheaper than fancy indexing)
                out[lo - index:hi - index] = self._data[start:stop]
            else:
                out[lo - index:hi - index] = self._data[np.arange(lo, hi) % self.size]
        return out


class StreamClock:
    """Wall time of a stream's samples: `stamp(end, t)` says sample `end` was reached at t (or later);
    the anchor (wall time of sample 0) is the earliest such claim over the last `window_s`."""

    def __init__(self, window_s: float = ANCHOR_S):
        self._window = int(window_s * SAMPLE_RATE)
        self._candidates: deque[tuple[int, float]] = deque()  # (sample index, anchor), increasing anchors
        self.anchor = 0.0

    def stamp(self, end: int, at: float) -> float:
        anchor = at - end / SAMPLE_RATE
        while self._candidates and self._candidates[-1][1] >= anchor:
            self._candidates.pop()
        self._candidates.append((end, anchor))
        while self._candidates[0][0] < end - self._window:
            self._candidates.popleft()
        self.anchor = self._candidates[0][1]
        return self.anchor


class FarEnd:
    """The avatar's audio as handed to WebRTC, on the wall-clock timeline a client plays it by; thread-safe.

    A client plays the audio by its RTP timestamps, continuously, behind a jitter buffer: so a
    chunk's place on the timeline is its position in the track (its pts, in samples), and the
    wall time of position 0 (`t0`) is the earliest hand-over over the last ANCHOR_S (`StreamClock`):
    a chunk handed over a few ms late, or a burst after the track ran late, does not move the
    audio the client plays. Placing chunks by their own hand-over time instead warps the reference
    by the hand-over jitter (gaps of silence, shifts), which AEC3 survives and a linear filter does not.
    Positions the track skipped read as silence.
    """

    def __init__(self, seconds: float = RING_S):
        self._ring = Ring(int(seconds * SAMPLE_RATE))
        self._lock = threading.Lock()
        self._clock = StreamClock()
        self.t0: float | None = None  # wall time of ring position 0
        self.chunks = 0
        self.last_voiced = -(1 << 40)  # position just past the newest chunk with the avatar's voice in it

    def push(self, samples: np.ndarray, handed: float, position: int) -> None:
        """One chunk (int16 or float) at sample `position` of the track, handed to WebRTC at wall time `handed`."""
        data = samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)
        with self._lock:
            self.t0 = self._clock.stamp(position, handed)
            self._ring.write(position, data)
            self.chunks += 1
            if float(np.sqrt(np.mean(data ** 2))) >= FAR_ACTIVE_RMS:
                self.last_voiced = position + len(data)

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def read(self, position: int, count: int) -> np.ndarray:
        with self._lock:
            return self._ring.read(position, count)


class MicClock(StreamClock):
    """The microphone's samples, counted as they come out of the resampler, stamped by their arrival."""

    def __init__(self, window_s: float = ANCHOR_S):
        super().__init__(window_s)
        self.samples = 0

    def add(self, count: int, arrival: float) -> float:
        """`count` samples arrived at `arrival`; returns the anchor (wall time of sample 0)."""
        self.samples += count
        return self.stamp(self.samples, arrival)


class EchoCanceller:
    """One session's canceller: `far.push` from the audio track, `process` on the listener thread."""

    def __init__(self, processor_factory: Callable[[], Processor] = LivekitAEC3, enabled: bool = True):
        self._factory = processor_factory
        self._processor: Processor | None = None
        self.enabled = enabled
        self.far = FarEnd()
        self.clock = MicClock()
        self.tracker = DelayTracker(tolerance=TRACK_TOLERANCE_MS * SAMPLE_RATE // 1000)
        self._mic = Ring(int(RING_S * SAMPLE_RATE))
        self._linear = LinearEcho(BLOCK)
        self.for_asr = np.zeros(0, np.float32)  # the last `process` output, echo subtracted but not suppressed
        self._pending = np.zeros(0, np.float32)  # < one block of microphone audio
        self._block_index = 0  # mic sample index of the next block to process
        self._anchor = 0.0
        self._next_estimate = int(WINDOW_S * SAMPLE_RATE)
        self._max_lag = MAX_DELAY_MS * SAMPLE_RATE // 1000
        self._mic_energy = 0.0
        self._out_energy = 0.0
        self.total_mic_energy = 0.0  # over all blocks with the avatar speaking (for the bench)
        self.total_out_energy = 0.0
        self.blocks = 0
        self.far_blocks = 0
        self.aligned_far_blocks = 0  # blocks of avatar speech processed with a known delay
        self._converged = False
        self._untrusted = 0  # delay estimates over the avatar's speech that found no echo
        self.realignments = 0
        self._lin_mic = 0.0  # ... and the linear filter's, on blocks of echo alone
        self._lin_out = 0.0
        self._recent_mic = 0.0  # energies of the last ~0.5 s of avatar speech (the convergence test)
        self._recent_out = 0.0
        self.muted_blocks = 0  # blocks silenced while the canceller was still converging
        self.gated_blocks = 0  # blocks of residual echo silenced for the VAD
        self.idle_blocks = 0  # blocks passed through untouched: the avatar long silent
        self.on_stats: Callable[[dict], None] | None = None  # called on the listener thread
        self._next_stats = int(STATS_EVERY_S * SAMPLE_RATE)
        self._far_blocks_reported = 0

    def reference(self, samples: np.ndarray, handed: float, position: int) -> None:
        """The audio track's tap: the chunk at sample `position` of the track, handed to WebRTC at wall time
        `handed` (kept only when enabled)."""
        if self.enabled:
            self.far.push(samples, handed, position)

    # ---- figures ---------------------------------------------------------------
    @property
    def delay_ms(self) -> float | None:
        """The echo delay in use: hand-over to WebRTC -> the echo's arrival in the uplink."""
        delay = self.tracker.delay
        return None if delay is None else delay * 1000.0 / SAMPLE_RATE

    @property
    def erle_db(self) -> float | None:
        """Echo return loss enhancement over the last seconds of avatar speech (mic in / out energy)."""
        if self._mic_energy <= 0:
            return None
        return float(10 * np.log10(self._mic_energy / (self._out_energy + 1e-8 * self._mic_energy)))  # at most 80 dB

    @property
    def no_echo(self) -> bool:
        """The avatar has spoken a while and none of it came back (a headset, a client with working AEC)."""
        return self.tracker.delay is None and self._untrusted >= NO_ECHO_ESTIMATES

    @property
    def converged(self) -> bool:
        """The delay is known, and since then AEC3 has had the avatar's voice long enough to remove it."""
        return self._converged

    def stats(self) -> dict:
        delay, erle = self.delay_ms, self.erle_db
        return {"enabled": self.enabled, "converged": self.converged, "echo": not self.no_echo,
                "delay_ms": None if delay is None else round(delay, 1),
                "erle_db": None if erle is None else round(erle, 1)}

    # ---- the stream ------------------------------------------------------------
    def process(self, samples: np.ndarray, arrival: float) -> np.ndarray:
        """16 kHz mono float32 from the uplink (arrived at wall time `arrival`) -> echo removed.

        Output lags input by less than 10 ms (whole blocks only); disabled, it is the input.
        """
        if not self.enabled:
            self.for_asr = samples
            return samples
        if not self.far.started:  # the avatar has not sent a sample yet: nothing to cancel
            self._anchor = self.clock.add(len(samples), arrival)
            self._mic.write(self.clock.samples - len(samples), samples)
            self._block_index = self.clock.samples
            self.for_asr = samples
            return samples
        start = self.clock.samples
        self._anchor = self.clock.add(len(samples), arrival)
        self._mic.write(start, samples)
        self._pending = np.concatenate([self._pending, samples])
        if self.clock.samples >= self._next_estimate:
            self._estimate()
        count = len(self._pending) // BLOCK
        out = np.empty(count * BLOCK, np.float32)
        linear = np.empty(count * BLOCK, np.float32)
        for i in range(count):
            part = slice(i * BLOCK, (i + 1) * BLOCK)
            out[part], linear[part] = self._block(self._pending[part])
        self.for_asr = linear
        self._pending = self._pending[count * BLOCK:].copy()
        if self.clock.samples >= self._next_stats:
            self._report()
        return out

    def _report(self) -> None:
        self._next_stats = self.clock.samples + int(STATS_EVERY_S * SAMPLE_RATE)
        if self.on_stats is not None and self.far_blocks > self._far_blocks_reported:
            self._far_blocks_reported = self.far_blocks
            self.on_stats(self.stats())

    def _far_index(self, mic_index: int) -> int:
        """The far-end sample handed over at the wall time microphone sample `mic_index` arrived."""
        return mic_index + round((self._anchor - self.far.t0) * SAMPLE_RATE)

    def _estimate(self) -> None:
        every = ESTIMATE_EVERY_S if self.tracker.delay is not None else ACQUIRE_EVERY_S
        self._next_estimate = self.clock.samples + int(every * SAMPLE_RATE)
        window = int(WINDOW_S * SAMPLE_RATE)
        end = self.clock.samples
        mic = self._mic.read(end - window, window)
        ref = self.far.read(self._far_index(end - window) - self._max_lag, window + self._max_lag)
        if float(np.sqrt(np.mean(ref ** 2))) < FAR_ACTIVE_RMS:
            return
        if float(np.sqrt(np.mean(mic ** 2))) < FAR_ACTIVE_RMS / 4:  # the avatar spoke, the microphone stayed quiet
            self._untrusted += 1
            return
        estimate = gcc_phat(decimate(mic), decimate(ref), self._max_lag // 2, SAMPLE_RATE // 2)
        if estimate.confidence < self.tracker.min_ratio:
            self._untrusted += 1
        before = self.tracker.delay
        if self.tracker.update(LagEstimate(estimate.lag * 2, estimate.confidence)):
            if before is None or abs(self.tracker.delay - before) > REALIGN_MS * SAMPLE_RATE // 1000:
                self._realigned()

    @staticmethod
    def _shift(delay: int | None) -> int:
        """How far behind the microphone's own time its reference is read: AEC3 finds echoes up to ~450 ms
        after their reference by itself, so the reference moves back only for what exceeds LEAD_MS."""
        margin = MARGIN_MS * SAMPLE_RATE // 1000  # far end kept unread: hand-over jitter
        return margin if delay is None else max(margin, delay - LEAD_MS * SAMPLE_RATE // 1000)

    def _realigned(self) -> None:
        """The echo moved (first estimate, or a client's buffer grew): AEC3 takes a second or two to follow,
        and until its output shows it has, the VAD hears silence while the avatar speaks."""
        self.aligned_far_blocks = 0
        self._converged = False
        self._recent_mic = self._recent_out = 0.0
        self._lin_mic = self._lin_out = 0.0
        self._linear = LinearEcho(BLOCK)  # learns the moved echo afresh
        self.realignments += 1

    def _block(self, mic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One 10 ms block -> (AEC3's output, for the VAD; the linear filter's, for recognition)."""
        index = self._block_index
        self._block_index += BLOCK
        self.blocks += 1
        if self._far_index(index) - self.far.last_voiced > self._max_lag + IDLE_MARGIN:
            # The avatar has been silent for longer than any echo takes: nothing to cancel, and no AEC3
            # call (two FFI calls per 10 ms) while a session only listens.
            self.idle_blocks += 1
            return mic.copy(), mic.copy()
        delay = self.tracker.delay
        shift = self._shift(delay)
        lead = 0 if delay is None else max(0, delay - shift)  # how long after its reference AEC3 sees the echo
        ref = self.far.read(self._far_index(index) - shift, BLOCK)
        if self._processor is None:
            self._processor = self._factory()
        processor = self._processor
        ref16 = to_int16(ref)
        processor.reverse(ref16)
        block = to_int16(mic)
        processor.capture(block, lead * 1000 // SAMPLE_RATE)
        out = block.astype(np.float32) / 32768.0
        far_active = float(np.sqrt(np.mean(ref ** 2))) >= FAR_ACTIVE_RMS
        mic_energy, out_energy = float(np.sum(mic ** 2)), float(np.sum(out ** 2))
        linear_ref = self.far.read(self._far_index(index) - (delay or 0) + LINEAR_LEAD, BLOCK)
        linear = self._linear.cancel(mic, linear_ref, lambda error: self._echo_alone(far_active, mic_energy, out_energy, error))
        if far_active:
            self.far_blocks += 1
            self.aligned_far_blocks += self.tracker.delay is not None
            self._mic_energy = self._mic_energy * ERLE_DECAY + mic_energy
            self._out_energy = self._out_energy * ERLE_DECAY + out_energy
            self.total_mic_energy += mic_energy
            self.total_out_energy += out_energy
            self._recent_mic = RECENT_DECAY * self._recent_mic + mic_energy
            self._recent_out = RECENT_DECAY * self._recent_out + out_energy
            if (not self._converged and self.aligned_far_blocks >= CONVERGE_S * 100
                    and self._recent_out * CONVERGED_ERLE < self._recent_mic):
                self._converged = True
        if self.no_echo:  # AEC3 would still duck a voice under the avatar's: pass the microphone as it is
            return mic.copy(), mic.copy()
        if not self.converged and self._far_index(index) - self.far.last_voiced <= self._max_lag:
            # Not converged yet (the first seconds the avatar speaks in a session): its echo may
            # still be in the output, so while it could be, the VAD hears silence (half duplex).
            self.muted_blocks += 1
            out[:] = 0.0
            linear[:] = 0.0
        elif far_active:
            linear_energy = float(np.sum(linear ** 2))
            if out_energy < ECHO_ALONE * mic_energy:  # how well the linear filter does on echo alone
                self._lin_mic = RECENT_DECAY * self._lin_mic + mic_energy
                self._lin_out = RECENT_DECAY * self._lin_out + linear_energy
            if linear_energy * RESIDUAL_GATE < mic_energy:
                # The linear filter took most of this block out: it was the avatar's echo alone (a voice
                # over it keeps the linear output near the microphone's level), and what AEC3 left of
                # it is residual echo. The VAD hears silence.
                self.gated_blocks += 1
                out[:] = 0.0
            elif self._lin_out * LINEAR_TRUSTED < self._lin_mic and self._recent_out * CONVERGED_ERLE < self._recent_mic:
                # A voice over the echo, and the linear filter removes the echo well: the VAD hears its
                # output, the voice whole (AEC3's suppressor would gate its first words as well). Not
                # while AEC3 itself lost track (the echo moved: its last ~0.5 s under 15 dB): then the
                # linear filter, which learns only from blocks AEC3 calls echo alone, may be off too.
                out = linear.copy()
        return out, linear

    def _echo_alone(self, far_active: bool, mic_energy: float, out_energy: float, error: np.ndarray) -> bool:
        """Whether the linear filter may adapt on this block: the avatar speaks, AEC3 found (nearly) only
        echo, and the linear filter's own residual is small (a voice over the echo would make it large;
        AEC3 alone cannot tell, its suppressor gates the voice too), or the filter is still young."""
        if not far_active or self.tracker.delay is None or out_energy >= ECHO_ALONE * mic_energy:
            return False
        return self._linear.adapted < LINEAR_YOUNG or float(np.sum(error ** 2)) < 0.5 * mic_energy


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


def decimate(samples: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz by averaging pairs: enough for a delay estimate in the 200-4000 Hz band, half the FFT."""
    even = samples[:len(samples) // 2 * 2]
    return 0.5 * (even[0::2] + even[1::2])
