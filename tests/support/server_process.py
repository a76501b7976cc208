"""A real server process (python app.py) on loopback, with its log, RSS and open files observable."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import aiohttp

from tests.conftest import TEST_AVATAR_ID, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ServerProcess:
    """`python app.py` on a free loopback port, started at once unless `start=False` (then `launch()`)."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str, start: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--listenport", str(self.port),
                        "--data-dir", str(data_dir), "--avatar_id", TEST_AVATAR_ID, "--model", "lite",
                        "--models-dir", str(data_dir / "no-models"), *extra]
        self.proc: subprocess.Popen | None = None
        self._log = None
        if start:
            self.launch()

    def launch(self) -> None:
        env = {**os.environ, "NO_PROXY": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        def exited() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")

        try:
            await wait_up(self.url, http, START_TIMEOUT_S, exited)
        except TimeoutError:
            raise TimeoutError(f"server not ready within {START_TIMEOUT_S} s:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS:")

    def peak_rss_mb(self) -> float:
        """The most resident memory the process has had (the kernel's high-water mark)."""
        return self._status_mb("VmHWM:")

    def reset_peak(self) -> None:
        """Start the high-water mark again from the RSS now (Linux: 5 > /proc/PID/clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def _status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


async def wait_up(url: str, http: aiohttp.ClientSession, timeout: float = START_TIMEOUT_S,
                  check: Callable[[], None] | None = None) -> None:
    """Until `url/config` answers 200 (TimeoutError after `timeout`); `check` may raise to give up early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            async with http.get(f"{url}/config") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"server at {url} did not start within {timeout} s")


def copy_test_data(source: Path, target: Path) -> Path:
    """A data folder of the attack suite's own (it adds a hostile symlink to it)."""
    shutil.copytree(source / "avatars" / TEST_AVATAR_ID, target / "avatars" / TEST_AVATAR_ID)
    return target
