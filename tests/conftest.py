"""Shared fixtures: real conductor processes on loopback, concert files in temporary folders."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from playwright.async_api import Browser, async_playwright

from bench.harness import CHROMIUM, CHROMIUM_ARGS, redis_server

# Property tests check what the code does, not how fast a busy machine runs it (CI has its own profile).
settings.register_profile("busy", deadline=None)
if not os.environ.get("CI"):
    settings.load_profile("busy")


ROOT = Path(__file__).resolve().parent.parent
SCORES = ROOT / "scores"
TOKENS = {"conductor": "t-conductor", "performer": "t-performer", "node": "t-node"}


# What starts a real process: the fixtures that do, and the calls a test body may make itself.
PROCESS_FIXTURES = {"conductor", "browser", "redis_url", "live", "node", "sites", "scsynth", "workers", "small_disk",
                    "osc_conductor", "slow_conductor", "audience", "boss", "per_part"}  # fmt: skip
STARTS_PROCESSES = re.compile(
    r"ConductorProcess\(|start_node\(|subprocess|Scsynth\(|start_jack\(|jack_server\(|running\("
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``integration`` or ``unit``, so that ``pytest -m unit`` runs the fast ones alone."""
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function else ""
        starts = PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or STARTS_PROCESSES.search(source)
        item.add_marker(pytest.mark.integration if starts else pytest.mark.unit)


def udp_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports free on 127.0.0.1 now (for scsynth and sclang)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def write_concert(folder: Path, score: Path = SCORES / "demo.yaml", **extra: Any) -> Path:
    settings = {
        "score": str(score),
        "host": "127.0.0.1",
        "port": 0,
        "lookahead": 0.2,
        "journal": str(folder / "journal.jsonl"),
        "tokens": dict(TOKENS),
        **extra,
    }
    path = folder / "concert.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


class ConductorProcess:
    """``python -m conductor serve`` in a subprocess, as an operator would run it."""

    def __init__(self, concert: Path, *args: str):
        self.concert = concert
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conductor", "-v", "serve", str(self.concert), *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        lines = []
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"OSC on UDP (\d+)(?:, TCP \(SLIP\) (\d+))?", line):
                self.osc_udp, self.osc_tcp = int(m[1]), int(m[2] or 0)
            if m := re.search(r"listening on (https?://\S+)", line):
                self.url = m[1]
                self.log_lines = lines
                # Keep reading its output, or a full pipe would stall the server.
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                return
        raise RuntimeError("conductor did not start:\n" + "".join(lines))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log_lines.append(line)

    def status(self) -> dict[str, Any]:
        context = ssl._create_unverified_context() if self.url.startswith("https") else None  # a test certificate
        with urllib.request.urlopen(self.url + "/api/status", timeout=5, context=context) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> str:
        """SIGTERM and wait; returns what the process printed."""
        assert self.proc is not None and self.proc.stdout is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reader.join(5)
        return "".join(self.log_lines)


@pytest.fixture
def concert(tmp_path: Path) -> Path:
    return write_concert(tmp_path)


@pytest.fixture
def conductor(concert: Path) -> Iterator[ConductorProcess]:
    proc = ConductorProcess(concert)
    yield proc
    proc.stop()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A real redis-server on loopback."""
    async with redis_server() as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright."""
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests talk to loopback only; never through a proxy from the environment.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
