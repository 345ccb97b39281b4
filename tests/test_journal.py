"""The journal: nothing accepted is lost, and a conductor killed mid-piece resumes exactly.

The journal module on its own first (batches, checkpoints, every kind of bad line), then real
conductor processes. Real full and read-only disks are in ``test_journal_disk.py``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conductor.client import TuttiClient
from conductor.core import journal
from conductor.core.score import load_score
from conductor.core.transport import Change, Segment, Transport
from tests.conftest import ROOT, SCORES, TOKENS, ConductorProcess, write_concert
from tests.test_node import until

SCORE = load_score(SCORES / "demo.yaml")
HEADER = {"score": "demo.yaml", "score_sha256": SCORE.sha256}


def param(seq: int, value: float, t: float = 10.0) -> journal.Record:
    return journal.Record(Change(seq, t + seq, {"cmd": "param"}, params={"density": value}), t + seq - 0.2, {})


def opened(path: Path, **options: Any) -> journal.Journal:
    return journal.Journal(path, HEADER, Transport(SCORE.score), **options)


async def write(path: Path, records: list[journal.Record], max_batch: int | None = None, **options: Any) -> None:
    j = opened(path, **options)
    j.max_batch = max_batch
    await j.start()
    await asyncio.gather(*(j.append(r) for r in records))
    await j.close()


def resume(path: Path, **options: bool) -> journal.Resumed:
    return journal.resume(path, SCORE.score, SCORE.sha256, **options)


def replayed(path: Path) -> Transport:
    """The state from every record, checkpoints ignored."""
    transport = Transport(SCORE.score)
    for record in journal.read(path).records:
        transport.apply(record.change)
    return transport


def refused(call: Any) -> str:
    with pytest.raises(journal.JournalError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    return message


# Group commit: one write and one fdatasync for every record waiting, in order.


async def test_changes_appended_together_are_written_with_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[str] = []
    real = os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: (syncs.append(threading.current_thread().name), real(fd)))
    j = opened(tmp_path / "j.jsonl")
    await j.start()
    futures = [j.append(param(i, i / 1000)) for i in range(1, 501)]
    await asyncio.gather(*futures)
    await j.close()
    assert j.batches == 1 and len(syncs) == 2  # the header's when opened, then one for all 500
    assert syncs[1] != threading.main_thread().name  # off the event loop's thread
    assert [r.change.seq for r in journal.read(tmp_path / "j.jsonl").records] == list(range(1, 501))
    assert j.durable.seq == 500 and j.durable.params["density"].at(1e9) == 0.5


async def test_changes_appended_during_a_write_go_in_the_next_and_resolve_only_once_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    futures: list[asyncio.Future[None]] = []
    done_when_synced: list[int] = []
    real = os.fdatasync

    def slow(fd: int) -> None:
        done_when_synced.append(sum(f.done() for f in futures))
        time.sleep(0.1)
        real(fd)

    j = opened(tmp_path / "j.jsonl")
    monkeypatch.setattr(journal.os, "fdatasync", slow)
    await j.start()
    futures += [j.append(param(i, 0.1)) for i in range(1, 11)]
    await asyncio.sleep(0.03)  # the first batch is being written
    futures += [j.append(param(i, 0.2)) for i in range(11, 21)]
    await asyncio.sleep(0)
    assert not any(f.done() for f in futures)
    await asyncio.wait_for(asyncio.gather(*futures[:10]), 5)
    assert not any(f.done() for f in futures[10:])
    await asyncio.gather(*futures)
    await j.close()
    assert j.batches == 2 and done_when_synced == [0, 10]
    assert [r.change.seq for r in journal.read(tmp_path / "j.jsonl").records] == list(range(1, 21))


async def test_appended_before_start_is_written_and_after_close_refused(tmp_path: Path) -> None:
    j = opened(tmp_path / "j.jsonl")
    early = j.append(param(1, 0.1))
    await j.start()
    await asyncio.wait_for(early, 5)
    await j.close()
    with pytest.raises(journal.JournalUnavailable, match="closed"):
        await j.append(param(2, 0.2))
    await j.close()  # twice is harmless
    assert resume(tmp_path / "j.jsonl").transport.seq == 1


# Checkpoints: a restart replays only what follows the last one, and ends where replaying all would.


async def test_a_restart_replays_only_what_follows_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(i, (i % 100) / 100) for i in range(1, 2501)], max_batch=100, checkpoint_every=1000)
    kinds = [json.loads(line).get("type") for line in path.read_text().splitlines()]
    assert kinds.count("checkpoint") == 2 and kinds.index("checkpoint", 2) == 1001  # after change 1000
    # A clean restart reads only the end of the file: it never even counts its lines.
    monkeypatch.setattr(journal, "_count_lines", lambda *a: pytest.fail("counted lines"))
    resumed = resume(path)
    everything = replayed(path)
    assert resumed.checkpoint_seq == 2000 and resumed.records == 500 and resumed.skipped == []
    assert resumed.transport.seq == everything.seq == 2500
    for t in (2509.8, 2510.0, 2600.0):
        assert resumed.transport.params["density"].at(t) == everything.params["density"].at(t)


async def test_a_checkpoint_follows_the_first_change_after_checkpoint_seconds_even_if_nothing_else_comes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.jsonl"
    j = opened(path, checkpoint_seconds=0.2)
    await j.start()
    await asyncio.gather(*(j.append(param(i, 0.3)) for i in range(1, 4)))
    await until(lambda: b'{"type":"checkpoint"' in path.read_bytes(), 5, "no checkpoint was written")
    await j.close()
    resumed = resume(path)
    assert resumed.checkpoint_seq == 3 and resumed.records == 0 and resumed.transport.seq == 3


PARAMS = [p.id for p in SCORE.score.parameters]


@st.composite
def performances(draw: st.DrawFn) -> list[journal.Record]:
    """Changes as a conductor accepts them: in time order, each taking effect a little before or after."""
    accepted = 1_800_000_000.0
    records = []
    for seq in range(1, draw(st.integers(1, 60)) + 1):
        accepted += draw(st.floats(0, 2))
        t = accepted + draw(st.floats(-0.5, 1))
        if draw(st.booleans()):
            segment = Segment(t, draw(st.floats(0, 600)), draw(st.floats(0.25, 4)), draw(st.booleans()))
            change = Change(seq, t, {"cmd": "seek"}, segment=segment)
        else:
            names = draw(st.lists(st.sampled_from(PARAMS), min_size=1, max_size=3, unique=True))
            change = Change(seq, t, {"cmd": "params"}, params={n: draw(st.floats(0, 1)) for n in names})
        records.append(journal.Record(change, accepted, {"role": "conductor"}))
    return records


@settings(max_examples=60, deadline=None)
@given(performances(), st.integers(1, 25), st.integers(1, 10), st.floats(0, 5))
def test_resuming_from_a_checkpoint_is_the_same_as_replaying_everything(
    records: list[journal.Record], every: int, batch: int, later: float
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "j.jsonl"
        asyncio.run(write(path, records, max_batch=batch, checkpoint_every=every))
        resumed = resume(path)
        everything = replayed(path)
        in_memory = Transport(SCORE.score)
        for r in records:
            in_memory.apply(r.change)
    assert (resumed.checkpoint_seq is not None) == (len(records) >= every)
    assert resumed.records == len(records) - (resumed.checkpoint_seq or 0)
    now = records[-1].accepted + later  # what anyone asks of a resumed state: now and later
    assert resumed.transport.snapshot(now) == everything.snapshot(now) == in_memory.snapshot(now)
    assert resumed.transport.position(now) == everything.position(now)


# Strict reading: every bad line stops a restart with its place, unless told to skip it.

BAD_LINES = [
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b'{"seq":3,"t":12.0,', "not JSON"),
    (b'{"seq":3,"t":NaN,"command":{"cmd":"param"},"params":{},"accepted":1}', "not JSON (NaN is not a JSON number)"),
    (b"[3, 12.0]", "not a change: not an object"),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"segment":{"t":12.0,"pos":"x","rate":1,"playing":true},"accepted":1}',
        "not a change: segment.pos: 'x' is not a number",
    ),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"segment":{"t":12.0,"pos":1,"rate":1,"playing":"yes"},"accepted":1}',
        "segment.playing: 'yes' is not true or false",
    ),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"segment":{"t":12.0},"accepted":1}',
        "segment: needs exactly t, pos, rate",
    ),
    (b'{"seq":"bad","t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1}', "seq: 'bad' is not a whole number"),
    (b'{"seq":3.0,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1}', "seq: 3.0 is not a whole number"),
    (b'{"seq":3,"t":1e999,"command":{"cmd":"param"},"params":{},"accepted":1}', "t: inf is not a finite number"),
    (b'{"seq":3,"t":"12","command":{"cmd":"param"},"params":{},"accepted":1}', "t: '12' is not a number"),
    (b'{"seq":3,"t":true,"command":{"cmd":"param"},"params":{},"accepted":1}', "t: True is not a number"),
    (b'{"seq":3,"command":{"cmd":"param"},"params":{},"accepted":1}', "not a change: no t"),
    (b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":{}}', "not a change: no accepted"),
    (b'{"seq":3,"t":12.0,"command":"play","params":{},"accepted":1}', "command: 'play' is not an object"),
    (b'{"seq":3,"t":12.0,"command":{"cmd":7},"params":{},"accepted":1}', "command.cmd: 7 is not a name"),
    (b'{"seq":3,"t":12.0,"command":{"name":"x"},"params":{},"accepted":1}', "not a change: no command.cmd"),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":[["density",0.5]],"accepted":1}',
        "params: [['density', 0.5]] is not",
    ),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":{"density":"loud"},"accepted":1}',
        "params.density: 'loud' is not a",
    ),
    (b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1,"by":"me"}', "by: 'me' is not an object"),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1,"coalesced":-1}',
        "coalesced: -1 is less than 0",
    ),
    (b'{"type":"header","version":1}', "type 'header' is not a change or a checkpoint"),
    (
        b'{"seq":3,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1e999}',
        "accepted: inf is not a finite number",
    ),
    (b'{"seq":1,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1}', "seq 1 does not follow 2"),  # backwards
    (b'{"seq":2,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1}', "seq 2 does not follow 2"),  # repeated
    (b'{"seq":7,"t":12.0,"command":{"cmd":"param"},"params":{},"accepted":1}', "seq 7 does not follow 2"),  # a jump
    (b'{"type":"checkpoint","seq":2,"state":{}}', "not a checkpoint: no state.segments"),
    (b'{"type":"checkpoint","seq":2,"state":{"segments":[],"params":{}}}', "state.segments: not a list"),
]


@pytest.mark.parametrize(("line", "why"), BAD_LINES)
async def test_a_bad_line_stops_a_restart_with_its_place_unless_told_to_skip(
    tmp_path: Path, line: bytes, why: str
) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(1, 0.5), param(2, 0.6)])
    with path.open("ab") as f:
        f.write(line + b"\n")
    message = refused(lambda: resume(path))
    assert message.startswith(f"{path}:4: ") and why in message
    assert message.endswith("; start with --skip-bad-journal-lines to skip it, or --fresh to begin a new performance")
    skipped = resume(path, skip_bad=True)
    assert skipped.transport.seq == 2 and skipped.transport.params["density"].at(1e9) == 0.6
    assert len(skipped.skipped) == 1 and skipped.skipped[0].startswith(f"{path}:4: ") and why in skipped.skipped[0]


async def test_a_bad_line_after_a_checkpoint_is_named_by_its_line_in_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(i, 0.5) for i in range(1, 2501)], max_batch=100, checkpoint_every=1000)
    with path.open("ab") as f:
        f.write(b'{"seq":2502,"t":1.0,"command":{"cmd":"param"},"params":{},"accepted":1}\n')
    # 1 header + 2500 changes + 2 checkpoints: the bad one is line 2504.
    assert refused(lambda: resume(path)).startswith(f"{path}:2504: seq 2502 does not follow 2500")


async def test_skipping_a_damaged_line_keeps_the_changes_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(i, i / 10) for i in range(1, 6)])
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3][:20] + b"\x00\x00garbage" + lines[3][30:]  # change 3, on line 4, hit by a bad disk block
    path.write_bytes(b"\n".join(lines))
    assert refused(lambda: resume(path)).startswith(f"{path}:4: not JSON")
    resumed = resume(path, skip_bad=True)
    # Change 4 follows the unreadable line, which held change 3: the rest of the performance is kept.
    assert resumed.transport.seq == 5 and resumed.records == 4 and len(resumed.skipped) == 1
    assert resumed.transport.params["density"].at(1e9) == 0.5
    assert [r.change.seq for r in journal.read(path).records] == [1, 2, 4, 5]


async def test_a_line_in_the_old_format_with_one_param_is_read(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(1, 0.5)])
    with path.open("ab") as f:
        f.write(b'{"seq":2,"t":12.0,"command":{"cmd":"param","name":"density","value":0.7},"param":"density",')
        f.write(b'"value":0.7,"accepted":11.8,"by":{"role":"conductor"}}\n')
    assert resume(path).transport.params["density"].at(13.0) == 0.7


# A crash leaves a torn last line: always skipped, never fatal, and cut off when the journal reopens.


async def test_a_torn_last_line_is_skipped_reported_and_cut_off_on_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [journal.Record(Change(1, 10.0, {"cmd": "play"}, Segment(10.0, 0.0, 1.0, True)), 9.8, {})])
    with path.open("a") as f:
        f.write('{"seq":2,"t":11.0,"comm')  # the process died here
    resumed = resume(path)
    assert resumed.transport.seq == 1 and resumed.skipped == [
        f"{path}:3: torn by a crash (the last line has no end); skipped"
    ]
    j = journal.Journal(path, HEADER, resumed.transport)
    await j.start()
    await j.append(journal.Record(Change(2, 12.0, {"cmd": "pause"}, Segment(12.0, 2.0, 1.0, False)), 11.8, {}))
    await j.close()
    again = resume(path)  # the next restart finds a clean journal
    assert again.transport.seq == 2 and again.skipped == []
    assert [r.change.seq for r in journal.read(path).records] == [1, 2]


async def test_a_last_line_whole_but_for_its_newline_was_never_acknowledged_and_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(1, 0.1), param(2, 0.2)])
    path.write_bytes(path.read_bytes()[:-1])
    resumed = resume(path)
    assert resumed.transport.seq == 1 and len(resumed.skipped) == 1 and f"{path}:3: torn" in resumed.skipped[0]
    j = journal.Journal(path, HEADER, resumed.transport)
    await j.start()
    await j.append(param(2, 0.25))
    await j.close()
    assert resume(path).transport.params["density"].at(1e9) == 0.25 and resume(path).skipped == []


async def test_a_crash_while_writing_a_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(i, (i % 10) / 10) for i in range(1, 2001)], max_batch=100, checkpoint_every=1000)
    data = path.read_bytes()
    assert data.rsplit(b"\n", 2)[1].startswith(journal.CHECKPOINT)  # the file ends with the checkpoint of 2000
    path.write_bytes(data[:-30])
    resumed = resume(path)
    assert resumed.checkpoint_seq == 1000 and resumed.records == 1000 and resumed.transport.seq == 2000
    assert resumed.skipped == [f"{path}:2003: torn by a crash (the last line has no end); skipped"]
    assert resumed.transport.snapshot(3000.0) == replayed(path).snapshot(3000.0)
    j = journal.Journal(path, HEADER, resumed.transport)
    await j.start()
    await j.append(param(2001, 0.9))
    await j.close()
    again = resume(path)
    assert again.transport.seq == 2001 and again.skipped == [] and again.checkpoint_seq == 1000


async def test_a_damaged_last_checkpoint_is_an_error_or_skipped_for_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    await write(path, [param(i, (i % 10) / 10) for i in range(1, 2001)], max_batch=100, checkpoint_every=1000)
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b'"state"')] + b'"state":{"segments":"x","params":{}}}\n')
    assert refused(lambda: resume(path)).startswith(f"{path}:2003: not a checkpoint: state.segments: not a list")
    resumed = resume(path, skip_bad=True)
    assert resumed.checkpoint_seq == 1000 and resumed.transport.seq == 2000 and len(resumed.skipped) == 1


# The header: another file, another score, or torn while a first start wrote it.


RECORD = json.dumps(param(1, 0.5).to_json()).encode() + b"\n"


@pytest.mark.parametrize(
    ("contents", "why"),
    [
        (b"garbage\n" + RECORD, "1: the header is not JSON"),
        (b"\xff\xfe{}\n" + RECORD, "1: the header is not JSON"),
        (b'{"type":"change"}\n' + RECORD, "1: not a Tutti journal header"),
        (b'{"type":"header","version":2}\n' + RECORD, "1: not a Tutti journal header"),
        (b"hello", "1: the header is not JSON"),  # no newline, and not a header the writer began
        (
            json.dumps({"type": "header", "version": 1, "score": "old.yaml", "score_sha256": "0" * 64}).encode()
            + b"\n"
            + RECORD,
            "1: this journal belongs to another version of the score ('old.yaml')",
        ),
    ],
)
def test_a_bad_header_is_refused_with_what_to_do(tmp_path: Path, contents: bytes, why: str) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(contents)
    message = refused(lambda: resume(path, skip_bad=True))
    assert message.startswith(f"{path}:{why}") and message.endswith("start with --fresh to begin a new performance")
    if contents == b"hello":  # nor does the writer take it for a header torn by a crash and cut it
        assert "not a Tutti journal header" in refused(lambda: opened(path))
        assert path.read_bytes() == b"hello"


async def test_a_header_torn_by_a_crash_at_the_first_start_begins_the_journal_again(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"type":"header","vers')
    resumed = resume(path)
    assert resumed.transport.seq == 0 and resumed.skipped == [f"{path}:1: the header was torn by a crash; skipped"]
    await write(path, [param(1, 0.4)])
    assert resume(path).transport.seq == 1 and json.loads(path.read_text().splitlines()[0])["type"] == "header"


def test_fresh_sets_the_journal_aside_never_over_one_set_aside_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal.time, "strftime", lambda _: "20260101-120000")  # two starts in one second
    path = tmp_path / "j.jsonl"
    for n in (1, 2):
        path.write_text(f"journal {n}\n")
        assert resume(path, fresh=True).transport.seq == 0 and not path.exists()
    kept = sorted(p.read_text() for p in tmp_path.glob("j.*.jsonl"))
    assert kept == ["journal 1\n", "journal 2\n"]


def test_reading_a_missing_journal_is_one_line(tmp_path: Path) -> None:
    assert refused(lambda: journal.read(tmp_path / "none.jsonl")).startswith(f"{tmp_path / 'none.jsonl'}: cannot read")


# A failed write leaves nothing behind (with a real full disk: test_journal_disk.py).


async def test_a_failed_fdatasync_refuses_its_batch_and_nothing_of_it_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.jsonl"
    monkeypatch.setattr(journal, "RETRY_EVERY", 0.05)
    heard: list[str | None] = []

    def listener(reason: str | None) -> None:
        heard.append(reason)
        raise RuntimeError("a listener's fault")  # must not stop the writer

    j = opened(path)
    j.on_availability = listener
    await j.start()
    await j.append(param(1, 0.1))
    size = path.stat().st_size
    real_sync, real_truncate = os.fdatasync, os.ftruncate
    faults = {"sync": 1, "truncate": 1}  # the disk fails, and so does the first cut

    def sync(fd: int) -> None:
        if faults["sync"]:
            faults["sync"] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_sync(fd)

    def truncate(fd: int, length: int) -> None:
        if faults["truncate"]:
            faults["truncate"] -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_truncate(fd, length)

    monkeypatch.setattr(journal.os, "fdatasync", sync)
    monkeypatch.setattr(journal.os, "ftruncate", truncate)
    batch = [j.append(param(i, 0.2)) for i in range(2, 12)]
    for future in batch:
        with pytest.raises(journal.JournalUnavailable, match="Input/output error"):
            await future
    assert j.unavailable == f"journal {path}: Input/output error (errno 5)" and heard == [j.unavailable]
    assert path.stat().st_size > size  # the failed batch's bytes: the cut failed too
    with pytest.raises(journal.JournalUnavailable):
        await j.append(param(2, 0.3))  # refused at once while unavailable
    await until(lambda: j.unavailable is None, 5, "the journal did not recover")
    assert heard == [heard[0], None]
    await j.append(param(2, 0.4))
    await j.close()
    assert [r.change.params["density"] for r in journal.read(path).records] == [0.1, 0.4]  # nothing refused
    resumed = resume(path)
    assert resumed.transport.seq == 2 and resumed.skipped == []


async def test_a_change_json_cannot_hold_is_refused_not_left_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "RETRY_EVERY", 0.05)
    path = tmp_path / "j.jsonl"
    j = opened(path)
    await j.start()
    bad = journal.Record(Change(1, 10.0, {"cmd": "param"}, params={"density": float("nan")}), 9.8, {})
    with pytest.raises(journal.JournalUnavailable, match="cannot be written"):
        await asyncio.wait_for(j.append(bad), 5)
    await until(lambda: j.unavailable is None, 5, "the journal did not recover")
    await j.append(param(1, 0.5))
    await j.close()
    assert resume(path).transport.params["density"].at(1e9) == 0.5


# Real conductors.


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
        # at the same conductor time (the clock's own sync is tested in test_clock_sync.py)
        now = second.status()
        assert late.position(now["now"]) == pytest.approx(now["position"], abs=1e-6)
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


def test_serve_refuses_a_damaged_journal_in_one_line_and_skips_it_when_told(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    asyncio.run(write(path, [param(i, i / 10) for i in range(1, 4)]))
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"\x00" * len(lines[2])  # change 2, on line 3, zeroed by a damaged disk
    path.write_bytes(b"\n".join(lines))
    concert = write_concert(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"{path}:3: not JSON (Expecting value at character 1); start with --skip-bad-journal-lines to skip it, "
        "or --fresh to begin a new performance"
    )
    proc = ConductorProcess(concert, "--skip-bad-journal-lines")
    try:
        state = proc.status()["state"]
        assert state["seq"] == 3 and state["params"]["density"][-1][1] == 0.3
    finally:
        log = proc.stop()
    assert f"{path}:3: not JSON" in log and "skipped" in log


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
