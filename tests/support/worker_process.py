"""The server as a real child process (`python app.py ...`), for drain and multi-worker tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import TEST_AVATAR_ID, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


class WorkerProcess:
    """`python app.py` on a free loopback port; stdout+stderr go to a log file."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = [sys.executable, str(ROOT / "app.py"), "--data-dir", str(data_dir), "--avatar_id", TEST_AVATAR_ID,
                     "--model", "lite", "--tts", "espeak", "--models-dir", str(data_dir / "no-models"),
                     "--host", "127.0.0.1", "--listenport", str(self.port), "--ice-host", "127.0.0.1", *extra]
        self.process: subprocess.Popen | None = None

    async def start(self, http: aiohttp.ClientSession) -> "WorkerProcess":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                async with http.get(f"{self.url}/healthz") as response:
                    if response.status == 200:
                        return self
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"server did not answer /healthz within {START_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server still running after {timeout:.0f} s:\n{self.log()}")
            await asyncio.sleep(0.1)
        return self.process.returncode

    def kill(self) -> None:
        """Cleanup after a failed test: only this child, by its pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
