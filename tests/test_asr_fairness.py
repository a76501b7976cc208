"""The recogniser's queue: round-robin between sources, speculation replaced, finals kept, cancellation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from listen.asr import ASRBackend, ASRBusy, ASRWorker
from listen.asrqueue import SESSION_TURNS, ASRRequest, FairQueue, QueueFull


def request(source, samples: int, speculative: bool = False, group: str = "session") -> ASRRequest:
    sink: list = []
    return ASRRequest(np.zeros(samples, np.float32), sink.append, sink.append, time.perf_counter(), source,
                      speculative, group)


def sizes(queue: FairQueue, count: int) -> list[tuple[str, int]]:
    taken = []
    for _ in range(count):
        item = queue.get()
        taken.append((item.source, item.audio.size))
    return taken


def test_sources_are_served_in_turn_however_much_one_of_them_sends():
    queue = FairQueue()
    for i in range(4):
        queue.put(request("flood", 100 + i))
    queue.put(request("talker", 1))
    queue.put(request("socket", 2))
    assert sizes(queue, 6) == [("flood", 100), ("talker", 1), ("socket", 2),
                               ("flood", 101), ("flood", 102), ("flood", 103)]
    assert len(queue) == 0


def test_sessions_go_before_waiting_sockets_and_sockets_still_get_their_turn():
    queue = FairQueue()
    for i in range(3):
        queue.put(request(f"socket{i}", 100 + i, group="socket"))
    assert queue.get().source == "socket0"  # being transcribed when the talkers' turns end
    for i in range(SESSION_TURNS + 1):
        queue.put(request(f"talker{i}", i))
    taken = sizes(queue, SESSION_TURNS + 3)
    assert taken == [*[(f"talker{i}", i) for i in range(SESSION_TURNS)], ("socket1", 101),
                     (f"talker{SESSION_TURNS}", SESSION_TURNS), ("socket2", 102)]


def test_a_newer_speculation_replaces_the_waiting_one_and_never_a_final():
    queue = FairQueue()
    first = request("s", 1, speculative=True)
    queue.put(request("s", 10))
    queue.put(first)
    assert queue.put(request("s", 2, speculative=True)) is first
    assert first.cancelled and queue.replaced == 1
    assert len(queue) == 2
    assert sizes(queue, 2) == [("s", 10), ("s", 2)]  # the final first, then only the latest speculation


def test_a_speculation_kept_as_a_final_is_not_replaced_by_the_next_turns():
    queue = FairQueue()
    wanted = request("s", 1, speculative=True)
    queue.put(wanted)
    queue.promote(wanted)
    assert queue.put(request("s", 2, speculative=True)) is None
    assert not wanted.cancelled
    assert sizes(queue, 2) == [("s", 1), ("s", 2)]


def test_a_flooding_source_is_refused_alone_and_the_queue_as_a_whole_is_bounded():
    queue = FairQueue(max_finals_per_source=2, max_waiting=3)
    queue.put(request("flood", 1))
    queue.put(request("flood", 2))
    with pytest.raises(QueueFull):
        queue.put(request("flood", 3))
    queue.put(request("other", 4, speculative=True))
    with pytest.raises(QueueFull):
        queue.put(request("third", 5))
    # the end of other's turn pushes out other's own speculation, not anyone's final
    queue.put(request("other", 6))
    assert len(queue) == 3
    assert sizes(queue, 3) == [("flood", 1), ("other", 6), ("flood", 2)]


def test_cancelled_requests_are_never_served():
    queue = FairQueue()
    gone = request("a", 1)
    queue.put(gone)
    queue.put(request("a", 2))
    queue.put(request("b", 3))
    queue.put(request("b", 4, speculative=True))
    assert queue.cancel(gone) and not queue.cancel(gone)
    assert queue.cancel_source("b") == 2
    assert len(queue) == 1
    assert sizes(queue, 1) == [("a", 2)]
    assert queue.cancelled == 3


def test_drain_stops_a_waiting_get():
    queue = FairQueue()
    got: list = []
    thread = threading.Thread(target=lambda: got.append(queue.get()), daemon=True)
    thread.start()
    time.sleep(0.05)
    assert queue.drain() == []
    thread.join(2)
    assert got == [None]


class GatedBackend(ASRBackend):
    name = "gated"

    def __init__(self, gate: threading.Event, order: list):
        self.gate = gate
        self.order = order

    def transcribe(self, audio):
        self.gate.wait(5)
        self.order.append(audio.size)
        return str(audio.size)

    def close(self):
        pass


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_the_worker_serves_a_talker_between_a_floods_utterances_and_tells_the_abandoned_nothing():
    gate = threading.Event()
    order: list[int] = []
    worker = ASRWorker(lambda: GatedBackend(gate, order))
    answers: list[str] = []

    def heard(transcript):
        answers.append(transcript.text)
    try:
        worker.submit(np.zeros(100, np.float32), heard, answers.append, source="flood")
        wait_for(lambda: worker.pending == 0)  # the worker holds the first one
        for size in (101, 102, 103):
            worker.submit(np.zeros(size, np.float32), heard, answers.append, source="flood")
        with pytest.raises(ASRBusy, match="say it again"):
            for size in range(104, 110):
                worker.submit(np.zeros(size, np.float32), heard, answers.append, source="flood")
        talker = worker.submit(np.zeros(7, np.float32), heard, answers.append, source="talker")
        gone = worker.submit(np.zeros(8, np.float32), heard, answers.append, source="gone")
        assert worker.cancel(gone)
        assert not talker.cancelled
        gate.set()
        wait_for(lambda: len(order) == 6)
        assert order[:3] == [100, 101, 7]  # the talker waited for one of the flood's utterances, not four
        assert 8 not in order and "8" not in answers
    finally:
        gate.set()
        worker.close()
