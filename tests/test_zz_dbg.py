import asyncio, numpy as np, pytest
from listen.service import LISTEN_KEY
from tests.test_listen_echo import LEAKS, AVATAR_TEXTS, USER_SENTENCE, leaky_client, echo_server  # noqa
from tests.test_listen import is_final, wait_events, kinds
from tests.support.speech_helpers import post, wait_voiced, channel_events
from tests.support.speech_sender import speak

@pytest.mark.parametrize("gain_db, delay_s", LEAKS)
async def test_dbg(echo_server, http, gain_db, delay_s):
    client, mic = await leaky_client(echo_server.url, http, gain_db, delay_s, listen="echo")
    rec = []
    try:
        since = len(client.audio)
        echo = echo_server.app[LISTEN_KEY].sessions[client.sessionid].echo
        orig = echo.process
        def proc(x, t):
            o = orig(x, t); rec.append((x.copy(), o.copy(), echo.for_asr.copy())); return o
        echo.process = proc
        await post(http, f"{echo_server.url}/human", {"sessionid": client.sessionid, "text": " ".join(AVATAR_TEXTS)})
        await wait_voiced(client, since)
        await wait_events(client, lambda e: e["type"] == "echo" and e["converged"], timeout=15)
        n0 = sum(len(r[0]) for r in rec)
        mic.play(speak(USER_SENTENCE))
        try:
            found = await wait_events(client, is_final, timeout=20)
        except TimeoutError:
            found = None
        print("TRANSCRIPT", found, echo.stats(), echo._linear.adapted, echo.gated_blocks, echo.muted_blocks, kinds(client))
        x = np.concatenate([r[0] for r in rec]); o = np.concatenate([r[1] for r in rec]); a = np.concatenate([r[2] for r in rec])
        np.savez(f"/tmp/echo/dbg_{int(delay_s*1000)}.npz", x=x, o=o, a=a, n0=n0)
    finally:
        await client.close()
