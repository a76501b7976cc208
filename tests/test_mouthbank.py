"""Real mouths for video avatars.

No talking video of a real person ships with the project, so the test video
is generated honestly: the bundled astronaut photo speaking a sentence through
the lite engine's warp (phoneme-driven), written out frame by frame and then
prepared with genavatar as a video avatar, like any user's clip.
"""

from __future__ import annotations

import numpy as np
import pytest

from avatars.store import load_avatar
from basereal import EngineConfig
from scene import loop_index
from avatars.prepare import PrepareOptions, build_avatar
from litereal import LiteReal
from lite.mouthbank import MOUTHS_FILE, MouthBank, MouthRetriever
from tools.render_sentence import TAIL_FRAMES, run_engine, synthesize_labelled
from tests.test_lite import same_picture
from tests.test_visemes import CLOSURES, FRAME_SAMPLES, frame_codes, runs
from speech.visemes import MouthShape, Viseme

SPOKEN = "Who would move the blue moon? She sees me keep the tea. Mama made five warm pies, oh wow."


@pytest.fixture(scope="module")
def video_avatar(astronaut_build, landmarker, tmp_path_factory):
    photo = astronaut_build[1]
    bundles = run_engine(LiteReal(photo, EngineConfig(), "film"), synthesize_labelled(SPOKEN, "en-us"))
    frames = [bundle.video.to_ndarray(format="bgr24") for bundle in bundles]
    folder = tmp_path_factory.mktemp("video") / "spoken"
    build_avatar(folder, PrepareOptions(), frames=frames, source="astronaut spoken by the lite warp",
                 landmarker=landmarker)
    return load_avatar(folder)


def recording_engine(avatar):
    """A LiteReal that notes, per composed frame, which real mouth it showed (None: warp or idle)."""
    engine = LiteReal(avatar, EngineConfig(), "video")
    shown: list[int | None] = []
    compose = engine.compose

    def noting(work, result):
        image = compose(work, result)
        shown.append(None if result is None else engine.retriever.last_choice)
        return image

    engine.compose = noting
    return engine, shown


def test_a_video_avatar_indexes_its_own_mouths(video_avatar, astronaut_build):
    assert (video_avatar.folder / MOUTHS_FILE).is_file()
    assert not (astronaut_build[1].folder / MOUTHS_FILE).exists(), "photo avatars keep the warp"
    bank = MouthBank.load(video_avatar.folder)
    assert video_avatar.metadata["real_mouths"] == len(bank.features) == video_avatar.frame_count
    gaps = bank.features[:, 1]
    assert gaps.max() > 4 * max(gaps.min(), 0.01), "the video shows closed and open mouths"
    assert bank.patches.shape[1:] == (80, 96, 3)


def test_speech_shows_real_mouths_closed_at_each_m(video_avatar):
    engine, shown = recording_engine(video_avatar)
    audio = synthesize_labelled(CLOSURES, "en-us")
    bundles = run_engine(engine, audio)
    codes = frame_codes(audio)
    bank = engine.retriever.bank
    spoken = shown[: len(codes)]
    assert sum(choice is not None for choice in spoken) >= 0.8 * len(spoken)
    gap = bank.features[:, 1]
    for start, end in runs(codes == Viseme.CLOSED):
        choices = [shown[k] for k in range(start, end + 1) if shown[k] is not None]
        assert choices and min(gap[c] for c in choices) <= 0.25 * gap.max(), (start, end)
    opened = []  # the widest real mouth shown in each vowel
    for start, end in runs(codes == Viseme.OPEN):
        choices = [shown[k] for k in range(start, end + 1) if shown[k] is not None]
        opened.append(max((gap[c] for c in choices), default=0.0))
    stressed = np.array(opened[::2])  # "MAma": the unstressed second vowel, between two m, barely opens
    assert len(stressed) == 4 and np.all(stressed > 2 * gap.min()), opened
    assert np.sum(stressed > 0.4 * gap.max()) >= 3, opened
    # After the utterance the frames are the avatar's own, untouched.
    voiced = -(-len(audio.samples) // FRAME_SAMPLES)
    for k in range(voiced + 4, voiced + TAIL_FRAMES):
        assert same_picture(bundles[k].video, video_avatar.frames[loop_index(k, video_avatar.frame_count)]), k


def test_shapes_the_video_never_showed_fall_back_to_the_warp(video_avatar):
    bank = MouthBank.load(video_avatar.folder)
    closed_only = np.flatnonzero(bank.features[:, 1] <= np.percentile(bank.features[:, 1], 20))
    small = MouthBank(bank.patches[closed_only], bank.features[closed_only], bank.points[closed_only])
    engine = LiteReal(video_avatar, EngineConfig(), "fallback")
    retriever = MouthRetriever(small)
    rig = engine.rigs[0]
    extremes = engine._extremes(rig)
    assert retriever.choose(rig.landmarks, rig.moved_landmarks(MouthShape(press=1.0)), *extremes) is not None
    assert retriever.choose(rig.landmarks, rig.moved_landmarks(MouthShape(jaw=1.0, lips=0.5)), *extremes) is None
