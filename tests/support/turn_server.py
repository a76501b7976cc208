"""coturn (Debian's `turnserver`) on 127.0.0.1 with one long-term credential, for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.binaries import require_binary
from tests.conftest import free_port

TURN_USER, TURN_SECRET = "avatar", "turn-secret"
START_TIMEOUT_S = 10.0


def stun_answers(port: int) -> bool:
    """True once a STUN Binding request to 127.0.0.1:port gets a Binding success response."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(request, ("127.0.0.1", port))
        try:
            answer = sock.recv(2048)
        except socket.timeout:
            return False
    return answer[:2] == b"\x01\x01" and answer[8:20] == request[8:20]


class Coturn:
    """turnserver relaying between loopback peers (which it refuses unless told)."""

    def __init__(self, folder: Path):
        self.binary = require_binary("turnserver", "coturn")
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """As `--ice-server` takes it."""
        return f"turn:{TURN_USER}:{TURN_SECRET}@127.0.0.1:{self.port}?transport=udp"

    def start(self) -> "Coturn":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "turnserver.log"
        self.process = subprocess.Popen(
            [self.binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={self.port}",
             "--min-port=49160", "--max-port=49260", "--lt-cred-mech", f"--user={TURN_USER}:{TURN_SECRET}",
             "--realm=avatar.test", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--fingerprint",
             "--log-file=stdout", "--simple-log", f"--pidfile={self.folder / 'turnserver.pid'}",
             f"--db={self.folder / 'turndb'}"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not stun_answers(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver did not start: {log.read_text(errors='replace')[-2000:]}")
        return self

    def stop(self) -> None:
        """Only our turnserver, by pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
