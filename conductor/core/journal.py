"""The journal: every accepted change on disk before it is acknowledged or shown.

A journal is a JSON Lines file. Its first line is a header naming the score (and its hash); each
further line is one change (``Change.to_json()`` plus when it was accepted and who made it) or a
checkpoint (``{"type": "checkpoint", "seq", "state"}``: the performance's state after change
``seq``).

- **Group commit.** ``Journal.append`` never blocks: a writer task takes every record appended
  since its last write and writes them with one ``fdatasync``, in a thread, off the event loop.
  Each record's future resolves once its batch is on disk.
- **A failed write leaves nothing behind.** The file is cut back to where the batch began, every
  record of it is refused (``JournalUnavailable``) and so is every record appended until a
  checkpoint can be written again, which the writer tries every ``RETRY_EVERY`` seconds.
- **A bounded restart.** A checkpoint is written every ``checkpoint_every`` records or
  ``checkpoint_seconds``; ``resume`` reads the file backwards to the last one and replays only the
  records after it.
- **Strict reading.** A line that is not a record, or whose ``seq`` does not follow, stops a
  resume with its ``file:line`` (unless told to skip such lines); a torn last line (a crash in
  mid-write) is skipped and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conductor.core.score import Score
from conductor.core.transport import Change, Transport

VERSION = 1
CHECKPOINT = b'{"type":"checkpoint"'
RETRY_EVERY = 1.0  # seconds between tries to write again after a failed write
READ_BACK = 1 << 16  # bytes read at a time when looking for the last checkpoint


class JournalError(Exception):
    """A journal that cannot be opened or resumed; the message is one line that says what to do."""


class JournalUnavailable(Exception):
    """The journal cannot be written now (a full disk, a read-only file system, an I/O error)."""


@dataclass
class Record:
    change: Change
    accepted: float  # conductor time the conductor accepted it
    by: dict[str, Any]  # role and name of who sent it
    coalesced: int = 0  # earlier values of its parameters it replaced unsent (the conductor was behind)

    def to_json(self) -> dict[str, Any]:
        entry = {**self.change.to_json(), "accepted": self.accepted, "by": self.by}
        return {**entry, "coalesced": self.coalesced} if self.coalesced else entry


@dataclass
class JournalContents:
    header: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:line: why" for lines that could not be read


@dataclass
class Resumed:
    transport: Transport  # the performance's state at the end of the journal
    records: int  # records replayed after the checkpoint (or all, if there is none)
    checkpoint_seq: int | None
    skipped: list[str]


def _finite(value: float) -> float:
    # json reads 1e999 as inf and NaN as nan: neither is a time or a value.
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


def _record(data: Any) -> Record:
    if not isinstance(data, dict):
        raise ValueError("not an object")
    change = Change.from_json(data)
    if not isinstance(change.seq, int) or isinstance(change.seq, bool):
        raise ValueError(f"seq {change.seq!r} is not a whole number")
    _finite(float(change.t))
    if change.segment is not None:
        s = change.segment
        if not (all(isinstance(v, int | float) for v in (s.t, s.pos, s.rate)) and isinstance(s.playing, bool)):
            raise ValueError("segment: t, pos and rate are numbers, playing true or false")
        for v in (s.t, s.pos, s.rate):
            _finite(float(v))
    for name, value in change.params.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"params.{name}: not a number")
        _finite(float(value))
    accepted = data["accepted"]
    if not isinstance(accepted, int | float):
        raise ValueError("accepted: not a number")
    return Record(change, _finite(float(accepted)), data.get("by", {}), int(data.get("coalesced", 0)))


def _header(path: Path, first: bytes) -> dict[str, Any]:
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JournalError(
            f"{path}:1: the header is not JSON ({e}); start with --fresh to begin a new performance"
        ) from e
    if not isinstance(header, dict) or header.get("type") != "header" or header.get("version") != VERSION:
        raise JournalError(f"{path}:1: not a Tutti journal header (version {VERSION}); start with --fresh")
    return header


def _lines(path: Path, data: bytes, start: int, first_line: int) -> Iterator[tuple[int, bytes, bool]]:
    """Each line of ``data`` from byte ``start``: its number, its bytes and whether it is the last, torn one."""
    n = first_line
    pos = start
    while pos < len(data):
        end = data.find(b"\n", pos)
        torn = end < 0
        line = data[pos:] if torn else data[pos:end]
        if line.strip():
            yield n, line, torn
        n += 1
        pos = len(data) if torn else end + 1


def _parse(path: Path, n: int, line: bytes, torn: bool) -> Record | dict[str, Any]:
    """A record or a checkpoint; raises ValueError saying what is wrong."""
    try:
        data = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ValueError(("torn by a crash" if torn else "not JSON") + f" ({e.msg})") from e
    if isinstance(data, dict) and data.get("type") == "checkpoint":
        if not isinstance(data.get("seq"), int) or not isinstance(data.get("state"), dict):
            raise ValueError("a checkpoint needs a whole-number seq and a state")
        return data
    try:
        return _record(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a change ({e.__class__.__name__}: {e})") from e


def read(path: Path) -> JournalContents:
    """Every record of a journal, in order, for replaying a performance; damaged lines are skipped and listed."""
    data = path.read_bytes()
    first_end = data.find(b"\n")
    contents = JournalContents(_header(path, data[: first_end if first_end >= 0 else len(data)]))
    for n, line, torn in _lines(path, data, first_end + 1 if first_end >= 0 else len(data), 2):
        try:
            entry = _parse(path, n, line, torn)
        except ValueError as e:
            contents.skipped.append(f"{path}:{n}: unreadable entry skipped ({e})")
            continue
        if isinstance(entry, Record):
            contents.records.append(entry)
    return contents


def _last_checkpoint(data: bytes, body: int) -> int:
    """Byte offset of the last checkpoint line (or ``body``, the first line after the header)."""
    end = len(data)
    while end > body:
        start = max(body, end - READ_BACK)
        chunk = data[start:end]
        at = chunk.rfind(b"\n" + CHECKPOINT)
        if at >= 0:
            return start + at + 1
        if start == body and data.startswith(CHECKPOINT, body):
            return body
        end = start + len(CHECKPOINT)  # a match may straddle two chunks
        if start == body:
            break
    return body


def resume(path: Path, score: Score, score_sha256: str, *, fresh: bool = False, skip_bad: bool = False) -> Resumed:
    """Open an existing journal for a restart (or set it aside when ``fresh``) and rebuild the state."""
    transport = Transport(score)
    try:
        exists = path.exists() and path.stat().st_size > 0
        if exists and fresh:
            path.rename(path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"))
            exists = False
        if not exists:
            return Resumed(transport, 0, None, [])
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"{path}: cannot read the journal: {e.strerror or e}") from e
    first_end = data.find(b"\n")
    header = _header(path, data[: first_end if first_end >= 0 else len(data)])
    if header.get("score_sha256") != score_sha256:
        raise JournalError(
            f"{path}: this journal belongs to another version of the score "
            f"({header.get('score')}); start with --fresh to begin a new performance"
        )
    body = first_end + 1 if first_end >= 0 else len(data)
    start = _last_checkpoint(data, body)
    line_number = 2 + data.count(b"\n", body, start)
    skipped: list[str] = []
    checkpoint_seq: int | None = None
    records = 0
    for n, line, torn in _lines(path, data, start, line_number):
        try:
            entry = _parse(path, n, line, torn)
            if isinstance(entry, dict):
                transport.restore(entry["state"])
                checkpoint_seq = transport.seq = entry["seq"]
                continue
            if entry.change.seq != transport.seq + 1:
                raise ValueError(f"seq {entry.change.seq} does not follow {transport.seq}")
        except (ValueError, KeyError, TypeError) as e:
            problem = f"{path}:{n}: {e}"
            if torn:
                skipped.append(f"{problem}; skipped")
                continue
            if not skip_bad:
                raise JournalError(
                    f"{problem}; start with --skip-bad-journal-lines to skip it, or --fresh to begin a new performance"
                ) from e
            skipped.append(f"{problem}; skipped")
            continue
        transport.apply(entry.change)
        records += 1
    return Resumed(transport, records, checkpoint_seq, skipped)


class Journal:
    """An open journal: ``append`` returns a future that resolves once the record is on disk."""

    def __init__(
        self,
        path: Path,
        header: dict[str, Any],
        durable: Transport,
        *,
        checkpoint_every: int = 5000,
        checkpoint_seconds: float = 60.0,
    ):
        self.path = path
        self.durable = durable  # the state exactly as on disk
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.max_batch: int | None = None  # records written at most at once (None: all waiting)
        self.unavailable: str | None = None
        self.on_availability: Callable[[str | None], None] | None = None
        self.batches = 0  # writes, each with one fdatasync
        self._pending: list[tuple[Record, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._since_checkpoint = 0
        self._first_since_checkpoint: float | None = None
        self._now = -math.inf  # conductor time of the latest record written
        self._closing = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not path.exists() or path.stat().st_size == 0
            self._file = path.open("ab")
            if fresh:
                self._file.write(_line({"type": "header", "version": VERSION, **header}))
            elif not path.read_bytes().endswith(b"\n"):
                self._file.write(b"\n")  # end a line torn by a crash, so the next entry starts clean
            self._file.flush()
            os.fdatasync(self._file.fileno())
        except OSError as e:
            raise JournalError(f"{path}: cannot write the journal: {e.strerror or e}") from e

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_batches())

    def append(self, record: Record) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.unavailable:
            future.set_exception(JournalUnavailable(self.unavailable))
        else:
            self._pending.append((record, future))
            if self._wake:
                self._wake.set()
        return future

    async def _write_batches(self) -> None:
        assert self._wake is not None
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                cut = self.max_batch or len(self._pending)
                batch, self._pending = self._pending[:cut], self._pending[cut:]
                await self._write(batch)
                if self.unavailable:
                    await self._recover()

    async def _write(self, batch: list[tuple[Record, asyncio.Future[None]]]) -> None:
        before = self.durable.snapshot(self._now)  # to go back to if the batch cannot be written
        for record, _ in batch:
            self.durable.apply(record.change)
            self._now = max(self._now, record.accepted)
        lines = b"".join(_line(record.to_json()) for record, _ in batch)
        self._since_checkpoint += len(batch)
        first = self._first_since_checkpoint = self._first_since_checkpoint or time.monotonic()
        if self._since_checkpoint >= self.checkpoint_every or time.monotonic() - first >= self.checkpoint_seconds:
            lines += self._checkpoint_line()
        try:
            await asyncio.to_thread(self._sync, lines)
        except OSError as e:
            self.durable.restore(before)
            self._failed(e, batch)
            return
        self.batches += 1
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _checkpoint_line(self) -> bytes:
        self._since_checkpoint = 0
        self._first_since_checkpoint = None
        # What was superseded before the latest change was accepted no longer matters.
        state = self.durable.snapshot(self._now)
        return _line({"type": "checkpoint", "seq": self.durable.seq, "state": state})

    def _sync(self, lines: bytes) -> None:
        """In a thread: write, flush and fdatasync; on failure, cut the file back to where it was."""
        size = self._file.tell()
        try:
            self._file.write(lines)
            self._file.flush()
            os.fdatasync(self._file.fileno())
        except OSError:
            # Whatever the buffer still holds would go out with the next write: drop it with the file.
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            self._file = self.path.open("ab")
            raise

    def _failed(self, error: OSError, batch: list[tuple[Record, asyncio.Future[None]]]) -> None:
        self.unavailable = f"journal {self.path}: {error.strerror or error} (errno {error.errno})"
        refused = JournalUnavailable(self.unavailable)
        for _, future in [*batch, *self._pending]:
            if not future.done():
                future.set_exception(refused)
        self._pending.clear()
        if self.on_availability:
            self.on_availability(self.unavailable)

    async def _recover(self) -> None:
        """Try again, every second, until a checkpoint of the state on disk can be written."""
        while self.unavailable and not self._closing:
            await asyncio.sleep(RETRY_EVERY)
            try:
                await asyncio.to_thread(self._sync, self._checkpoint_line())
            except OSError:
                continue
            self.unavailable = None
            if self.on_availability:
                self.on_availability(None)

    async def close(self) -> None:
        """Write what is waiting, then stop."""
        self._closing = True
        if self._writer and self._wake:
            self._wake.set()
            await self._writer
        with contextlib.suppress(OSError):
            self._file.close()


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()


def replay_times(records: list[Record]) -> Iterator[tuple[float, Record]]:
    """Each record with its delay from the first one, for re-emitting a performance in time."""
    if not records:
        return
    start = records[0].accepted
    for record in records:
        yield record.accepted - start, record
