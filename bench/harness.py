"""What the benchmarks share: starting Tutti's processes, launching Chromium, printing figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conductor.node.scsynth import start_jack  # noqa: E402
from conductor.server.cluster import free_port  # noqa: E402

# Debian's Chromium, headless, quiet on a closed network, and not throttled when in the background
# (a concert laptop may run several views at once).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
CHROMIUM = "/usr/bin/chromium"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def concert_file(tokens: dict[str, str], score: str | None = None, **settings: Any) -> Path:
    """A concert on a free port in a fresh temporary folder: of ``score`` (YAML text), or the demo."""
    folder = Path("/tmp") / f"tutti-bench-{time.time_ns()}"
    folder.mkdir()
    if score is not None:
        (folder / "score.yaml").write_text(score)
    path = folder / "concert.yaml"
    concert = {
        "score": str(folder / "score.yaml" if score is not None else ROOT / "scores/demo.yaml"),
        "port": 0,
        "journal": str(folder / "journal.jsonl"),
        "tokens": tokens,
        **settings,
    }
    path.write_text(json.dumps(concert))
    return path


_DRAINS: set[asyncio.Task[bytes]] = set()


async def started(*command: str, pattern: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start a server; returns it once it prints ``pattern``, and the pattern's first group."""
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if m := re.search(pattern, line):
            _DRAINS.add(asyncio.create_task(proc.stdout.read()))  # keep reading, or a full pipe would stall it
            return proc, m[1]
    raise RuntimeError(f"{' '.join(command[:4])} did not start")


@contextlib.asynccontextmanager
async def running(*args: str, nice: int = 0) -> AsyncIterator[str]:
    """Run ``tutti ARGS`` (serve or emulate) for the block, at niceness ``nice`` (as a unit's
    ``Nice=``); yields the address it announced."""
    command = ("nice", "-n", str(nice), sys.executable, "-m", "conductor", *args)
    proc, address = await started(*command, pattern=r"(?:listening on|emulating a link) (\S+)")
    try:
        yield address
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A real redis-server on a free loopback port, keeping nothing on disk; yields its URL."""
    port = free_port("127.0.0.1")
    proc = await asyncio.create_subprocess_exec(
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def jack_server(name: str) -> AsyncIterator[str]:
    """A JACK server with the dummy driver (48 kHz, 128-frame periods) for the block."""
    jackd = await start_jack(name)
    try:
        yield name
    finally:
        jackd.terminate()
        await jackd.wait()


async def node_agent(
    url: str, token: str, name: str, port: int, jack: str, *extra: str, netns: str | None = None
) -> asyncio.subprocess.Process:
    """``tutti node`` on an existing JACK server (in network namespace ``netns``, if given); stop it
    with ``terminate()``."""
    within = ["ip", "netns", "exec", netns] if netns else []
    return await asyncio.create_subprocess_exec(
        *within, sys.executable, "-m", "conductor", "node", "--url", url, "--name", name, "--token", token,
        "--port", str(port), "--jack-server", jack, "--no-jack", *extra,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def nodes_up(url: str, count: int) -> None:
    """Wait until ``count`` nodes report scsynth up and a settled clock."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            async with http.get(f"{url}/api/status") as r:
                clients = (await r.json())["clients"]
            up = [c for c in clients if c["role"] == "node" and (c["health"] or {}).get("samples", 0) >= 32]
            if len(up) >= count and all(c["health"]["up"] for c in up):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"only {len(up)} of {count} nodes came up")


def report(title: str, label: str, results: dict[object, dict[str, list[float]]], json_path: str | None) -> None:
    """Print median and p99 per case and rule, with each rule's p99 as a ratio to Tutti's."""
    print(title)
    print(f"{label:<16}{'rule':<12}{'median':>9}{'p99':>9}{'p99 vs tutti':>14}")
    figures = {}
    for case, rules in results.items():
        base = percentile(rules["tutti"], 0.99)
        for rule, errors in rules.items():
            med, p99 = statistics.median(errors), percentile(errors, 0.99)
            figures[f"{case}/{rule}"] = {"median_ms": med, "p99_ms": p99}
            print(f"{case!s:<16}{rule:<12}{med:9.3f}{p99:9.3f}{p99 / base if base else float('nan'):13.1f}x")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))


def medians(title: str, unit: str, runs: dict[str, list[float]], base: str, digits: int = 3) -> dict[str, object]:
    """Print each case's median over the rounds, as a ratio to ``base``'s; returns the figures."""
    reference = statistics.median(runs[base])
    print(f"{title:<28}{unit:>12}{'vs ' + base:>32}")
    figures: dict[str, object] = {}
    for name, values in runs.items():
        median = statistics.median(values)
        figures[name] = {"median": median, "rounds": values}
        print(f"{name:<28}{median:12.{digits}f}{median / reference:31.2f}x")
    return figures


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system (from /proc: Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def save(path: str | None, results: object) -> None:
    """Write a bench's figures as JSON, if asked to (``--json PATH``)."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
