"""POST /set_avatar: another avatar mid-session, crossfaded, at the session's first size."""

from __future__ import annotations

import asyncio
import json

import av
import numpy as np
import pytest

from avatars.prepare import write_avatar
from tests.support.clip_helpers import center_color, near
from tests.conftest import PHOTO_AVATAR_ID, TEST_AVATAR_SIZE
from tests.support.rtc_client import ReceiverClient
from tests.test_actions import post, wait_until

WIDE_ID = "widebox"
WIDE_COLOR = (30, 180, 230)  # BGR


@pytest.fixture(scope="module")
def wide_avatar(data_dir) -> str:
    """A 240x120 avatar (2:1, another size than the 160x160 test avatar) of one colour."""
    frames = [np.full((120, 240, 3), WIDE_COLOR, np.uint8) for _ in range(4)]
    write_avatar(data_dir / "avatars" / WIDE_ID, frames, {"source": "synthetic", "fps": 25})
    return WIDE_ID


async def test_set_avatar_crossfades_to_another_size_without_renegotiating(server, http, wide_avatar, tmp_path):
    client = ReceiverClient(server.url)
    await client.connect(http, data_channel=True)
    await client.wait_for(video_frames=10, audio_frames=20)
    url, sid = server.url, client.sessionid
    before = center_color(client.video[-1].data)
    assert (await post(http, f"{url}/record", {"sessionid": sid, "type": "start_record"}))[0] == 200
    mark = len(client.video)
    status, body = await post(http, f"{url}/set_avatar", {"sessionid": sid, "avatar": wide_avatar})
    assert status == 200 and body["data"] == {"avatar": WIDE_ID, "size": [240, 120],
                                              "sent_size": [TEST_AVATAR_SIZE, TEST_AVATAR_SIZE]}, body
    await wait_until(lambda: near(client.video[-1].data, WIDE_COLOR), what="the new avatar")
    frames = client.video[mark:]
    assert all(f.data.shape[:2] == (TEST_AVATAR_SIZE, TEST_AVATAR_SIZE) for f in frames)
    last = client.video[-1].data.astype(int)
    assert last[:30].mean() < 20 and last[-30:].mean() < 20  # letterboxed: 160x80 picture, black bars
    first_new = next(i for i, f in enumerate(frames) if near(f.data, WIDE_COLOR))
    mixed = [f for f in frames[:first_new] if not near(f.data, WIDE_COLOR) and
             float(np.abs(center_color(f.data) - before).max()) > 30]
    assert len(mixed) >= 3, len(mixed)  # a crossfade, not a cut
    assert client.pc.connectionState == "connected"
    # A recording across the switch keeps one size and holds both avatars.
    status, body = await post(http, f"{url}/record", {"sessionid": sid, "type": "end_record"})
    assert status == 200, body
    async with http.get(f"{url}/record/{sid}") as response:
        path = tmp_path / "switch.mp4"
        path.write_bytes(await response.read())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (TEST_AVATAR_SIZE, TEST_AVATAR_SIZE)
        recorded = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
    assert len(recorded) == body["data"]["frames"]
    assert not near(recorded[0], WIDE_COLOR) and near(recorded[-1], WIDE_COLOR)

    # A switch to an avatar with face data; speech goes on on the same tracks.
    await asyncio.sleep(1.0)  # one switch a second per session (--set-avatar-interval)
    status, body = await post(http, f"{url}/set_avatar", {"sessionid": sid, "avatar": PHOTO_AVATAR_ID})
    assert status == 200 and body["data"]["sent_size"] == [TEST_AVATAR_SIZE, TEST_AVATAR_SIZE]
    assert (await post(http, f"{url}/human", {"sessionid": sid, "text": "Hello.", "type": "echo"}))[0] == 200
    await wait_until(lambda: any(json.loads(m).get("type") == "end" for m in client.channel_messages),
                     what="the utterance on the new avatar")
    assert server.context.sessions.get(sid).engine.avatar.avatar_id == PHOTO_AVATAR_ID

    for avatar, code in (("nobody", 404), ("../etc", 400), (None, 400), (3, 400)):
        status, body = await post(http, f"{url}/set_avatar", {"sessionid": sid, "avatar": avatar})
        assert status == code and body["code"] == -1 and body["msg"], (avatar, body)
    assert (await post(http, f"{url}/set_avatar", {"sessionid": "nobody", "avatar": WIDE_ID}))[0] == 404
    await asyncio.sleep(0.2)
    assert client.pc.connectionState == "connected"
    await client.close()
