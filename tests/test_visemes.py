"""Visemes in the lite engine: espeak's phonemes -> per-chunk labels -> a mouth that
rounds, spreads, presses and opens, measured with dlib on rendered frames."""

from __future__ import annotations

import numpy as np
import pytest

from basereal import EngineConfig
from lite.lipshape import MouthShaper
from litereal import LiteReal
from media import CHUNK_SAMPLES, AudioChunk
from tools.render_sentence import TAIL_FRAMES, run_engine, speech_chunks, synthesize_labelled
from ttsreal import TTSWorker
from lite.visemeaudio import SpectralVisemes
from speech.visemes import CODE_SAMPLES, Viseme, classes_of_phoneme

FRAME_SAMPLES = 2 * CHUNK_SAMPLES  # 25 fps
ROUNDED_WORDS, SPREAD_WORDS = "who, moon, blue", "see, keep, tea"
CLOSURES, LIQUIDS = "mama mama mama mama", "lala lala lala lala"


@pytest.fixture(scope="module")
def astronaut(astronaut_build):
    return astronaut_build[1]


def render(avatar, text: str, labelled: bool = True):
    audio = synthesize_labelled(text, "en-us")
    bundles = run_engine(LiteReal(avatar, EngineConfig(), "visemes"), audio if labelled else audio.samples)
    return audio, bundles


def mouth_marks(landmarker, avatar, bundles) -> np.ndarray:
    """Per frame: mouth width (48-54) / face width, and the inner-lip gap in pixels."""
    box = landmarker.detect(avatar.frames[0])
    marks = []
    for bundle in bundles:
        points = landmarker.landmarks(bundle.video.to_ndarray(format="bgr24"), box)
        width = np.linalg.norm(points[54] - points[48]) / np.ptp(points[0:17, 0])
        marks.append((width, float(np.mean(points[[65, 66, 67], 1] - points[[63, 62, 61], 1]))))
    return np.array(marks)


def frame_codes(audio) -> np.ndarray:
    """Per 40 ms video frame, the viseme filling most of it."""
    frames = len(audio.codes) // FRAME_SAMPLES
    return np.array([np.bincount(audio.codes[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES]).argmax()
                     for k in range(frames)])


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_phonemes_map_to_visemes():
    assert classes_of_phoneme("m") == [Viseme.CLOSED]
    assert classes_of_phoneme("ˈuː") == [Viseme.ROUNDED]
    assert classes_of_phoneme("iː") == [Viseme.SPREAD]
    assert classes_of_phoneme("f") == [Viseme.LABIODENTAL]
    assert classes_of_phoneme("ˈaʊ") == [Viseme.OPEN, Viseme.ROUNDED]  # a diphthong moves through two
    assert classes_of_phoneme("") == []


def test_espeak_labels_its_audio_with_phoneme_timing():
    audio = synthesize_labelled(CLOSURES, "en-us")
    assert audio.codes.shape == audio.samples.shape
    codes = frame_codes(audio)
    closed = runs(codes == Viseme.CLOSED)
    assert len(closed) == 8, codes
    # Lips are closed during the nasal murmur, which is quieter than the vowels around it.
    level = np.array([np.sqrt(np.mean(audio.samples[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES] ** 2))
                      for k in range(len(codes))])
    assert np.median(level[codes == Viseme.CLOSED]) < 0.8 * np.median(level[codes == Viseme.OPEN])


class RecordingEngine:
    """Just the engine surface TTSWorker talks to."""

    epoch = 0
    chunks_per_frame = 2

    def __init__(self):
        self.chunks: list[AudioChunk] = []

    def put_audio(self, chunk: AudioChunk) -> bool:
        self.chunks.append(chunk)
        return True


