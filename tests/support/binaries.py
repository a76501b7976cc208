"""Debian programs some tests drive (nginx, coturn): found, or a failure that says what to install."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def require_binary(name: str, package: str) -> str:
    """Path of `name`; fails (never skips: CI installs it) naming the Debian package."""
    found = shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                        if p.is_file()), None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install -y {package} (README's test command does)")
    return found


def require_file(path: str, package: str) -> str:
    if not Path(path).is_file():
        pytest.fail(f"{path} is missing: apt-get install -y {package} (README's test command does)")
    return path
