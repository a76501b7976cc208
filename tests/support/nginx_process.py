"""Debian's nginx in the foreground with a config of ours, all files under one temp folder."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.support.binaries import require_binary

START_TIMEOUT_S = 10.0


class NginxProcess:
    def __init__(self, prefix: Path, config: str):
        self.binary = require_binary("nginx", "nginx")
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(config)
        self.process: subprocess.Popen | None = None

    def start(self, port: int) -> "NginxProcess":
        """Run nginx and wait until it accepts connections on 127.0.0.1:port."""
        check = subprocess.run([self.binary, "-t", "-p", str(self.prefix), "-c", str(self.conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)

    def access_log(self) -> list[str]:
        """One line per request: method, path, status, the upstreams tried and what each answered."""
        log = self.prefix / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def error_log(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        """Only our nginx master (its workers follow it), by pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
