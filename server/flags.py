"""The command line: the core flags (engine, avatar, address, folders) and every feature's own.

Flags are dashed; LiveTalking's underscore spellings (--avatar_id, --max_session,
--batch_size, --listenport) are kept as aliases so its launch commands work.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

import httpapi
import llm
from engines import MODEL_CHOICES
from media import SUPPORTED_FPS
from musetalk.settings import DEFAULT_CONTEXT_CHUNKS, right_context
from musetalk.settings import add_arguments as add_musetalk_arguments
from server import ltcompat, security
from server.context import Feature
from tts import factory as tts_factory

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AVATAR_ID = "default"
DEFAULT_PORT = 8010
DEFAULT_BATCH_SIZE = 8
DEFAULT_AVATAR_CACHE_MB = 1024.0


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_CHOICES, default="auto",
                        help="lip-sync engine; auto = musetalk when its weights are in models/, else lite")
    parser.add_argument("--avatar-id", "--avatar_id", dest="avatar_id", default=DEFAULT_AVATAR_ID,
                        help="avatar used when an offer names none")
    parser.add_argument("--listen-port", "--listenport", dest="listenport", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 serves the LAN)")
    parser.add_argument("--fps", type=int, default=25, choices=SUPPORTED_FPS)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="frames per inference batch (musetalk)")
    parser.add_argument("-r", "--right-context", dest="right_context", type=right_context, default=DEFAULT_CONTEXT_CHUNKS,
                        help="musetalk: future audio whisper sees after each batch, in 20 ms chunks (adds that latency)")
    add_musetalk_arguments(parser)
    parser.add_argument("--avatar-cache-mb", dest="avatar_cache_mb", type=float, default=DEFAULT_AVATAR_CACHE_MB,
                        help="memory the loaded avatars may take together (the least recently used are dropped)")
    parser.add_argument("--data-dir", dest="data_dir", type=Path, default=ROOT / "data")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    parser.add_argument("--log-level", dest="log_level", default="INFO")


def build_parser(features: Iterable[Feature]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Real-time talking avatar server (WebRTC).")
    add_core_arguments(parser)
    for module in (tts_factory, llm, security, httpapi, ltcompat):
        module.add_arguments(parser)
    for feature in features:
        if hasattr(feature, "add_arguments"):
            feature.add_arguments(parser)
    return parser
