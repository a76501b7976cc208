"""Train the audio-only viseme network (visemeaudio.py) on espeak-labelled speech.

    python -m tools.train_visemes                     # writes assets/viseme_mlp.npz
    python -m tools.train_visemes --out /tmp/m.npz --epochs 5

Data recipe (everything is generated here, offline): every sentence of
tools/viseme_sentences.txt is spoken by espeak-ng in each of VOICES at
each of RATES words per minute. espeak's phoneme events label every sample
with its viseme (visemes.label_samples), so each 40 ms video frame gets the
share of each viseme in it as a soft target. Features are computed exactly as
at run time (visemeaudio.CepstralStream, one stream per utterance, frame by
frame). The last HELD_OUT_SENTENCES sentences are never trained on: the
frame accuracy per viseme class is reported on them (all voices), and on
HELD_OUT_VOICE, a voice the network never heard.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from lite.lipshape import viseme_weights
from tools.render_sentence import synthesize_labelled
from lite.visemeaudio import FEATURES, MODEL_PATH, CepstralStream
from speech.visemes import VISEME_COUNT, Viseme

logger = logging.getLogger("train_visemes")

SENTENCES = Path(__file__).resolve().parent / "viseme_sentences.txt"
VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f2", "en+m3", "en-us+f4", "en+f1",
          "en-us+m5", "en+f5")
HELD_OUT_VOICE = "en-us+f3"
RATES = (130, 165, 210)
HELD_OUT_SENTENCES = 14
FRAME_SAMPLES = 640  # 40 ms at 16 kHz (25 fps)
HIDDEN = 32
SEED = 7


def utterance_frames(text: str, voice: str, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, soft targets) per video frame of one synthesised sentence."""
    audio = synthesize_labelled(text, voice, rate)
    stream = CepstralStream()
    frames = len(audio.samples) // FRAME_SAMPLES
    features = np.zeros((frames, FEATURES), np.float32)
    targets = np.zeros((frames, VISEME_COUNT), np.float32)
    for k in range(frames):
        features[k] = stream.features(audio.samples[k * FRAME_SAMPLES : (k + 2) * FRAME_SAMPLES])
        targets[k] = viseme_weights(audio.codes[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES])
    return features, targets


def dataset(sentences: list[str], voices: tuple[str, ...], rates: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    jobs = [(s, v, r) for s in sentences for v in voices for r in rates]
    parts = [utterance_frames(*job) for job in tqdm(jobs, desc="synthesising", unit="utt")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def train(features: np.ndarray, targets: np.ndarray, epochs: int) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(SEED)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = torch.from_numpy((features - mean) / std)
    y = torch.from_numpy(targets)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, VISEME_COUNT))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    for epoch in tqdm(range(epochs), desc="training", unit="epoch"):
        order = torch.randperm(len(x))
        total = 0.0
        for start in range(0, len(x), 256):
            batch = order[start : start + 256]
            loss = -(y[batch] * torch.log_softmax(model(x[batch]), dim=1)).sum(1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        schedule.step()
        logger.info("epoch %d: soft cross-entropy %.3f", epoch + 1, total / len(x))
    first, second = model[0], model[2]
    return {
        "feature_mean": mean.astype(np.float32), "feature_std": std.astype(np.float32),
        "w1": first.weight.detach().numpy().T.copy(), "b1": first.bias.detach().numpy().copy(),
        "w2": second.weight.detach().numpy().T.copy(), "b2": second.bias.detach().numpy().copy(),
    }


def accuracy(weights: dict[str, np.ndarray], features: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Frame accuracy per true class (the viseme filling most of the frame) and overall."""
    x = (features - weights["feature_mean"]) / weights["feature_std"]
    predicted = (np.tanh(x @ weights["w1"] + weights["b1"]) @ weights["w2"] + weights["b2"]).argmax(1)
    truth = targets.argmax(1)
    result = {Viseme(c).name.lower(): round(float(np.mean(predicted[truth == c] == c)), 3)
              for c in range(VISEME_COUNT) if np.any(truth == c)}
    result["all"] = round(float(np.mean(predicted == truth)), 3)
    result["frames"] = int(len(truth))
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    sentences = [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip()]
    train_sentences, test_sentences = sentences[:-HELD_OUT_SENTENCES], sentences[-HELD_OUT_SENTENCES:]
    features, targets = dataset(train_sentences, VOICES, RATES)
    logger.info("training on %d frames (%d sentences x %d voices x %d rates)", len(features),
                len(train_sentences), len(VOICES), len(RATES))
    weights = train(features, targets, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **weights)
    report = {
        "held-out sentences": accuracy(weights, *dataset(test_sentences, VOICES, RATES)),
        f"held-out sentences, unseen voice {HELD_OUT_VOICE}": accuracy(
            weights, *dataset(test_sentences, (HELD_OUT_VOICE,), RATES)),
        "training frames": accuracy(weights, features, targets),
    }
    print(json.dumps(report, indent=1))
    print(f"{args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
