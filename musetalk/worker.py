"""The process-wide MuseTalk inference worker: one thread owns the models and the device.

Sessions submit requests (a batch of frames each) to one bounded queue. The
worker takes whatever is queued, up to `max_batch` frames over all sessions,
drops requests whose session was interrupted meanwhile (stale epoch), runs the
whisper encoder, the UNet and the VAE decoder once for the lot, and hands each
session back its own faces. Batching across sessions is what keeps a GPU busy
when several people talk at once; one owner keeps CUDA single-threaded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from musetalk.features import BatchAudio, batch_features, encode_windows
from musetalk.accel import bucket
from musetalk.loader import MuseTalkModels
from musetalk.vae import decode_to_bgr

logger = logging.getLogger(__name__)

REQUEST_QUEUE_SIZE = 64
POLL_S = 0.05
JOIN_TIMEOUT_S = 5.0
GATHER_S = 0.02  # how long a batch waits for other speaking sessions' requests (at least)
GATHER_PASS_FRACTION = 0.25  # ... or this fraction of the last pass, on a slow device
MAX_GATHER_S = 0.5
ACTIVE_S = 1.0  # a session that sent or got a request this recently (or within 2 passes) counts as speaking


@dataclass
class LipSyncRequest:
    """One session's batch: its audio windows, its avatar latents and a staleness check."""

    owner: str
    audio: BatchAudio
    latents: torch.Tensor  # (frames, 8, 32, 32), float32 on the CPU
    is_current: Callable[[], bool]
    faces: np.ndarray | None = None  # (frames, 256, 256, 3) BGR uint8 once done
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def frames(self) -> int:
        return int(self.latents.shape[0])

    def finish(self, faces: np.ndarray | None = None, error: BaseException | None = None) -> None:
        self.faces, self.error = faces, error
        self.done.set()


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    dropped: int = 0  # requests dropped as stale
    shared_batches: int = 0  # batches that held more than one session's frames
    busy_s: float = 0.0  # time spent in inference


class InferenceWorker:
    """Owns MuseTalkModels; `infer` is called from many session threads, inference runs on one."""

    def __init__(self, models: MuseTalkModels, max_batch: int, pad_to_bucket: bool = False):
        self.models = models
        self.max_batch = max_batch
        self.pad_to_bucket = pad_to_bucket  # compiled models: run a few fixed batch sizes (musetalk/accel.py)
        self.stats = WorkerStats()
        self.on_batch: Callable[[int, float], None] | None = None  # (frames, seconds) per pass (metrics)
        self._requests: queue.Queue[LipSyncRequest] = queue.Queue(maxsize=REQUEST_QUEUE_SIZE)
        self._stopping = threading.Event()
        self._last_seen: dict[str, float] = {}  # owner -> monotonic time of its last request or answer
        self._last_pass_s = 0.0
        self._thread = threading.Thread(target=self._run, name="musetalk-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.error("musetalk worker did not stop within %.0f s", JOIN_TIMEOUT_S)
        while True:
            try:
                self._requests.get_nowait().finish()
            except queue.Empty:
                return

    def infer(self, request: LipSyncRequest, cancelled: threading.Event) -> np.ndarray | None:
        """Queue `request` and wait for its faces; None if it went stale or `cancelled` was set."""
        while True:
            if cancelled.is_set() or self._stopping.is_set():
                return None
            try:
                self._requests.put(request, timeout=POLL_S)
                break
            except queue.Full:
                continue
        while not request.done.wait(POLL_S):
            if cancelled.is_set() or self._stopping.is_set():
                return None
        if request.error is not None:
            raise request.error
        return request.faces

    # ---- worker thread --------------------------------------------------------
    def _run(self) -> None:
        carry: LipSyncRequest | None = None
        while not self._stopping.is_set():
            if carry is None:
                try:
                    carry = self._requests.get(timeout=POLL_S)
                except queue.Empty:
                    continue
            batch, carry = self._gather(carry)
            live = [r for r in batch if r.is_current()]
            for request in batch:
                if request not in live:
                    self.stats.dropped += 1
                    request.finish()
            if not live:
                continue
            started = time.perf_counter()
            try:
                faces = self._infer(live)
            except Exception as exc:
                logger.exception("musetalk inference failed for %d requests", len(live))
                for request in live:
                    request.finish(error=exc)
                continue
            start = 0
            answered = time.monotonic()
            for request in live:
                request.finish(faces[start:start + request.frames])
                self._last_seen[request.owner] = answered  # its next request is coming
                start += request.frames
            self._last_pass_s = time.perf_counter() - started
            self.stats.busy_s += self._last_pass_s
            if self.on_batch is not None:
                self.on_batch(start, self._last_pass_s)
            self.stats.batches += 1
            self.stats.frames += start
            if len({r.owner for r in live}) > 1:
                self.stats.shared_batches += 1
        if carry is not None:
            carry.finish()

    def _gather(self, first: LipSyncRequest) -> tuple[list[LipSyncRequest], LipSyncRequest | None]:
        """`first` plus more requests, up to max_batch frames; the request that did not fit is carried.

        While other sessions are speaking (seen within ACTIVE_S, or two passes
        on a slow device), wait a little for their next request so their frames
        share this pass: GATHER_S, or a quarter of the last pass when passes are
        slow (a session needs a moment between its answer and its next request).
        Otherwise two sessions fall into alternating single-session batches.
        """
        batch, frames = [first], first.frames
        now = time.monotonic()
        self._last_seen[first.owner] = now
        active = max(ACTIVE_S, 2 * self._last_pass_s)
        self._last_seen = {o: t for o, t in self._last_seen.items() if now - t < active}
        deadline = now + min(MAX_GATHER_S, max(GATHER_S, GATHER_PASS_FRACTION * self._last_pass_s))
        while frames < self.max_batch:
            waiting_for_others = any(o not in {r.owner for r in batch} for o in self._last_seen)
            remaining = deadline - time.monotonic() if waiting_for_others else 0.0
            try:
                request = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
            except queue.Empty:
                return batch, None
            self._last_seen[request.owner] = time.monotonic()
            if frames + request.frames > self.max_batch:
                return batch, request
            batch.append(request)
            frames += request.frames
        return batch, None

    @torch.inference_mode()
    def _infer(self, requests: list[LipSyncRequest]) -> np.ndarray:
        models = self.models
        layers = encode_windows(models, [w for r in requests for w in r.audio.windows])
        per_request, start = [], 0
        for request in requests:
            count = len(request.audio.windows)
            per_request.append(batch_features(request.audio, layers[start:start + count]))
            start += count
        audio = torch.cat(per_request)
        audio = models.pe(audio.float()).to(models.dtype)
        latents = torch.cat([r.latents for r in requests]).to(models.device, models.dtype)
        faces = []
        for start in range(0, latents.shape[0], self.max_batch):
            part_latents, part_audio = latents[start:start + self.max_batch], audio[start:start + self.max_batch]
            frames = part_latents.shape[0]
            if self.pad_to_bucket:
                extra = bucket(frames, self.max_batch) - frames
                part_latents = torch.cat([part_latents, part_latents.new_zeros((extra, *part_latents.shape[1:]))])
                part_audio = torch.cat([part_audio, part_audio.new_zeros((extra, *part_audio.shape[1:]))])
            out = models.unet(part_latents, 0, encoder_hidden_states=part_audio).sample
            faces.append(decode_to_bgr(models.vae, out[:frames]))
        return np.concatenate(faces)
