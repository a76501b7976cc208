"""Prometheus metrics of one server process (the `prometheus-client` library).

`Metrics` owns its own CollectorRegistry (never the library's global one), is
created once per process and handed to whatever observes: sessions get a
`SessionProbe`, the engine factory, the TTS workers and the LLM client get
callbacks. Values that already live in the sessions (states, queue depths) are
read at scrape time by a collector instead of being mirrored on every change.
"""

from __future__ import annotations

import hmac
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # imported for type hints only: app imports this module
    from media import AVBundle
    from session import Session

logger = logging.getLogger(__name__)

PREFIX = "avatar"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 4.0, 8.0)
BATCH_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SESSION_STATES = ("starting", "broadcast", "new", "connecting", "connected", "disconnected", "failed", "closed")
QUEUES = ("tts_text", "audio_in", "rendered", "output")
GPU_ALLOCATED = f"{PREFIX}_gpu_memory_allocated_bytes"
GPU_RESERVED = f"{PREFIX}_gpu_memory_reserved_bytes"


class Metrics:
    """Every metric of the process, registered in a registry of its own."""

    def __init__(self, engine: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.text_to_voice = Histogram(
            f"{PREFIX}_text_to_first_voiced_frame_seconds",
            "From /human (or /humanaudio) arriving while silent to the first video frame with speech sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.interrupt_flush = Histogram(
            f"{PREFIX}_interrupt_to_flush_seconds",
            "From an interrupt during speech to the first audio frame of the new epoch sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.tts_first_audio = Histogram(
            f"{PREFIX}_tts_first_audio_seconds", "TTS: from a sentence's request to its first audio",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.llm_first_token = Histogram(
            f"{PREFIX}_llm_first_token_seconds", "LLM: from the chat request to the first text delta",
            buckets=LATENCY_BUCKETS, registry=r)
        self.asr = Histogram(
            f"{PREFIX}_asr_seconds", "ASR: from the end of an utterance to its transcript",
            buckets=LATENCY_BUCKETS, registry=r)
        self.turn_stage = Histogram(
            f"{PREFIX}_turn_stage_seconds",
            "Listening, per answered turn: from the end of the user's speech to each stage of the reply "
            "(decision, transcript, llm_first_token, tts_first_audio, first_voiced_frame; a prepared reply's "
            "stages can come before the decision)", ["stage", "mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.preparations = Counter(
            f"{PREFIX}_turn_preparations", "Replies prepared before the end of a user's turn, by outcome: used "
            "(released when the turn ended) or dropped (the user spoke on: the work was wasted)", ["outcome"],
            registry=r)
        self.turns_ended = Counter(
            f"{PREFIX}_turns_ended", "User turns ended, by what ended them (model, transcript, fallback, silence)", ["reason"],
            registry=r)
        self.turns_continued = Counter(
            f"{PREFIX}_turns_continued", "User turns that went on with the turn before (speech resumed within the "
            "fallback silence of a turn the models had ended): that turn's reply was withdrawn", registry=r)
        self.batch_time = Histogram(
            f"{PREFIX}_inference_batch_seconds",
            "Lip-sync inference per batch; stage=session (one session's render step) or worker (a shared GPU pass)",
            ["stage"], buckets=BATCH_TIME_BUCKETS, registry=r)
        self.batch_frames = Histogram(
            f"{PREFIX}_inference_batch_frames", "Frames per lip-sync inference batch", ["stage"],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.frames_sent = Counter(
            f"{PREFIX}_video_frames_sent", "Video frames handed to the transport (rate = delivered fps)", registry=r)
        self.late_ticks = Counter(
            f"{PREFIX}_late_ticks", "Ticks the engine missed (last frame repeated with silence)", registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Errors by kind", ["kind"], registry=r)
        self.http = Counter(f"{PREFIX}_http_responses", "HTTP responses by route and status", ["route", "status"],
                            registry=r)
        self.sessions_started = Counter(f"{PREFIX}_sessions_started", "Sessions created by /offer", registry=r)
        Gauge(f"{PREFIX}_engine_info", "The lip-sync engine this process runs", ["engine"],
              registry=r).labels(engine).set(1)

    # ---- hooks handed to the pipeline ---------------------------------------------
    def probe(self) -> "SessionProbe":
        return SessionProbe(self)

    def observe_tts_first_audio(self, backend: str, seconds: float) -> None:
        self.tts_first_audio.labels(backend).observe(seconds)

    def observe_llm_first_token(self, seconds: float) -> None:
        self.llm_first_token.observe(seconds)

    def observe_asr(self, seconds: float) -> None:
        """For the listening stage: end of the user's utterance -> transcript."""
        self.asr.observe(seconds)

    def observe_batch(self, stage: str, frames: int, seconds: float) -> None:
        self.batch_time.labels(stage).observe(seconds)
        self.batch_frames.labels(stage).observe(frames)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    # ---- scrape ----------------------------------------------------------------------
    def watch(self, sessions: Callable[[], list["Session"]], starting: Callable[[], int]) -> None:
        """Read session states and queue depths at scrape time from these callables."""
        self.registry.register(SessionCollector(sessions, starting))

    def watch_echo(self, stats: Callable[[], dict[str, dict]]) -> None:
        """Read each echo-cancelling session's delay and ERLE at scrape time (session tag -> figures)."""
        self.registry.register(EchoCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class SessionProbe:  # an observers.SessionObserver
    """Watches one session's wire to time the stages that end there.

    Called on the event loop only (track recv(), HTTP handlers, event hub).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._text_at: float | None = None  # when text arrived while the avatar was silent
        self._interrupt: tuple[float, int] | None = None  # (when, epoch it started)
        self._in_speech = False
        self._late_seen = 0

    def text_received(self) -> None:
        if self._text_at is None and not self._in_speech:
            self._text_at = time.perf_counter()

    def interrupted(self, epoch: int) -> None:
        self._text_at = None
        if self._in_speech:
            self._interrupt = (time.perf_counter(), epoch)

    def video_sent(self, bundle: "AVBundle", late_ticks: int) -> None:
        self._metrics.frames_sent.inc()
        if late_ticks > self._late_seen:
            self._metrics.late_ticks.inc(late_ticks - self._late_seen)
            self._late_seen = late_ticks
        self._in_speech = bundle.speech
        if bundle.speech and self._text_at is not None:
            self._metrics.text_to_voice.observe(time.perf_counter() - self._text_at)
            self._text_at = None

    def audio_sent(self, bundle: "AVBundle") -> None:
        if self._interrupt is not None and bundle.epoch >= self._interrupt[1]:
            self._metrics.interrupt_flush.observe(time.perf_counter() - self._interrupt[0])
            self._interrupt = None

    def tts_first_audio(self, backend: str, seconds: float) -> None:
        """From the session's TTS thread (histograms are thread-safe)."""
        self._metrics.observe_tts_first_audio(backend, seconds)

    def reply_prepared(self, used: bool) -> None:
        self._metrics.preparations.labels("used" if used else "dropped").inc()

    def event(self, event: dict[str, Any]) -> None:
        """Every event the session publishes: errors are counted by their source and kind, turns timed."""
        kind = event.get("type")
        if kind == "turn":
            for stage, ms in event.get("ms", {}).items():
                self._metrics.turn_stage.labels(stage, event.get("mode", "")).observe(ms / 1000)
        elif kind == "user_end" and event.get("reason"):
            self._metrics.turns_ended.labels(event["reason"]).inc()
        elif kind == "user_start" and event.get("continues"):
            self._metrics.turns_continued.inc()
        elif kind == "error":
            kind = "_".join(str(part) for part in (event.get("source", "session"), event.get("kind")) if part)
            self._metrics.error(kind)


class SessionCollector(Collector):
    """Session states and queue depths, read when Prometheus scrapes."""

    def __init__(self, sessions: Callable[[], list["Session"]], starting: Callable[[], int]) -> None:
        self._sessions = sessions
        self._starting = starting

    def collect(self) -> Iterable[GaugeMetricFamily]:
        sessions = self._sessions()
        states = dict.fromkeys(SESSION_STATES, 0)
        states["starting"] = self._starting()
        depth_sum = dict.fromkeys(QUEUES, 0)
        depth_max = dict.fromkeys(QUEUES, 0)
        for session in sessions:
            state = "broadcast" if session.broadcast else session.pc.connectionState
            states[state] = states.get(state, 0) + 1
            for name, depth in queue_depths(session).items():
                depth_sum[name] += depth
                depth_max[name] = max(depth_max[name], depth)
        family = GaugeMetricFamily(f"{PREFIX}_sessions", "Sessions by connection state", labels=["state"])
        for state, count in states.items():
            family.add_metric([state], count)
        yield family
        total = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Items queued, summed over sessions", labels=["queue"])
        peak = GaugeMetricFamily(f"{PREFIX}_queue_depth_max", "Deepest session's queue", labels=["queue"])
        for name in QUEUES:
            total.add_metric([name], depth_sum[name])
            peak.add_metric([name], depth_max[name])
        yield total
        yield peak
        yield from gpu_memory()


class EchoCollector(Collector):
    """Per session that cancels echo: the estimated echo delay and the echo reduction achieved."""

    def __init__(self, stats: Callable[[], dict[str, dict]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        delay = GaugeMetricFamily(f"{PREFIX}_echo_delay_ms",
                                  "Estimated echo delay: avatar audio handed to WebRTC -> its echo in the uplink",
                                  labels=["session"])
        erle = GaugeMetricFamily(f"{PREFIX}_echo_erle_db",
                                 "Echo return loss enhancement over the last seconds of avatar speech",
                                 labels=["session"])
        for tag, figures in self._stats().items():
            if figures.get("delay_ms") is not None:
                delay.add_metric([tag], figures["delay_ms"])
            if figures.get("erle_db") is not None:
                erle.add_metric([tag], figures["erle_db"])
        yield delay
        yield erle


def queue_depths(session: "Session") -> dict[str, int]:
    engine = session.engine
    return {"tts_text": session.tts.pending, "audio_in": engine.audio_in.qsize(),
            "rendered": engine.rendered.qsize(), "output": engine.output.qsize()}


def gpu_memory() -> Iterable[GaugeMetricFamily]:
    """CUDA memory per device, when this process has torch loaded with a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    allocated = GaugeMetricFamily(GPU_ALLOCATED, "CUDA memory held by tensors",
                                  labels=["device"])
    reserved = GaugeMetricFamily(GPU_RESERVED, "CUDA memory reserved by the allocator",
                                 labels=["device"])
    for index in range(torch.cuda.device_count()):
        allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
        reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
    yield allocated
    yield reserved


def bearer_matches(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    return header.startswith("Bearer ") and hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())


def route_name(request: web.Request) -> str:
    """The route's pattern (a bounded label set), never the raw path."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"
