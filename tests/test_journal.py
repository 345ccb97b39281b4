"""The journal: nothing accepted is lost, and a conductor killed mid-piece resumes exactly."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conductor.client import TuttiClient
from conductor.core import journal
from conductor.core.transport import Change, Segment
from tests.conftest import ROOT, TOKENS, ConductorProcess, write_concert


def test_a_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    j = journal.Journal(path, {"score": "s", "score_sha256": "x"})
    j.append(journal.Record(Change(1, 10.0, {"cmd": "play"}, Segment(10.0, 0.0, 1.0, True)), 9.8, {}))
    j.close()
    with path.open("a") as f:
        f.write('{"seq":2,"t":11.0,"comm')  # the process died here
    contents = journal.read(path)
    assert [r.change.seq for r in contents.records] == [1]
    assert contents.skipped and f"{path}:3: unreadable entry skipped" in contents.skipped[0]
    j = journal.Journal(path, {"score": "s", "score_sha256": "x"})  # reopening starts a clean line
    j.append(journal.Record(Change(2, 12.0, {"cmd": "pause"}, Segment(12.0, 2.0, 1.0, False)), 11.8, {}))
    j.close()
    assert [r.change.seq for r in journal.read(path).records] == [1, 2]


async def test_conductor_killed_mid_piece_resumes_exactly(tmp_path: Path) -> None:
    concert = write_concert(tmp_path)
    first = ConductorProcess(concert)
    client = TuttiClient(first.url, "conductor", TOKENS["conductor"])
    await client.connect()
    accepted = []
    for cmd, fields in [
        ("play", {}),
        ("section", {"id": "flood"}),
        ("tempo", {"bpm": 108}),
        ("param", {"name": "density", "value": 0.8}),
    ]:
        answer = await client.command(cmd, **fields)
        assert answer["ok"], answer
        accepted.append(answer["seq"])
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    before = first.status()
    await client.close()
    first.kill()

    entries = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()[1:]]
    assert [e["seq"] for e in entries] == accepted  # every accepted change is on disk

    second = ConductorProcess(concert)
    try:
        status = second.status()
        # Playing from position p at T (rate r) is, after the restart, at p + (now - T) * r.
        seg = entries[2]["segment"]
        expected = seg["pos"] + (status["now"] - seg["t"]) * seg["rate"]
        assert seg["rate"] == pytest.approx(1.5)
        assert status["position"] == pytest.approx(expected, abs=0.001)
        assert status["state"]["seq"] == before["state"]["seq"] == 4
        assert status["state"]["params"]["density"][-1][1] == 0.8
        late = TuttiClient(second.url, "performer", TOKENS["performer"], part="drones")
        await late.connect()  # a client joining after the restart is at the same place
        assert late.position() == pytest.approx(second.status()["position"], abs=0.005)
        await late.close()
    finally:
        log = second.stop()
    assert "resumed 4 changes" in log


def test_a_journal_from_another_score_is_refused_and_fresh_sets_it_aside(tmp_path: Path) -> None:
    (tmp_path / "journal.jsonl").write_text(
        json.dumps({"type": "header", "version": 1, "score": "old.yaml", "score_sha256": "0" * 64}) + "\n"
    )
    concert = write_concert(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 1 and "belongs to another version of the score" in run.stderr
    proc = ConductorProcess(concert, "--fresh")
    try:
        assert proc.status()["state"]["seq"] == 0
    finally:
        proc.stop()
    assert len(list(tmp_path.glob("journal.*.jsonl"))) == 1  # the old one is kept, renamed


async def test_replay_re_emits_a_performance_in_time(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    original = ConductorProcess(write_concert(tmp_path / "a"))
    client = TuttiClient(original.url, "conductor", TOKENS["conductor"])
    await client.connect()
    for cmd, fields, pause in [("play", {}, 0.4), ("seek", {"position": 30}, 0.6), ("pause", {}, 0.0)]:
        assert (await client.command(cmd, **fields))["ok"]
        await asyncio.sleep(pause)
    await client.close()
    original.stop()

    target = ConductorProcess(write_concert(tmp_path / "b"))
    watcher = TuttiClient(target.url, "audience")
    await watcher.connect()
    started = time.time()
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conductor",
        "replay",
        str(tmp_path / "a" / "journal.jsonl"),
        "--url",
        target.url,
        "--token",
        TOKENS["conductor"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await run.communicate()
    await asyncio.sleep(0.3)
    await watcher.close()
    target.stop()
    assert run.returncode == 0
    assert [line.split()[3] for line in out.decode().splitlines()] == ["play", "seek", "pause"]
    recorded = journal.read(tmp_path / "a" / "journal.jsonl").records
    replayed = journal.read(tmp_path / "b" / "journal.jsonl").records
    assert [r.change.command for r in replayed] == [r.change.command for r in recorded]
    gaps = [b.accepted - a.accepted for a, b in itertools.pairwise(recorded)]
    replay_gaps = [b.accepted - a.accepted for a, b in itertools.pairwise(replayed)]
    assert replay_gaps == pytest.approx(gaps, abs=0.05)  # in time
    assert [c["command"]["cmd"] for c in watcher.changes] == ["play", "seek", "pause"]
    assert watcher.changes[0]["received"] >= started