def wait_for_end(engine: RecordingEngine, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not any(e.kind == "end" for c in engine.chunks for e in c.events):
        assert time.monotonic() < deadline, "the utterance never ended"
        time.sleep(0.02)


def test_tts_worker_carries_viseme_codes_with_each_chunk():
    from tts.espeak import EspeakLibrary, EspeakTTS

    engine = RecordingEngine()
    worker = TTSWorker(engine, on_error=lambda message: None, name="tts-visemes")
    try:
        worker.say("Moon. Mama!", EspeakTTS(EspeakLibrary.shared()))
        wait_for_end(engine)
        worker.play(np.zeros(16000, np.float32), "upload")
        engine.chunks.clear()
        wait_for_end(engine)
        uploaded = list(engine.chunks)
    finally:
        worker.stop()
    assert all(chunk.visemes is None for chunk in uploaded), "uploads have no phonemes to label them"

    expected = synthesize_labelled("Moon.", "en-us").codes
    engine = RecordingEngine()
    worker = TTSWorker(engine, on_error=lambda message: None, name="tts-visemes")
    try:
        worker.say("Moon.", EspeakTTS(EspeakLibrary.shared()))
        wait_for_end(engine)
    finally:
        worker.stop()
    labelled = [c for c in engine.chunks if c.visemes is not None]
    assert all(c.visemes.shape == (CHUNK_SAMPLES // CODE_SAMPLES,) for c in labelled)
    got = np.concatenate([c.visemes for c in labelled])
    want = expected[: len(got) * CODE_SAMPLES : CODE_SAMPLES]
    assert np.mean(got[: len(want)] == want) > 0.95  # aligned with the audio, chunk for chunk
    assert got[0] == Viseme.CLOSED and Viseme.ROUNDED in got


def shape_track(audio, labelled: bool = True) -> np.ndarray:
    """The shaper's (jaw, lips, width, press) per frame, as LiteReal drives it."""
    chunks = speech_chunks(audio if labelled else audio.samples, 0, TAIL_FRAMES, 2)
    frames = [chunks[i:i + 2] for i in range(0, len(chunks), 2)]
    shaper = MouthShaper(SpectralVisemes())
    return np.array([shaper.shape(frames[k], frames[k + 1] if k + 1 < len(frames) else []).as_array()
                     for k in range(len(frames))])


def test_the_mouth_moves_like_a_jaw_never_jittering():
    track = shape_track(synthesize_labelled("The quick brown fox jumps over the lazy dog.", "en-us"))
    steps = np.abs(np.diff(track, axis=0))
    assert steps[:, :3].max() < 0.6, steps.max(axis=0)  # no jumps (lips may part at once: a release)
    # Direction reversals of the jaw: at most one per 80 ms (a syllable is longer).
    velocity = np.diff(track[:, 0])
    moving = velocity[np.abs(velocity) > 0.01]
    reversals = int(np.sum(np.diff(np.sign(moving)) != 0))
    assert reversals <= len(track) / 2, reversals
    assert np.all(track[-3:] == 0.0), "the mouth closes softly after the utterance and then rests"


def test_rounded_lips_are_narrower_than_spread_lips(astronaut, landmarker):
    widths = {}
    for text in (ROUNDED_WORDS, SPREAD_WORDS):
        audio, bundles = render(astronaut, text)
        voiced = len(audio.samples) // FRAME_SAMPLES
        loud = np.array([np.sqrt(np.mean((b.audio / 32768.0) ** 2)) for b in bundles[:voiced]]) > 0.02
        widths[text] = mouth_marks(landmarker, astronaut, bundles[:voiced])[loud, 0].mean()
    assert widths[ROUNDED_WORDS] <= 0.86 * widths[SPREAD_WORDS], widths


@pytest.mark.parametrize("labelled", [True, False], ids=["phonemes", "audio only"])
def test_lips_press_shut_at_each_m_and_not_at_each_l(astronaut, landmarker, labelled):
    for text, consonant, shut in ((CLOSURES, Viseme.CLOSED, True), (LIQUIDS, Viseme.NEUTRAL, False)):
        audio, bundles = render(astronaut, text, labelled)
        codes = frame_codes(audio)
        gaps = mouth_marks(landmarker, astronaut, bundles[: len(codes) + 2])[:, 1]
        consonants = runs(codes == consonant)
        assert len(consonants) >= 4, codes
        smallest = np.array([gaps[a : b + 1].min() for a, b in consonants])  # +1: the lips take a frame to meet
        if shut:
            assert len(consonants) == 8, codes
            assert np.all(smallest <= 0.25 * gaps.max()), (smallest / gaps.max()).round(2)
        else:
            assert gaps[1 : len(codes)].min() > 0.25 * gaps.max(), (gaps / gaps.max()).round(2)


def test_the_shipped_network_reads_visemes_from_an_unseen_voice():
    """Held-out sentences (never trained on) in a voice the network never heard."""
    from tools.train_visemes import HELD_OUT_VOICE, SENTENCES, utterance_frames
    from lite.visemeaudio import MODEL_PATH, VisemeNetwork

    network = VisemeNetwork(MODEL_PATH)
    held_out = SENTENCES.read_text().splitlines()[-4:]
    frames = [utterance_frames(text, HELD_OUT_VOICE, 165) for text in held_out]
    features = np.concatenate([f for f, _ in frames])
    truth = np.concatenate([t for _, t in frames]).argmax(1)
    predicted = network(features).argmax(1)
    accuracy = float(np.mean(predicted == truth))
    majority = float(np.max(np.bincount(truth)) / len(truth))
    assert accuracy > majority + 0.2, (accuracy, majority)
    for viseme in (Viseme.CLOSED, Viseme.ROUNDED, Viseme.SPREAD, Viseme.OPEN):
        assert np.mean(predicted[truth == viseme] == viseme) > 0.35, viseme.name


def test_brows_and_head_move_with_emphasis_and_rest_in_silence(astronaut):
    import cv2

    from litereal import avatar_rigs
    from speech.visemes import MouthShape

    track = []
    audio = synthesize_labelled("Stop! That is absolutely AMAZING!", "en-us")
    chunks = speech_chunks(audio, 0, TAIL_FRAMES, 2)
    frames = [chunks[i:i + 2] for i in range(0, len(chunks), 2)]
    shaper = MouthShaper(SpectralVisemes())
    for k in range(len(frames)):
        track.append(shaper.shape(frames[k], frames[k + 1] if k + 1 < len(frames) else []).brow)
    voiced = len(audio.samples) // FRAME_SAMPLES
    assert max(track[:voiced]) > 0.2, "emphasis never moves the face"
    assert np.mean(np.array(track[:voiced]) > 0.1) < 0.8, "the face stays moved: that is not emphasis"
    assert all(b == 0.0 for b in track[-4:]), "brows and head rest in silence"

    rig = avatar_rigs(astronaut)[0]
    moved = cv2.cvtColor(rig.render(MouthShape(brow=1.0)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    still = cv2.cvtColor(astronaut.frames[0], cv2.COLOR_BGR2GRAY).astype(np.float32)
    lm = astronaut.landmarks[0]
    x1, x2 = int(lm[36, 0]), int(lm[45, 0])
    eyes_y, brow_y = int(lm[[37, 43], 1].mean()), int(lm[[19, 24], 1].mean())
    nose = (slice(int(lm[29, 1]), int(lm[33, 1])), slice(int(lm[31, 0]), int(lm[35, 0])))
    brows = (slice(brow_y - 6, brow_y + 6), slice(x1, x2))

    def shift_down(region) -> float:
        """How far (px) the picture in `region` moved down: the best of quarter-pixel shifts."""
        trials = np.arange(-4.0, 4.01, 0.25)
        errors = [np.mean((cv2.warpAffine(still, np.float32([[1, 0, 0], [0, 1, dy]]), still.shape[::-1])[region]
                           - moved[region]) ** 2) for dy in trials]
        return float(trials[int(np.argmin(errors))])

    dip, lift = shift_down(nose), shift_down(brows)
    assert dip > 0.8, f"the head does not nod ({dip:.2f} px)"
    assert lift < dip - 0.8, f"the brows do not rise against the nod ({lift:.2f} vs {dip:.2f} px)"
    corner = (slice(0, 40), slice(0, 40))
    assert np.array_equal(moved[corner], still[corner]), "the background moved"
    assert eyes_y > brow_y
