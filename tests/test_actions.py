"""Custom actions: idle clip, /set_audiotype clips with their own audio, crossfades, takeover, validation."""

from __future__ import annotations

import asyncio
import json
import time

import cv2
import numpy as np
import pytest

from stage import actions
from tests.support.clip_helpers import BLUE, GREEN, RED, make_action_set, near
from tests.conftest import TEST_AVATAR_SIZE, server_args, start_server
from tests.support.rtc_client import ReceiverClient


@pytest.fixture(scope="module")
def action_config(data_dir):
    return make_action_set(data_dir)


@pytest.fixture
async def action_server(data_dir, action_config):
    running = await start_server(server_args(data_dir, "--max_session", "3",
                                             "--customvideo_config", str(action_config), "--action-crossfade", "5"))
    yield running
    await running.runner.cleanup()


async def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def post(http, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def test_action_clip_plays_with_its_audio_crossfades_and_returns_to_idle(action_server, http):
    client = ReceiverClient(action_server.url)
    await client.connect(http)
    await client.wait_for(video_frames=10, audio_frames=20)
    await wait_until(lambda: near(client.video[-1].data, BLUE), what="the idle clip")
    assert client.video[-1].data.shape[:2] == (TEST_AVATAR_SIZE, TEST_AVATAR_SIZE)
    mark_video, mark_audio = len(client.video), len(client.audio)
    status, body = await post(http, f"{action_server.url}/set_audiotype", {"sessionid": client.sessionid, "audiotype": 2})
    assert status == 200 and body["code"] == 0 and body["data"]["seconds"] == pytest.approx(1.0), body
    await wait_until(lambda: any(near(f.data, GREEN) for f in client.video[mark_video:]), what="the green clip")
    await wait_until(lambda: near(client.video[-1].data, BLUE) and sum(near(f.data, GREEN) for f in client.video[mark_video:]) > 0,
                     what="the return to idle")
    frames = client.video[mark_video:]
    green = [i for i, f in enumerate(frames) if near(f.data, GREEN)]
    # 25 clip frames, the first and last few blended by the fades (a late engine may repeat some).
    assert 15 <= len(green) <= 40, len(green)
    # Crossfades: frames between blue and green on the way in and out, not a cut.
    fade_in = frames[:green[0]]
    fade_out = frames[green[-1] + 1:]
    assert sum(not near(f.data, BLUE) and not near(f.data, GREEN) for f in fade_in) >= 3
    assert sum(not near(f.data, BLUE) and not near(f.data, GREEN) for f in fade_out) >= 3
    assert all(f.data.shape[:2] == (TEST_AVATAR_SIZE, TEST_AVATAR_SIZE) for f in frames)
    # The clip's own tone went out with its frames: loud audio while green, silence before.
    t_green0, t_green1 = frames[green[0]].arrival, frames[green[-1]].arrival
    rms = [(a.arrival, float(np.sqrt(np.mean(a.data.astype(np.float64) ** 2)))) for a in client.audio]
    during = [r for t, r in rms[mark_audio:] if t_green0 + 0.2 <= t <= t_green1 - 0.2]
    before = [r for _, r in rms[mark_audio - 20:mark_audio]]
    assert during and float(np.median(during)) > 3000, during
    assert before and max(before) < 300, before
    assert not action_server.context.sessions.get(client.sessionid).engine.scene.playing
    await client.close()


async def test_speech_takes_over_a_clip_and_interrupt_stops_one(action_server, http):
    client = ReceiverClient(action_server.url)
    await client.connect(http, data_channel=True)
    await client.wait_for(video_frames=10, audio_frames=20)
    url, sid = action_server.url, client.sessionid
    session = action_server.context.sessions.get(sid)

    # /interrupt_talk stops a 6 s clip at once (back to idle).
    mark = len(client.video)
    assert (await post(http, f"{url}/set_audiotype", {"sessionid": sid, "audiotype": 3}))[0] == 200
    await wait_until(lambda: any(near(f.data, RED) for f in client.video[mark:]), what="the red clip")
    started = time.monotonic()
    assert (await post(http, f"{url}/interrupt_talk", {"sessionid": sid}))[0] == 200
    await wait_until(lambda: near(client.video[-1].data, BLUE), timeout=5.0, what="idle after the interrupt")
    assert time.monotonic() - started < 4.0 and not session.engine.scene.playing  # the clip lasts 6 s

    # Speech arriving mid-clip takes over: the avatar (not the clip, not idle) speaks.
    mark = len(client.video)
    assert (await post(http, f"{url}/set_audiotype", {"sessionid": sid, "audiotype": 3}))[0] == 200
    await wait_until(lambda: any(near(f.data, RED) for f in client.video[mark:]), what="the red clip again")
    status, _ = await post(http, f"{url}/human", {"sessionid": sid, "text": "Hello there, how are you today?", "type": "echo"})
    assert status == 200
    await wait_until(lambda: any(json.loads(m).get("type") == "start" for m in client.channel_messages), what="speech start")
    await asyncio.sleep(0.5)  # past the fade
    spoken = time.monotonic()
    await wait_until(lambda: client.video[-1].arrival > spoken + 0.3, what="frames while speaking")
    recent = [f for f in client.video if spoken < f.arrival <= spoken + 0.3]  # well inside the ~2 s utterance
    assert recent and not any(near(f.data, RED) or near(f.data, BLUE) for f in recent)
    assert not session.engine.scene.playing
    # Starting a clip while speaking is refused with what to do.
    if session.speaking:
        status, body = await post(http, f"{url}/set_audiotype", {"sessionid": sid, "audiotype": 2})
        assert status == 409 and "interrupt" in body["msg"]
    await client.close()


async def test_custom_config_per_session_is_validated_and_clips_are_shared(server, http, data_dir, action_config):
    url = server.url
    good = action_config.read_text()

    from tests.test_api import offer_sdp

    probe, sdp = await offer_sdp()  # a valid offer: only custom_config is wrong

    async def offer(custom_config) -> tuple[int, dict]:
        return await post(http, f"{url}/offer", {"sdp": sdp, "type": "offer", "custom_config": custom_config})

    cases = [
        ("[{not json", "custom_config is not valid JSON"),
        (json.dumps({"audiotype": 1}), "custom_config must be a JSON list"),
        (json.dumps([{"audiotype": "2", "imgpath": "x"}]), "custom_config[0].audiotype"),
        (json.dumps([{"audiotype": 2}]), "custom_config[0].imgpath"),
        (json.dumps([{"audiotype": 1, "imgpath": "data/customvideo/actions/idle"},
                     {"audiotype": 2, "imgpath": "data/customvideo/nowhere"}]), "'data/customvideo/nowhere' does not exist"),
        (json.dumps([{"audiotype": 2, "imgpath": "../../../etc"}]), "outside the data folder"),
        (json.dumps([{"audiotype": 2, "imgpath": "/etc"}]), "outside the data folder"),
        (json.dumps([{"audiotype": 2, "imgpath": "data/customvideo/actions/wave", "audiopath": "data/nope.wav"}]),
         "custom_config[0].audiopath"),
        (json.dumps([{"audiotype": 2, "imgpath": "data/customvideo/actions"}]), "holds no frames"),
    ]
    for raw, words in cases:
        status, body = await offer(raw)
        assert status == 400 and words in body["msg"], (raw, body)
    assert len(server.context.sessions) == 0

    await probe.close()
    peers = []
    for _ in range(2):
        pc, sdp = await offer_sdp()
        peers.append(pc)
        status, body = await post(http, f"{url}/offer", {"sdp": sdp, "type": "offer", "custom_config": good})
        assert status == 200, body
    first, second = server.context.sessions.all()
    assert set(first.engine.scene.actions) == {2, 3} and first.engine.scene.idle is not None
    assert first.engine.scene.actions[2] is second.engine.scene.actions[2]  # loaded once, shared
    assert first.engine.scene.actions[2].frames[0].flags.writeable is False
    sid = first.id
    for audiotype, status_code in (("x", 400), ("²", 400), (True, 400), (None, 400), (7, 404), ("7", 404)):
        status, body = await post(http, f"{url}/set_audiotype", {"sessionid": sid, "audiotype": audiotype})
        assert status == status_code and body["code"] == -1 and body["msg"], body
    status, body = await post(http, f"{url}/set_audiotype", {"sessionid": "nobody", "audiotype": 2})
    assert status == 404
    for pc in peers:
        await pc.close()
    await server.context.sessions.close_all("test")


def test_a_bad_server_config_stops_the_server_with_the_field(data_dir, tmp_path):
    import app as server_app

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"audiotype": 2, "imgpath": "data/customvideo/missing"}]))
    with pytest.raises(actions.ActionConfigError, match=r"--customvideo_config\[0\]\.imgpath"):
        server_app.create_app(server_args(data_dir, "--customvideo_config", str(bad)))


