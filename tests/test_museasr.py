"""MuseASR: MuseTalk's frame <-> feature index mapping, edges, and the streaming window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from media import CHUNK_SAMPLES, AudioChunk
from museasr import MuseASR, feature_indices, slice_features


def test_indices_hand_computed():
    # Video frame k of a batch starts at chunk first_chunk + 2k (25 fps); MuseTalk takes [c - 4, c + 6).
    expected = np.array([
        [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    ])
    assert np.array_equal(feature_indices(first_chunk=2, frames=2, per_frame=2), expected)
    # 50 fps: one chunk per frame, centres advance by one encoder frame
    assert np.array_equal(feature_indices(10, 3, 1)[:, 4], [10, 11, 12])


def _layers(length: int, n_layers: int = 5, width: int = 3) -> torch.Tensor:
    """Encoder output whose value says where it came from: 100 + 10 * frame + layer."""
    t = torch.arange(length)[:, None, None]
    layer = torch.arange(n_layers)[None, :, None]
    return (100 + 10 * t + layer + 0 * torch.arange(width)).float().expand(length, n_layers, width)


def test_slice_zero_padding_v15():
    layers = _layers(8)  # window of 8 encoder frames: 2 left context + 2 frames x 2 chunks + 2 right
    tokens = slice_features(layers, feature_indices(2, 2, 2), "zero")
    assert tokens.shape == (2, 50, 3)
    # frame 0: indices -2, -1 are outside -> 10 zero tokens, then frame 0 layers 0..4 = 100..104
    assert tokens[0, :10].abs().sum() == 0
    assert tokens[0, 10:15, 0].tolist() == [100, 101, 102, 103, 104]
    assert tokens[0, 45:50, 0].tolist() == [170, 171, 172, 173, 174]  # index 7, the last frame in the window
    # frame 1: indices 0..9; 8 and 9 are past the end -> zero
    assert tokens[1, :5, 0].tolist() == [100, 101, 102, 103, 104]
    assert tokens[1, 35:40, 0].tolist() == [170, 171, 172, 173, 174]
    assert tokens[1, 40:].abs().sum() == 0


def test_slice_edge_replication_v1():
    tokens = slice_features(_layers(8), feature_indices(2, 2, 2), "clamp")
    assert tokens[0, :15, 0].tolist() == [100, 101, 102, 103, 104] * 3  # -2, -1 -> 0
    assert tokens[1, 35:50, 0].tolist() == [170, 171, 172, 173, 174] * 3  # 8, 9 -> 7


def _chunk(value: float, speech: bool = True) -> AudioChunk:
    return AudioChunk(np.full(CHUNK_SAMPLES, value, np.float32), speech=speech, epoch=0)


def test_stream_windows_line_up_with_global_chunks():
    """Across consecutive batches each frame gets the encoder frames of global chunks [2i - 4, 2i + 6)."""
    asr = MuseASR(fps=25, left_chunks=4, right_chunks=4)
    stream = [_chunk(float(n + 1)) for n in range(40)]  # chunk n carries value n + 1 (0 = silence)
    position, frame = 0, 0
    for batch_frames in (2, 4, 4):
        taken = stream[position: position + 2 * batch_frames]
        future = stream[position + 2 * batch_frames:]
        window = asr.window(taken, future)
        assert window.chunks == 4 + 2 * batch_frames + 4 and window.first_chunk == 4
        # stand-in encoder: encoder frame j of the window = the value of window chunk j
        per_chunk = torch.from_numpy(window.samples[::CHUNK_SAMPLES].copy())
        layers = per_chunk[:, None, None].expand(-1, 5, 1)
        tokens = asr.features(layers, window)
        for k in range(batch_frames):
            got = tokens[k, ::5, 0].numpy()
            wanted = [float(n + 1) if n >= 0 else 0.0 for n in range(2 * frame - 4, 2 * frame + 6)]
            assert got.tolist() == wanted, (frame, got)
            frame += 1
        position += 2 * batch_frames


def test_right_context_is_padded_with_silence_and_left_with_history():
    asr = MuseASR(fps=25, left_chunks=3, right_chunks=5)
    first = asr.window([_chunk(1.0), _chunk(2.0)], [_chunk(3.0)])
    values = first.samples[::CHUNK_SAMPLES].tolist()
    assert values == [0, 0, 0, 1, 2, 3, 0, 0, 0, 0]  # no history yet, only one future chunk
    asr.push([_chunk(3.0, speech=False), _chunk(4.0, speech=False)])  # idle frames still feed history
    second = asr.window([_chunk(5.0), _chunk(6.0)], [])
    assert second.samples[::CHUNK_SAMPLES].tolist() == [2, 3, 4, 5, 6, 0, 0, 0, 0, 0]


def test_window_needs_whole_frames():
    with pytest.raises(ValueError):
        MuseASR(fps=25).window([_chunk(1.0)], [])
