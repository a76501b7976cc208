"""Listening: the user's microphone and camera over the WebRTC uplink (see DESIGN.md "Listening").

Stages: uplink reader -> 16 kHz mono buffer -> Silero VAD -> turn detector (barge-in)
-> the process's ASR worker -> transcript -> the session's mode (chat, echo, lips, off).
"""

from listen.service import ListenService, attach, mode_from, register
from listen.settings import LISTEN_MODES, ListenConfigError, ListenSettings, add_arguments

__all__ = ["LISTEN_MODES", "ListenConfigError", "ListenService", "ListenSettings", "add_arguments", "attach", "mode_from", "register"]
