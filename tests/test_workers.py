"""Several web workers for one performance, sharing broadcasts through a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conductor.client import TuttiClient
from conductor.server.cluster import free_port
from tests.conftest import ROOT, TOKENS, ConductorProcess, write_concert
from tests.test_node import until


@pytest.fixture
def workers(tmp_path: Path, redis_url: str) -> Iterator[ConductorProcess]:
    proc = ConductorProcess(write_concert(tmp_path), "--workers", "2", "--redis", redis_url)
    yield proc
    proc.stop()


@pytest.fixture
async def audience(workers: ConductorProcess) -> AsyncIterator[dict[str, list[TuttiClient]]]:
    """Audience clients, joined until each worker serves at least two (the kernel picks the worker)."""
    by_worker: dict[str, list[TuttiClient]] = {"w1": [], "w2": []}
    for _ in range(40):
        if all(len(c) >= 2 for c in by_worker.values()):
            break
        client = TuttiClient(workers.url, "audience", resync=0.5)
        await client.connect()
        by_worker[client.you["worker"]].append(client)
    assert all(len(c) >= 2 for c in by_worker.values()), {w: len(c) for w, c in by_worker.items()}
    yield by_worker
    for clients in by_worker.values():
        for client in clients:
            await client.close()


async def test_clients_on_different_workers_get_each_change_before_its_time(
    workers: ConductorProcess, audience: dict[str, list[TuttiClient]]
) -> None:
    boss = TuttiClient(workers.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    try:
        everyone = [c for clients in audience.values() for c in clients]
        for cmd, fields in (("play", {}), ("tempo", {"bpm": 96}), ("seek", {"position": 30.0})):
            at = boss.now() + 0.25
            answer = await boss.command(cmd, at=at, **fields)
            assert answer["ok"], answer
            await until(lambda s=answer["seq"]: all(c.transport.seq >= s for c in everyone), 5, f"{cmd} not received")
            for client in everyone:
                change = next(c for c in client.changes if c["seq"] == answer["seq"])
                assert change["t"] == at
                # Received before its effective time (the clients share this machine's wall clock).
                assert change["received"] < at, (client.you["worker"], change["received"] - at)
        await asyncio.sleep(0.3)
        # At any moment every client, whichever worker it is on, shows the same score position.
        t = boss.now()
        positions = [c.position(t) for c in everyone]
        assert max(positions) - min(positions) < 1e-9, positions
        assert abs(positions[0] - 30.0 - (t - at) * 96 / boss.transport.score.tempo.bpm) < 1e-6
    finally:
        await boss.close()


async def test_every_worker_answers_clock_sync_with_the_conductors_clock(
    workers: ConductorProcess, audience: dict[str, list[TuttiClient]]
) -> None:
    # Sync exchanges answered by either worker give the same offset: one clock, not one per worker.
    offsets = {w: [c.clock.offset for c in clients] for w, clients in audience.items()}
    spread = max(max(o) for o in offsets.values()) - min(min(o) for o in offsets.values())
    assert spread < 0.002, offsets
    errors = [c.clock.error for clients in audience.values() for c in clients]
    assert max(errors) < 0.005, errors
    status = workers.status()
    assert {c["worker"] for c in status["clients"]} == {"w1", "w2"}
    assert all(w["up"] for w in status["workers"].values())


async def test_clients_of_a_killed_worker_join_again_and_follow_on(
    workers: ConductorProcess, audience: dict[str, list[TuttiClient]]
) -> None:
    victims = audience["w1"]
    welcomes = [id(c.welcome) for c in victims]
    pid = workers.status()["workers"]["w1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await until(lambda: all(id(c.welcome) != w for c, w in zip(victims, welcomes, strict=True)), 10, "no rejoin")
    print(f"every client of the killed worker welcomed again after {time.monotonic() - killed:.2f} s")
    # The performance forgot the dead worker's connections, and the clients are served again.
    await until(lambda: len(workers.status()["clients"]) == sum(map(len, audience.values())), 5, "stale clients")
    boss = TuttiClient(workers.url, "conductor", TOKENS["conductor"])
    await boss.connect()
    try:
        answer = await boss.command("play")
        assert answer["ok"]
        await until(lambda: all(c.transport.seq == answer["seq"] for c in victims), 5, "no change after rejoining")
        assert all(c.transport.segments.at(answer["t"] + 0.01).playing for c in victims)
    finally:
        await boss.close()
    # The conductor starts the dead worker again.
    await until(lambda: workers.status()["workers"]["w1"]["up"], 10, "the killed worker was not started again")
    status = workers.status()["workers"]["w1"]
    assert status["restarts"] == 1 and status["pid"] != pid


def test_a_number_of_workers_that_is_not_a_count_is_refused(tmp_path: Path) -> None:
    for bad in ("-1", "two"):
        result = subprocess.run(
            [sys.executable, "-m", "conductor", "serve", str(write_concert(tmp_path)), "--workers", bad],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 2 and f"'{bad}' is not a count" in result.stderr


def test_a_redis_that_cannot_be_reached_is_said_in_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port('127.0.0.1')}"  # a port that nothing listens on
    concert = write_concert(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert), "--workers", "2", "--redis", url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"tutti serve --workers: cannot reach Redis at {url}: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "journal.jsonl").exists()  # nothing was started
