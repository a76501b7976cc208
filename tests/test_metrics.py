"""/metrics through a live session: real aiortc peer, espeak, a scripted LLM, prometheus' own parser."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import connected_client, free_port, server_args, start_server
from tests.support.llm_server import Script
from tests.support.speech_helpers import post, wait_silent, wait_voiced

TOKEN = "scrape-secret"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client itself."""
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


async def scrape(http, url: str, token: str | None = TOKEN) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{url}/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return samples(await response.text())


async def wait_metric(http, url: str, key: tuple, minimum: float, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = await scrape(http, url)
        if found.get(key, 0) >= minimum:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} stayed below {minimum}: {found.get(key)}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def metered(data_dir, llm_server):
    running = await start_server(server_args(
        data_dir, "--max_session", "2", "--metrics-token", TOKEN,
        "--llm-base-url", llm_server.base_url, "--llm-model", "test-model",
        "--tts-proxy", f"http://127.0.0.1:{free_port()}"))
    yield running
    await running.runner.cleanup()


async def test_metrics_need_the_token(metered, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with http.get(f"{metered.url}/metrics", headers=headers) as response:
            body = await response.json()
            assert response.status == 401 and "Bearer" in body["msg"], body
    found = await scrape(http, metered.url)
    assert found[("avatar_sessions", (("state", "connected"),))] == 0
    assert found[("avatar_engine_info", (("engine", "lite"),))] == 1


async def test_stages_of_a_live_session_are_measured(metered, llm_server, http):
    client = await connected_client(metered.url, http)
    try:
        found = await scrape(http, metered.url)
        assert found[("avatar_sessions", (("state", "connected"),))] == 1
        assert found[("avatar_sessions_started_total", ())] == 1

        since = len(client.audio)
        text = "Metrics are counted while the avatar speaks this rather long sentence to the end."
        status, _ = await post(http, f"{metered.url}/human", {"sessionid": client.sessionid, "text": text})
        assert status == 200
        await wait_voiced(client, since)
        await asyncio.sleep(0.3)
        status, _ = await post(http, f"{metered.url}/interrupt_talk", {"sessionid": client.sessionid})
        assert status == 200
        await wait_silent(client, 0.3)

        llm_server.queue(Script(deltas=["Yes. ", "Fine."], delay=0.05), Script(status=401))
        await post(http, f"{metered.url}/human", {"sessionid": client.sessionid, "text": "Hi?", "type": "chat"})
        await wait_metric(http, metered.url, ("avatar_llm_first_token_seconds_count", ()), 1)
        await post(http, f"{metered.url}/human", {"sessionid": client.sessionid, "text": "Again?", "type": "chat",
                                                  "interrupt": True})
        found = await wait_metric(http, metered.url, ("avatar_errors_total", (("kind", "llm_auth"),)), 1)
        await post(http, f"{metered.url}/human", {"sessionid": "nope", "text": "x"})
        found = await scrape(http, metered.url)
    finally:
        await client.close()

    def one(name: str, **labels) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    for stage in ("avatar_text_to_first_voiced_frame_seconds", "avatar_interrupt_to_flush_seconds"):
        assert one(f"{stage}_count") >= 1, stage
        assert 0 < one(f"{stage}_sum") < 10 * one(f"{stage}_count"), stage
    assert one("avatar_tts_first_audio_seconds_count", backend="espeak") >= 2
    assert one("avatar_inference_batch_seconds_count", stage="session") >= 10
    assert one("avatar_inference_batch_frames_sum", stage="session") >= 10
    assert one("avatar_video_frames_sent_total") >= 25
    assert one("avatar_http_responses_total", route="/human", status="200") == 3
    assert one("avatar_http_responses_total", route="/human", status="404") == 1
    assert one("avatar_queue_depth", queue="output") >= 0


def test_dashboard_queries_only_metrics_the_server_exports():
    import json
    import re
    from pathlib import Path

    from ops.metrics import GPU_ALLOCATED, GPU_RESERVED, Metrics

    metrics = Metrics("lite")
    metrics.watch(lambda: [], lambda: 0)
    for histogram in (metrics.tts_first_audio.labels("espeak"), metrics.batch_time.labels("session"),
                      metrics.batch_frames.labels("session")):
        histogram.observe(1)
    metrics.error("tts")
    metrics.http.labels("/", "200").inc()
    exported = {s.name for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}
    exported |= {GPU_ALLOCATED, GPU_RESERVED}
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bavatar_[a-z_]+", target["expr"])}
    assert len(queried) >= 12
    assert queried <= exported, queried - exported


async def test_auth_token_guards_metrics_unless_a_metrics_token_is_given(data_dir, http):
    for flags, good, bad in ((("--auth-token", "main-secret"), "main-secret", "other"),
                             (("--auth-token", "main-secret", "--metrics-token", TOKEN), TOKEN, "main-secret")):
        running = await start_server(server_args(data_dir, *flags))
        try:
            for token, status in ((None, 401), (bad, 401), (good, 200)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.get(f"{running.url}/metrics", headers=headers) as response:
                    assert response.status == status, (flags, token, response.status)
            for probe in ("/healthz", "/readyz"):  # load balancers' probes carry no token
                async with http.get(f"{running.url}{probe}") as response:
                    assert response.status == 200, probe
        finally:
            await running.runner.cleanup()


async def test_asr_time_reaches_its_histogram(metered, http, monkeypatch):
    """The listening service's ASR worker reports end of utterance -> transcript (a scripted
    recogniser stands in for whisper here; the listening tests run the real one)."""
    import numpy as np

    import listen.service
    from listen.asr import ASRBackend
    from listen.service import LISTEN_KEY

    class Scripted(ASRBackend):
        def transcribe(self, audio: np.ndarray) -> str:
            time.sleep(0.05)
            return "hello"

    monkeypatch.setattr(listen.service, "create_backend", lambda settings: Scripted())
    worker = metered.app[LISTEN_KEY].asr_worker()
    texts: list[str] = []
    worker.submit(np.zeros(16000, np.float32), lambda transcript: texts.append(transcript.text), texts.append)
    found = await wait_metric(http, metered.url, ("avatar_asr_seconds_count", ()), 1)
    assert texts == ["hello"] and found[("avatar_asr_seconds_sum", ())] >= 0.05
