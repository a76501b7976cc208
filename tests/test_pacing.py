"""Clock, pacing and frame-order arithmetic, without a network."""

from __future__ import annotations

import queue

import av
import numpy as np
import pytest

from scene import loop_index
from media import CHUNK_SAMPLES, AVBundle, chunks_per_frame
from webrtc import MediaSchedule, SessionClock, StreamStats


class ManualTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ping_pong_plays_forward_then_backward_without_repeating_ends():
    assert [loop_index(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [loop_index(i, 1) for i in range(3)] == [0, 0, 0]
    assert [loop_index(i, 2) for i in range(4)] == [0, 1, 0, 1]


def test_chunks_per_frame():
    assert chunks_per_frame(25) == 2
    assert chunks_per_frame(50) == 1
    assert chunks_per_frame(10) == 5
    with pytest.raises(ValueError):
        chunks_per_frame(30)


def test_clock_due_times_and_current_tick():
    now = ManualTime()
    clock = SessionClock(25, now=now)
    clock.start()
    assert clock.due(0) == 100.0
    assert clock.due(10) == pytest.approx(100.4)
    assert clock.due(10, 0.5) == pytest.approx(100.42)  # the second 20 ms chunk of frame 10
    now.now = 100.399
    assert clock.current_tick() == 9
    now.now = 100.4001
    assert clock.current_tick() == 10
    clock.start()  # a second start keeps the anchor
    assert clock.t0 == 100.0


def bundle(marker: int, epoch: int = 0) -> AVBundle:
    video = av.VideoFrame.from_ndarray(np.full((16, 16, 3), marker, np.uint8), format="bgr24")
    audio = np.full((2, CHUNK_SAMPLES), marker, np.int16)
    return AVBundle(video=video, audio=audio, epoch=epoch, speech=True, events=((), ()))


def make_schedule(source: queue.Queue, epoch=lambda: 0):
    now = ManualTime()
    clock = SessionClock(25, now=now)
    clock.start()
    stats = StreamStats()

    def filler(last):
        return AVBundle(video=last or bundle(0).video, audio=np.zeros((2, CHUNK_SAMPLES), np.int16),
                        epoch=epoch(), speech=False, events=((), ()))

    return MediaSchedule(source, clock, epoch, filler, stats), stats


def test_schedule_gives_each_tick_one_bundle_to_both_tracks():
    source: queue.Queue = queue.Queue()
    for marker in (1, 2, 3):
        source.put(bundle(marker))
    schedule, stats = make_schedule(source)
    first = schedule.bundle(0)
    assert schedule.bundle(0) is first  # the audio track asking later gets the same bundle
    assert schedule.bundle(2).audio[0, 0] == 3  # fetched in order: tick 1 took bundle 2
    assert schedule.bundle(1).audio[0, 0] == 2
    assert stats.ticks == 3 and stats.late_ticks == 0


def test_late_engine_repeats_the_last_frame_with_silence_and_counts_it():
    source: queue.Queue = queue.Queue()
    source.put(bundle(7))
    schedule, stats = make_schedule(source)
    on_time = schedule.bundle(0)
    late = schedule.bundle(1)
    assert late.video is on_time.video
    assert not late.audio.any()
    assert stats.late_ticks == 1
    source.put(bundle(8))
    assert schedule.bundle(2).audio[0, 0] == 8  # the stream did not fall behind: tick 2 plays the next bundle


def test_stale_epoch_bundles_never_reach_the_wire():
    source: queue.Queue = queue.Queue()
    source.put(bundle(1, epoch=0))
    source.put(bundle(2, epoch=1))
    schedule, stats = make_schedule(source, epoch=lambda: 1)
    assert schedule.bundle(0).audio[0, 0] == 2
    assert stats.stale_bundles == 1


def test_cache_stays_bounded_when_one_track_never_pulls():
    source: queue.Queue = queue.Queue()
    schedule, _ = make_schedule(source)
    for tick in range(500):
        schedule.bundle(tick)
    assert len(schedule._bundles) <= 51


async def test_a_late_consumer_skips_ahead_instead_of_falling_behind_real_time():
    from webrtc import HumanPlayer

    source: queue.Queue = queue.Queue()
    for marker in range(1, 60):
        source.put(bundle(marker))
    now = ManualTime()

    def filler(last):
        return AVBundle(video=last, audio=np.zeros((2, CHUNK_SAMPLES), np.int16), epoch=0, speech=False,
                        events=((), ()))

    player = HumanPlayer(source, 25, current_epoch=lambda: 0, filler=filler)
    player.clock._now = now
    first = await player.video.recv()
    assert first.pts == 0
    now.now += 1.0  # the encoder stalled for a second (25 ticks)
    frame = await player.video.recv()
    assert frame.pts == 25 * 3600
    assert player.stats.skipped_ticks == 24
    audio = await player.audio.recv()  # audio joins at the present tick too
    assert audio.pts == 50 * CHUNK_SAMPLES
    assert audio.to_ndarray()[0, 0] == 26  # the bundle of tick 25 (markers start at 1)
    player.stop()
