"""The server as a real child process for drain and multi-worker tests: started when asked, signalled, awaited."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from tests.support.server_process import ServerProcess


class WorkerProcess(ServerProcess):
    """A `ServerProcess` (espeak, ICE on loopback) that `start` launches and `signal`/`wait_exit` stop."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str):
        super().__init__(data_dir, log_path, "--tts", "espeak", "--ice-host", "127.0.0.1", *extra, start=False)

    async def start(self, http: aiohttp.ClientSession) -> "WorkerProcess":
        self.launch()
        await self.wait_ready(http)
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server still running after {timeout:.0f} s:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.1)
        return self.proc.returncode

    def kill(self) -> None:
        """Cleanup after a failed test: only this child, by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
