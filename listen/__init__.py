"""Listening: the user's microphone and camera over the WebRTC uplink (see DESIGN.md "Listening").

Stages: uplink reader -> 16 kHz mono buffer -> echo canceller (the avatar's own voice out) -> Silero VAD -> turn detector (barge-in)
-> the process's ASR worker -> transcript -> the session's mode (chat, echo, lips, off).
"""

import argparse

from listen import echo
from listen import settings
from listen.service import ListenService, attach, client_cancels_from, mode_from, register
from listen.settings import LISTEN_MODES, ListenConfigError, ListenSettings

__all__ = ["LISTEN_MODES", "ListenConfigError", "ListenService", "ListenSettings", "add_arguments", "attach", "client_cancels_from", "mode_from", "register"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser)
    echo.add_arguments(parser)