def clip_frames_out(engine, count: int, timeout: float = 20.0) -> list[np.ndarray]:
    """The next `count` frames the engine hands to the wire, as BGR."""
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {len(frames)} frames"
        try:
            bundle = engine.output.get(timeout=0.5)
        except Exception:
            continue
        frames.append(bundle.video.to_ndarray(format="bgr24"))
    return frames


@pytest.mark.parametrize("lipsync", [True, False])
def test_a_prepared_avatar_as_a_clip_is_lip_synced_by_the_lite_engine(data_dir, lipsync):
    from avatars.store import AvatarStore
    from basereal import EngineConfig
    from litereal import LiteReal
    from scene import fit_frame
    from tests.support.clip_helpers import write_tone
    from tests.conftest import PHOTO_AVATAR_ID, TEST_AVATAR_ID

    write_tone(data_dir / "customvideo" / "speak.wav", 1.0)
    library = actions.ClipLibrary(data_dir, fade_frames=0)
    clips = library.load(json.dumps([{"audiotype": 2, "imgpath": f"avatars/{PHOTO_AVATAR_ID}",
                                      "audiopath": "customvideo/speak.wav"}]), "custom_config")
    engine = LiteReal(AvatarStore(data_dir / "avatars").get(TEST_AVATAR_ID), EngineConfig(), "lipsync-test")
    if lipsync:
        library.apply(engine, clips)
        assert engine.scene.lipsynced == {id(clips[2])}
    else:
        engine.scene.configure(clips, 0)  # as for an engine that cannot lip-sync it
    raw = [fit_frame(f, engine.output_size).astype(np.int16) for f in clips[2].frames]
    engine.start()
    try:
        engine.scene.play(2)
        out = clip_frames_out(engine, 30)
    finally:
        engine.stop()
    clip_out, mouth_moved = 0, 0
    for frame in out:
        diffs = [np.abs(frame.astype(np.int16) - r) for r in raw]
        nearest = min(diffs, key=lambda d: float(d.mean()))
        if nearest.mean() > 12:
            continue  # an idle frame of the session's own avatar
        clip_out += 1
        local = cv2.blur(nearest.max(axis=2).astype(np.float32), (5, 5))
        mouth_moved += float(local.max()) > 40
    assert clip_out >= 20
    if lipsync:
        assert mouth_moved >= clip_out // 2, (mouth_moved, clip_out)
    else:
        assert mouth_moved == 0, (mouth_moved, clip_out)



