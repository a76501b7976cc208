"""MuseASR: streaming whisper features equal the offline ones (30 s padded windows, MuseTalk's edges).

The reference here is written from whisper's documented preprocessing and
encoder, not from the code under test: numpy STFT (16 kHz, n_fft 400, hop
160, periodic Hann, reflect-padded centre frames), 80 slaney mel filters
built triangle by triangle, log10, clamp to max - 8, (x + 4) / 4, audio
zero-padded to 30 s (3000 mel frames); the encoder is re-implemented from the
checkpoint's own tensor names (HF for v1.5, openai tiny.pt for v1.0).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from media import CHUNK_SAMPLES, AudioChunk
from museasr import MuseASR
from musetalk.features import (WINDOW_CHUNKS, ZERO, BatchAudio, batch_features, edge_indices, encode_windows,
                               feature_indices, slice_features)
from musetalk.loader import load_models
from musetalk.settings import right_context
from tests.support.musetalk_fixtures import spoken, write_tiny_weights

SR, N_FFT, HOP, N_MELS, N_SAMPLES = 16000, 400, 160, 80, 480000


# ---- the independent reference ----------------------------------------------------------------

def _hz_to_mel(hz: float) -> float:
    return 3.0 * hz / 200.0 if hz < 1000.0 else 15.0 + 27.0 * math.log(hz / 1000.0) / math.log(6.4)


def _mel_to_hz(mel: float) -> float:
    return 200.0 * mel / 3.0 if mel < 15.0 else 1000.0 * math.exp((mel - 15.0) * math.log(6.4) / 27.0)


def reference_filters() -> np.ndarray:
    """Slaney mel triangles, each scaled to unit area (2 / width), on the rfft bins of n_fft 400."""
    top = _hz_to_mel(SR / 2)
    edges = [_mel_to_hz(top * i / (N_MELS + 1)) for i in range(N_MELS + 2)]
    bins = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    filters = np.zeros((N_MELS, len(bins)))
    for m in range(N_MELS):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for b, f in enumerate(bins):
            if left < f <= centre:
                filters[m, b] = (f - left) / (centre - left)
            elif centre < f < right:
                filters[m, b] = (right - f) / (right - centre)
        filters[m] *= 2.0 / (right - left)
    return filters


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """(80, 3000) whisper log-mel of `audio` zero-padded to 30 s."""
    audio = np.pad(audio.astype(np.float64), (0, N_SAMPLES - len(audio)))
    framed_input = np.pad(audio, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    starts = np.arange(0, len(framed_input) - N_FFT + 1, HOP)
    frames = np.stack([framed_input[s:s + N_FFT] * window for s in starts])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (3001, 201)
    mel = reference_filters() @ power[:-1].T  # the last frame is dropped: 3000 frames
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
            "ln1": "self_attn_layer_norm", "fc1": "fc1", "fc2": "fc2", "ln2": "final_layer_norm"}
OPENAI_NAMES = {"q": "attn.query", "k": "attn.key", "v": "attn.value", "o": "attn.out",
                "ln1": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "ln2": "mlp_ln"}


def reference_encoder(state: dict, version: str, mel: np.ndarray, heads: int = 6) -> torch.Tensor:
    """(1500, 5, 384): the embedding and each block's output; v1.5 takes the last after the final norm."""
    if version == "v15":
        prefix, names, layer = "model.encoder.", HF_NAMES, "layers"
        positions, final = state[prefix + "embed_positions.weight"], "layer_norm"
    else:
        prefix, names, layer = "encoder.", OPENAI_NAMES, "blocks"
        positions, final = state[prefix + "positional_embedding"], "ln_post"
    w = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    x = torch.from_numpy(mel)[None]
    x = F.gelu(F.conv1d(x, w["conv1.weight"], w["conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))[0].T
    x = x + positions.float()[: x.shape[0]]
    outputs = [x]
    blocks = sorted({int(k.split(".")[1]) for k in w if k.startswith(layer + ".")})
    for index in blocks:
        p = {short: f"{layer}.{index}.{name}" for short, name in names.items()}
        norm = lambda t, n: F.layer_norm(t, t.shape[-1:], w[p[n] + ".weight"], w[p[n] + ".bias"])  # noqa: E731
        h = norm(x, "ln1")
        q = h @ w[p["q"] + ".weight"].T + w[p["q"] + ".bias"]
        k = h @ w[p["k"] + ".weight"].T
        v = h @ w[p["v"] + ".weight"].T + w[p["v"] + ".bias"]
        split = lambda t: t.reshape(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(0, 1).reshape(x.shape)
        x = x + attended @ w[p["o"] + ".weight"].T + w[p["o"] + ".bias"]
        h = norm(x, "ln2")
        x = x + F.gelu(h @ w[p["fc1"] + ".weight"].T + w[p["fc1"] + ".bias"]) @ w[p["fc2"] + ".weight"].T \
            + w[p["fc2"] + ".bias"]
        outputs.append(x)
    if version == "v15":
        outputs[-1] = F.layer_norm(x, x.shape[-1:], w[final + ".weight"], w[final + ".bias"])
    return torch.stack(outputs, dim=1)


def reference_tokens(layers: torch.Tensor, clip_frames: int, centre: int, version: str) -> torch.Tensor:
    """MuseTalk's (50, 384) tokens for the video frame whose audio starts at encoder frame `centre` of a clip.

    The encoder output is trimmed to the clip; v1.5 pads with zero frames, v1.0 repeats the end frames.
    """
    trimmed = layers[:clip_frames]
    rows = []
    for index in range(centre - 4, centre + 6):
        if 0 <= index < clip_frames:
            rows.append(trimmed[index])
        elif version == "v15":
            rows.append(torch.zeros_like(trimmed[0]))
        else:
            rows.append(trimmed[min(max(index, 0), clip_frames - 1)])
    return torch.stack(rows).reshape(-1, layers.shape[-1])


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("asr") / "models", ("v15", "v1"))


def _state(weights: Path, version: str) -> dict:
    if version == "v15":
        return torch.load(weights / "whisper" / "pytorch_model.bin", weights_only=True)
    return torch.load(weights / "whisper" / "tiny.pt", weights_only=True)["model_state_dict"]


def _chunks(audio: np.ndarray, speech: bool) -> list[AudioChunk]:
    return [AudioChunk(audio[i:i + CHUNK_SAMPLES], speech, 0) for i in range(0, len(audio), CHUNK_SAMPLES)]


def _silence(count: int) -> list[AudioChunk]:
    return [AudioChunk.silence(0) for _ in range(count)]


# ---- streaming equals offline ------------------------------------------------------------------

@pytest.mark.parametrize("version, checked_batches", [("v15", (6, 38)), ("v1", (38,))])
def test_streaming_features_equal_offline_over_the_same_audio(weights, version, checked_batches):
    """Two utterances streamed in batches; the batches checked (by first chunk) cover an utterance's
    first frames with no right context queued (6), a batch spanning the end of one utterance and the
    start of the next, misaligned by a chunk (38), and the end of the second (70). Every voiced frame's
    tokens equal the reference over [utterance start, window end) padded to 30 s."""
    models = load_models(weights, version, device="cpu")
    first = spoken("Pack my box with five dozen liquor jugs.", 37 * 0.02)
    second = spoken("The quick brown fox.", 31 * 0.02)
    stream = _silence(3) + _chunks(first, True) + _silence(3) + _chunks(second, True) + _silence(12)
    utterances = [(3, 40), (43, 74)]  # [start, end) in chunks
    asr = MuseASR(fps=25, right_chunks=10, edge="zero" if version == "v15" else "repeat", max_batch=8)
    state = _state(weights, version)
    reference_cache: dict[tuple[int, int], torch.Tensor] = {}
    position, checked, short_future = 0, 0, False
    for frames in [1, 2, 8, 8, 8, 8, 8]:
        chunks = stream[position:position + 2 * frames]
        future = stream[position + 2 * frames:position + 2 * frames + 10]
        if position == 6:  # TTS fell behind: nothing queued after this batch
            future, short_future = [], True
        if not any(c.speech for c in chunks):
            asr.push(chunks)
            position += 2 * frames
            continue
        batch = asr.window(chunks, future)
        if position not in checked_batches:
            position += 2 * frames
            continue
        with torch.inference_mode():
            tokens = batch_features(batch, encode_windows(models, list(batch.windows)))
        assert tokens.shape == (frames, 50, 384)
        available = position + 2 * frames + len(future)
        for k in range(frames):
            g = position + 2 * k
            voiced = [u for u in utterances if any(u[0] <= i < u[1] for i in (g, g + 1))]
            if not voiced:
                assert tokens[k].abs().sum() == 0
                continue
            start, end = voiced[0]
            window_end = min(end, available)
            if (start, window_end) not in reference_cache:
                audio = np.concatenate([c.samples for c in stream[start:window_end]])
                reference_cache[(start, window_end)] = reference_encoder(state, version, reference_log_mel(audio))
            expected = reference_tokens(reference_cache[(start, window_end)], window_end - start, g - start, version)
            torch.testing.assert_close(tokens[k], expected, rtol=2e-4, atol=2e-4)
            checked += 1
        position += 2 * frames
    voiced_frames = {6: 8, 38: 7, 70: 2}  # batch 38: 1 frame of A, a silent frame, 6 of B (one half silent)
    assert checked == sum(voiced_frames[b] for b in checked_batches) and short_future


@pytest.mark.parametrize("version", ["v15", "v1"])
def test_edge_frames_follow_the_version(weights, version):
    """The first frame of an utterance: v1.5 has zero features for the 4 encoder frames before it,
    v1.0 repeats the utterance's first frame; the last frame likewise after the utterance's end."""
    models = load_models(weights, version, device="cpu")
    speech = _chunks(spoken("Pack my box with five dozen liquor jugs.", 0.24), True)  # 12 chunks = 6 frames
    asr = MuseASR(fps=25, right_chunks=10, edge="zero" if version == "v15" else "repeat")
    batch = asr.window(speech, _silence(10))
    assert len(batch.windows) == 1 and len(batch.windows[0].samples) == 12 * CHUNK_SAMPLES  # no silence encoded
    with torch.inference_mode():
        layers = encode_windows(models, list(batch.windows))[0]
        tokens = batch_features(batch, [layers]).reshape(6, 10, 5, 384)
    if version == "v15":
        assert tokens[0, :4].abs().sum() == 0 and tokens[1, :2].abs().sum() == 0
        assert tokens[5, 6:].abs().sum() == 0  # encoder frames 12..15 lie after the utterance
    else:
        for j in range(4):
            assert torch.equal(tokens[0, j], layers[0])  # frames -4..-1 repeat frame 0
        for j in range(6, 10):
            assert torch.equal(tokens[5, j], layers[11])  # frames 12.. repeat the last, 11
    assert torch.equal(tokens[0, 4], layers[0]) and torch.equal(tokens[5, 5], layers[11])


def test_a_long_utterance_keeps_the_last_28_s(weights):
    """After 30 s of speech the window holds as much history as fits and still equals the reference."""
    models = load_models(weights, "v15", device="cpu")
    rng = np.random.default_rng(5)
    tone = (0.1 * np.sin(np.arange(1520 * CHUNK_SAMPLES) * 0.07) * (1 + rng.random(1520 * CHUNK_SAMPLES))
            ).astype(np.float32)
    stream = _chunks(tone, True)
    asr = MuseASR(fps=25, right_chunks=10, edge="zero", max_batch=8)
    asr.push(stream[:1500])
    batch = asr.window(stream[1500:1508], stream[1508:1518])
    history = asr.max_history
    assert history == WINDOW_CHUNKS - 10 - 16 - 4
    window = batch.windows[0]
    assert len(window.samples) == (history + 8 + 10) * CHUNK_SAMPLES
    start = 1500 - history
    with torch.inference_mode():
        tokens = batch_features(batch, encode_windows(models, [window]))
    reference = reference_encoder(_state(weights, "v15"), "v15",
                                  reference_log_mel(np.concatenate([c.samples for c in stream[start:1518]])))
    for k in range(4):
        expected = reference_tokens(reference, 1518 - start, 1500 + 2 * k - start, "v15")
        torch.testing.assert_close(tokens[k], expected, rtol=2e-4, atol=2e-4)


# ---- bookkeeping (no model) -----------------------------------------------------------------------

def test_indices_hand_computed():
    # Video frame k of a batch starts at chunk first_chunk + 2k (25 fps); MuseTalk takes [c - 4, c + 6).
    expected = np.array([
        [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    ])
    assert np.array_equal(feature_indices(first_chunk=2, frames=2, per_frame=2), expected)
    assert np.array_equal(feature_indices(10, 3, 1)[:, 4], [10, 11, 12])  # 50 fps: one chunk per frame
    rows = feature_indices(2, 2, 2)
    assert edge_indices(rows, 0, 8, "zero").tolist() == [[ZERO, ZERO, 0, 1, 2, 3, 4, 5, 6, 7],
                                                         [0, 1, 2, 3, 4, 5, 6, 7, ZERO, ZERO]]
    assert edge_indices(rows, 0, 8, "repeat").tolist() == [[0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
                                                           [0, 1, 2, 3, 4, 5, 6, 7, 7, 7]]


def test_slice_picks_frame_major_then_layer():
    t = torch.arange(8)[:, None, None].float()
    layers = (100 + 10 * t + torch.arange(5)[None, :, None]).expand(8, 5, 3)
    tokens = slice_features(layers, np.array([[ZERO, 0, 7] + [1] * 7]))
    assert tokens.shape == (1, 50, 3)
    assert tokens[0, :5].abs().sum() == 0
    assert tokens[0, 5:15, 0].tolist() == [100, 101, 102, 103, 104, 170, 171, 172, 173, 174]


def _valued(values: list[float], speech: bool = True) -> list[AudioChunk]:
    return [AudioChunk(np.full(CHUNK_SAMPLES, v, np.float32), speech, 0) for v in values]


def _chunk_values(batch: BatchAudio, index: int = 0) -> list[float]:
    return batch.windows[index].samples[::CHUNK_SAMPLES].tolist()


def test_window_starts_at_the_utterance_and_carries_its_history():
    asr = MuseASR(fps=25, right_chunks=3)
    asr.push(_valued([9, 9], speech=False))
    first = asr.window(_valued([1, 2]), _valued([3, 4, 5, 6]))
    assert _chunk_values(first) == [1, 2, 3, 4, 5]  # right context capped at 3 chunks
    second = asr.window(_valued([3, 4, 5, 6]), _valued([7]) + _valued([0], speech=False))
    assert _chunk_values(second) == [1, 2, 3, 4, 5, 6, 7]  # the utterance so far; it ends before the silence
    assert second.windows[0].indices[0].tolist() == [ZERO, ZERO, 0, 1, 2, 3, 4, 5, 6, ZERO]
    asr.push(_valued([0, 0], speech=False))  # silence ends the utterance
    third = asr.window(_valued([8, 9]), [])
    assert _chunk_values(third) == [8, 9]


def test_an_interrupt_ends_the_utterance():
    asr = MuseASR(fps=25, right_chunks=0)
    asr.window(_valued([1, 2]), [])
    interrupted = [AudioChunk(np.full(CHUNK_SAMPLES, v, np.float32), True, 1) for v in (3, 4)]
    assert _chunk_values(asr.window(interrupted, [])) == [3, 4]  # epoch 1: no history from epoch 0


def test_a_batch_spanning_two_utterances_gets_a_window_each():
    asr = MuseASR(fps=25, right_chunks=2)
    chunks = _valued([1, 2, 3]) + _valued([0, 0], speech=False) + _valued([4, 5, 6, 7, 8])
    batch = asr.window(chunks[:10], chunks[10:])
    assert batch.frames == 5 and len(batch.windows) == 2
    assert _chunk_values(batch, 0) == [1, 2, 3] and batch.windows[0].rows.tolist() == [0, 1]
    # frame 2 holds chunks 4 (silence) and 5 (speech): it belongs to the second utterance, which starts at chunk 5
    assert _chunk_values(batch, 1) == [4, 5, 6, 7, 8] and batch.windows[1].rows.tolist() == [2, 3, 4]
    assert batch.windows[1].indices[0].tolist() == [ZERO] * 5 + [0, 1, 2, 3, 4]


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="whole frames"):
        MuseASR(fps=25).window(_valued([1]), [])
    with pytest.raises(ValueError, match="at most 2 frames"):
        MuseASR(fps=25, max_batch=2).window(_valued([1] * 6), [])
    with pytest.raises(ValueError, match="right audio context"):
        MuseASR(fps=25, right_chunks=101)
    for bad in ("101", "-1", "ten"):
        with pytest.raises(argparse.ArgumentTypeError):
            right_context(bad)
    assert right_context("100") == 100
