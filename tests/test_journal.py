"""The journal: nothing accepted is lost, and a conductor killed mid-piece resumes exactly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor.client import TuttiClient
from conductor.core import journal
from conductor.core.score import load_score
from conductor.core.transport import Change, Segment, Transport
from tests.conftest import ROOT, SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_node import until

SCORE = load_score(SCORES / "demo.yaml")


def param(seq: int, value: float, t: float = 10.0) -> journal.Record:
    return journal.Record(Change(seq, t + seq, {"cmd": "param"}, params={"density": value}), t + seq - 0.2, {})


async def write(path: Path, records: list[journal.Record], **options: int) -> journal.Journal:
    j = journal.Journal(path, {"score": "s", "score_sha256": SCORE.sha256}, Transport(SCORE.score), **options)
    await j.start()
    await asyncio.gather(*(j.append(r) for r in records))
    await j.close()
    return j


async def test_a_torn_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [journal.Record(Change(1, 10.0, {"cmd": "play"}, Segment(10.0, 0.0, 1.0, True)), 9.8, {})])
    with path.open("a") as f:
        f.write('{"seq":2,"t":11.0,"comm')  # the process died here
    resumed = journal.resume(path, SCORE.score, SCORE.sha256)
    assert resumed.transport.seq == 1 and resumed.skipped and f"{path}:3: torn by a crash" in resumed.skipped[0]
    durable = resumed.transport
    j = journal.Journal(path, {}, durable)  # reopening starts a clean line
    await j.start()
    await j.append(journal.Record(Change(2, 12.0, {"cmd": "pause"}, Segment(12.0, 2.0, 1.0, False)), 11.8, {}))
    await j.close()
    assert [r.change.seq for r in journal.read(path).records] == [1, 2]


async def test_changes_appended_together_are_written_with_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    j = await write(tmp_path / "j.jsonl", [param(i, i / 1000) for i in range(1, 501)])
    assert j.batches <= 2 and len(syncs) <= 3  # the header's, then the batch (the first may go alone)
    assert [r.change.seq for r in journal.read(tmp_path / "j.jsonl").records] == list(range(1, 501))


async def test_a_restart_replays_only_what_follows_the_last_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    records = [param(i, (i % 100) / 100) for i in range(1, 2501)]
    j = journal.Journal(path, {"score_sha256": SCORE.sha256}, Transport(SCORE.score), checkpoint_every=1000)
    j.max_batch = 100
    await j.start()
    await asyncio.gather(*(j.append(r) for r in records))
    await j.close()
    resumed = journal.resume(path, SCORE.score, SCORE.sha256)
    everything = Transport(SCORE.score)
    for r in journal.read(path).records:
        everything.apply(r.change)
    assert resumed.checkpoint_seq == 2000 and resumed.records == 500
    assert resumed.transport.seq == everything.seq == 2500
    for t in (2500.0, 2510.0, 2600.0):
        assert resumed.transport.params["density"].at(t) == everything.params["density"].at(t)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (
            b'{"seq":2,"t":12.0,"command":{},"segment":{"t":12.0,"pos":"x","rate":1,"playing":true},"accepted":1}',
            "not a change",
        ),
        (b'{"seq":"bad","t":12.0,"command":{},"params":{},"accepted":1}', "not a whole number"),
        (b'{"seq":2,"t":1e999,"command":{},"params":{},"accepted":1}', "not a finite number"),
        (b'{"seq":1,"t":12.0,"command":{},"params":{},"accepted":1}', "seq 1 does not follow 1"),
        (b'{"seq":7,"t":12.0,"command":{},"params":{},"accepted":1}', "seq 7 does not follow 1"),
    ],
)
async def test_a_bad_line_stops_a_restart_with_its_place_unless_told_to_skip(
    tmp_path: Path, line: bytes, why: str
) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(1, 0.5)])
    with path.open("ab") as f:
        f.write(line + b"\n")
    with pytest.raises(journal.JournalError) as refused:
        journal.resume(path, SCORE.score, SCORE.sha256)
    message = str(refused.value)
    assert message.startswith(f"{path}:3: ") and why in message and "--skip-bad-journal-lines" in message
    assert "\n" not in message
    skipped = journal.resume(path, SCORE.score, SCORE.sha256, skip_bad=True)
    assert skipped.transport.seq == 1 and len(skipped.skipped) == 1


def test_a_journal_that_cannot_be_written_at_start_is_one_line(small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # root ignores file modes
    with pytest.raises(journal.JournalError) as refused:
        journal.Journal(small_disk / "j.jsonl", {}, Transport(SCORE.score))
    message = str(refused.value)
    assert message.startswith(f"{small_disk / 'j.jsonl'}: cannot write the journal") and "\n" not in message


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 256 KiB (tmpfs, as root), to fill."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_refuses_changes_leaves_nothing_behind_and_recovers(small_disk: Path) -> None:
    path = small_disk / "j.jsonl"
    changes: list[str | None] = []
    j = journal.Journal(path, {"score_sha256": SCORE.sha256}, Transport(SCORE.score))
    j.on_availability = changes.append
    await j.start()
    await j.append(param(1, 0.1))
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
    refused = [j.append(param(i, 0.2)) for i in range(2, 400)]  # more than the page the journal ends in holds
    for future in refused:
        with pytest.raises(journal.JournalUnavailable):
            await future
    assert j.unavailable and "No space left on device" in j.unavailable and changes == [j.unavailable]
    with pytest.raises(journal.JournalUnavailable):
        await j.append(param(2, 0.3))  # refused at once while unavailable
    filler.unlink()
    await until(lambda: j.unavailable is None, 10, "the journal did not recover")
    assert changes[-1] is None
    await j.append(param(2, 0.4))
    await j.close()
    resumed = journal.resume(path, SCORE.score, SCORE.sha256)
    assert resumed.transport.seq == 2 and resumed.transport.params["density"].at(1e9) == 0.4
    assert [r.change.params["density"] for r in journal.read(path).records] == [0.1, 0.4]  # nothing refused


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
