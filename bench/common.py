"""Shared pieces of the benchmarks: an in-process server and loopback clients."""

from __future__ import annotations

import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import aioice.ice
from aiohttp import web


def loopback_only() -> None:
    """Benchmarks, like tests, gather ICE candidates on 127.0.0.1 only."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {percentile(values, 95) * 1000:.0f} ms (n={len(values)})"


async def start_server(*flags: str):
    """The app in this process on a free loopback port: (application, runner, url)."""
    import app as server_app
    from tests.conftest import free_port

    loopback_only()
    application = server_app.create_app(server_app.build_parser().parse_args(list(flags)))
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return application, runner, f"http://127.0.0.1:{port}"


def speech_bench_parser(doc: str):
    """The flags every in-process speech benchmark takes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--avatar", default="default")
    parser.add_argument("--model", default="lite")
    return parser