def test_musetalk_lip_syncs_a_clip_with_latents_and_shows_one_without_as_recorded(tmp_path_factory):
    import wave

    from avatars.store import load_avatar
    from basereal import EngineConfig
    from musereal import MuseReal, MuseTalkRuntime
    from musetalk.loader import load_models
    from musetalk.prepare import add_musetalk_latents
    from musetalk.settings import MuseTalkSettings
    from tests.support.musetalk_fixtures import spoken, write_face_avatar, write_tiny_weights

    root = tmp_path_factory.mktemp("museclips")
    models = load_models(write_tiny_weights(root / "models"), device="cpu")
    data = root / "data"
    add_musetalk_latents(write_face_avatar(data / "avatars" / "museface", 90), models)
    add_musetalk_latents(write_face_avatar(data / "customvideo" / "withlatents", 200), models)
    write_face_avatar(data / "customvideo" / "nolatents", 150)
    with wave.open(str(data / "customvideo" / "say.wav"), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((spoken("Hello there.", 0.8) * 32767).astype("<i2").tobytes())
    library = actions.ClipLibrary(data, fade_frames=2)
    clips = library.load(json.dumps([
        {"audiotype": 2, "imgpath": "customvideo/withlatents", "audiopath": "customvideo/say.wav"},
        {"audiotype": 3, "imgpath": "customvideo/nolatents", "audiopath": "customvideo/say.wav"}]), "custom_config")
    runtime = MuseTalkRuntime(models, MuseTalkSettings())
    engine = MuseReal(load_avatar(data / "avatars" / "museface"), EngineConfig(batch_size=8), "museclip", runtime=runtime)
    try:
        library.apply(engine, clips)
        assert engine.scene.lipsynced == {id(clips[2])}
        engine.start()
        for audiotype, lip_synced in ((3, False), (2, True)):
            before = runtime.worker.stats.frames
            engine.scene.play(audiotype)
            deadline = time.monotonic() + 60
            while engine.scene.playing:  # the clip's 20 frames (0.8 s) after the frames queued before it
                assert time.monotonic() < deadline, "the clip did not finish"
                clip_frames_out(engine, 1)
            clip_frames_out(engine, 2 * engine.config.lookahead_frames)  # its last frames leave the engine
            assert (runtime.worker.stats.frames - before >= 15) == lip_synced, (audiotype, runtime.worker.stats.frames - before)
    finally:
        engine.stop()
        runtime.close()
