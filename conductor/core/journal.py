"""The journal: every accepted change on disk before it is acknowledged or shown.

A journal is a JSON Lines file. Its first line is a header naming the score (and its hash); each
further line is one change (``Change.to_json()`` plus when it was accepted and who made it) or a
checkpoint (``{"type": "checkpoint", "seq", "state"}``: the performance's state after change
``seq``, as ``Transport.snapshot`` gives it). Records are the truth; a checkpoint only saves
replaying them.

- **Group commit.** ``Journal.append`` never blocks and never raises: a writer task takes every
  record appended since its last write, and encodes and writes them with one ``fdatasync``, in a
  thread, off the event loop; what is appended meanwhile waits for the next batch. Each record's
  future resolves once its batch is on disk; the file keeps the order of ``append``.
  ``Journal.durable`` is the state exactly as on disk: the writer applies each batch to it once
  written (the conductor goes back to it when a batch is refused).
- **A failed write leaves nothing behind.** The writer knows the file's size after its last good
  write, and cuts the file back to it when a write fails (and before the next one, in case the cut
  failed too): no part of a refused batch can reach the disk later or be replayed after a restart.
  Every record of the batch is refused (``JournalUnavailable``), and so is every record appended
  until a checkpoint of ``durable`` can be written again, which the writer tries every
  ``RETRY_EVERY`` seconds. ``unavailable`` says why meanwhile; ``on_availability`` hears of it.
- **A bounded restart.** The writer adds a checkpoint every ``checkpoint_every`` records, or
  ``checkpoint_seconds`` after the first record since the last one. ``resume`` reads the file
  backwards from its end to the last checkpoint and replays only the records after it, so a
  restart costs the same after two hours as after two minutes.
- **Strict reading.** A line that is not UTF-8, not JSON, not a well-formed change or checkpoint, or
  whose ``seq`` does not follow the one before by exactly 1 stops a resume with its ``file:line``,
  unless told to skip such lines (``skip_bad``; each is reported). When skipping, a change may
  follow the last one read by as many seqs as unreadable lines were skipped since: those lines
  held the changes in between, and one bad disk block must not drop the rest of a performance.
  A torn last line (no newline: the process died while writing it) was never acknowledged: it is
  always skipped and reported, and ``Journal`` cuts it off when it reopens the file, so the next
  line starts clean. A torn or damaged last checkpoint falls back to the one before it. ``read``
  (for ``tutti replay``) skips what a resume with ``skip_bad`` would.
- Line numbers are counted only when a message needs one: a clean restart never reads the part of
  the file before its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from conductor.core.score import Score
from conductor.core.transport import Change, Rehearsal, Segment, Transport

log = logging.getLogger("tutti.journal")

VERSION = 1
HEADER = b'{"type":"header"'  # how the writer begins a header, to tell one torn by a crash from another file
CHECKPOINT = b'{"type":"checkpoint"'  # how the writer begins a checkpoint line, to find the last one
RETRY_EVERY = 1.0  # seconds between tries to write again after a failed write
BLOCK = 1 << 16  # bytes read at a time when reading backwards or counting lines
ENCODE_AT_ONCE = 200  # records encoded before the event loop gets a turn
SKIP_OR_FRESH = "start with --skip-bad-journal-lines to skip it, or --fresh to begin a new performance"


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
    skipped: list[str]  # "file:line: why" for lines skipped


# Reading: every check says what is wrong in words fit for "file:line: ...".


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ValueError(f"no {where}{key}")
    return data[key]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: {_show(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):  # json reads 1e999 as inf
        raise ValueError(f"{name}: {_show(value)} is not a finite number")
    return number


def _whole(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: {_show(value)} is not a whole number")
    if value < least:
        raise ValueError(f"{name}: {value} is less than {least}")
    return value


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: {_show(value)} is not an object")
    return value


def _segment(value: Any, name: str) -> Segment:
    data = _object(value, name)
    if set(data) - {"count_in"} != {"t", "pos", "rate", "playing"}:
        raise ValueError(f"{name}: needs exactly t, pos, rate and playing (and count_in, for a play after clicks)")
    if not isinstance(data["playing"], bool):
        raise ValueError(f"{name}.playing: {_show(data['playing'])} is not true or false")
    numbers = [_number(data[k], f"{name}.{k}") for k in ("t", "pos", "rate")]
    count_in = _number(data.get("count_in", 0.0), f"{name}.count_in")
    if not 0 <= count_in <= 3600:
        raise ValueError(f"{name}.count_in: {count_in:g} s is not 0 to 3600")
    return Segment(*numbers, data["playing"], count_in)


def _values(value: Any, name: str) -> dict[str, float]:
    return {str(k): _number(v, f"{name}.{k}") for k, v in _object(value, name).items()}


def _record(data: dict[str, Any]) -> Record:
    seq = _whole(_get(data, "seq", ""), "seq", 1)
    t = _number(_get(data, "t", ""), "t")
    command = _object(_get(data, "command", ""), "command")
    if not isinstance(_get(command, "cmd", "command."), str):
        raise ValueError(f"command.cmd: {_show(command['cmd'])} is not a name")
    segment = None if data.get("segment") is None else _segment(data["segment"], "segment")
    if data.get("params") is not None:
        params = _values(data["params"], "params")
    elif data.get("param") is not None:  # journals written before XY pads were one change
        if not isinstance(data["param"], str):
            raise ValueError(f"param: {_show(data['param'])} is not a name")
        params = {data["param"]: _number(_get(data, "value", ""), "value")}
    else:
        params = {}
    accepted = _number(_get(data, "accepted", ""), "accepted")
    by = _object(data.get("by", {}), "by")
    coalesced = _whole(data.get("coalesced", 0), "coalesced", 0)
    rehearsal = None if data.get("rehearsal") is None else Rehearsal.from_json(data["rehearsal"])
    return Record(Change(seq, t, command, segment, params, rehearsal), accepted, by, coalesced)


@dataclass
class _Checkpoint:
    seq: int
    state: dict[str, Any]  # as Transport.restore takes it, checked


def _checkpoint(data: dict[str, Any], score: Score | None) -> _Checkpoint:
    seq = _whole(_get(data, "seq", ""), "seq", 0)
    state = _object(_get(data, "state", ""), "state")
    segments = _get(state, "segments", "state.")
    if not isinstance(segments, list) or not segments:
        raise ValueError("state.segments: not a list of segments")
    params = _object(_get(state, "params", "state."), "state.params")
    known = {p.id for p in score.parameters} if score else set(params)
    timelines: dict[str, list[tuple[float, float]]] = {}
    for name, entries in params.items():
        where = f"state.params.{name}"
        if name not in known:
            raise ValueError(f"{where}: the score has no such parameter")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{where}: not a list of [t, value]")
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                raise ValueError(f"{where}: {_show(entry)} is not [t, value]")
        timelines[name] = [(_number(t, where), _number(v, where)) for t, v in entries]
    checked = [_segment(s, "state.segments[]") for s in segments]
    restored: dict[str, Any] = {"seq": seq, "segments": [asdict(s) for s in checked], "params": timelines}
    if (rehearsal := state.get("rehearsal")) is not None:
        restored["rehearsal"] = Rehearsal.from_json(rehearsal).to_json()
    return _Checkpoint(seq, restored)


def _entry(line: bytes, score: Score | None) -> Record | _Checkpoint:
    """A record or a checkpoint; raises ValueError saying what is wrong with the line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start + 1} of the line)") from e
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError, NaN, or an integer of thousands of digits
        why = f"{e.msg} at character {e.pos + 1}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise ValueError(f"not JSON ({why})") from e
    if not isinstance(data, dict):
        raise ValueError("not a change: not an object")
    kind = data.get("type")
    try:
        if kind == "checkpoint":
            return _checkpoint(data, score)
        if kind is not None:
            raise ValueError(f"type {_show(kind)} is not a change or a checkpoint")
        return _record(data)
    except ValueError as e:
        raise ValueError(f"not a {'checkpoint' if kind == 'checkpoint' else 'change'}: {e}") from e


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


class _OutOfOrder(ValueError):
    """A readable record whose seq does not follow."""


def _follows(seq: int, last: int, unread: int) -> None:
    """A record's seq must be the one after the last; lines skipped as unreadable may explain a gap."""
    if not last < seq <= last + 1 + unread:
        raise _OutOfOrder(f"seq {seq} does not follow {last}")


def _lines(data: bytes, start: int = 0) -> Iterator[tuple[int, int, bytes, bool]]:
    """Each non-blank line of ``data`` from ``start``: its index (0 for the first), offset, bytes, and
    whether it is torn (the last, with no newline)."""
    pos, index = start, 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        torn = end < 0
        end = len(data) if torn else end
        line = data[pos:end]
        if line.strip():
            yield index, pos, line, torn
        pos, index = end + 1, index + 1


def _first_line(f: BinaryIO) -> tuple[bytes, bool]:
    """The file's first line and whether it ends (with a newline)."""
    f.seek(0)
    chunks = []
    while block := f.read(BLOCK):
        at = block.find(b"\n")
        if at >= 0:
            chunks.append(block[:at])
            return b"".join(chunks), True
        chunks.append(block)
    return b"".join(chunks), False


def _torn_header(line: bytes) -> bool:
    """A first line with no newline that the writer began: it died writing the header."""
    return HEADER.startswith(line) or line.startswith(HEADER)


def _header(path: Path, line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except ValueError as e:  # also UnicodeDecodeError
        raise JournalError(
            f"{path}:1: the header is not JSON ({e}); start with --fresh to begin a new performance"
        ) from e
    if not isinstance(header, dict) or header.get("type") != "header" or header.get("version") != VERSION:
        raise JournalError(
            f"{path}:1: not a Tutti journal header (version {VERSION}); start with --fresh to begin a new performance"
        )
    return header


def _checkpoint_before(f: BinaryIO, body: int, end: int) -> int:
    """Offset of the last line before ``end`` that begins like a checkpoint, or ``body`` if there is none."""
    marker = b"\n" + CHECKPOINT
    hi = end
    while hi > body:
        lo = max(body - 1, hi - BLOCK)  # body - 1: the header's newline, so a checkpoint on line 2 is found
        f.seek(lo)
        block = f.read(hi - lo)
        at = block.rfind(marker)
        if at >= 0:
            return lo + at + 1
        if lo == body - 1:
            break
        hi = lo + len(marker) - 1  # blocks overlap, so a marker across two of them is found
    return body


def _count_lines(f: BinaryIO, end: int) -> int:
    """How many lines end before byte ``end``."""
    f.seek(0)
    count, left = 0, end
    while left > 0 and (block := f.read(min(BLOCK * 16, left))):
        count += block.count(b"\n")
        left -= len(block)
    return count


def _why(error: OSError) -> str:
    return f"{error.strerror or error} (errno {error.errno})" if error.errno else str(error)


def _set_aside(path: Path) -> None:
    """Rename a journal out of the way, never over one set aside before."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    path.rename(target)


def resume(path: Path, score: Score, score_sha256: str, *, fresh: bool = False, skip_bad: bool = False) -> Resumed:
    """Open an existing journal for a restart (or set it aside when ``fresh``) and rebuild the state."""
    try:
        size = path.stat().st_size if path.exists() else 0
        if size and fresh:
            _set_aside(path)
            size = 0
        if not size:
            return Resumed(Transport(score), 0, None, [])
        with path.open("rb") as f:
            return _resume(path, f, size, score, score_sha256, skip_bad)
    except OSError as e:
        raise JournalError(
            f"{path}: cannot read the journal: {_why(e)}; make it readable, or name another journal in the concert file"
        ) from e


def _resume(path: Path, f: BinaryIO, size: int, score: Score, score_sha256: str, skip_bad: bool) -> Resumed:
    first, ended = _first_line(f)
    if not ended and _torn_header(first):
        # Died while writing the header: no change was ever acknowledged. Journal begins it again.
        return Resumed(Transport(score), 0, None, [f"{path}:1: the header was torn by a crash; skipped"])
    header = _header(path, first)
    if header.get("score_sha256") != score_sha256:
        raise JournalError(
            f"{path}:1: this journal belongs to another version of the score "
            f"({_show(header.get('score'))}); start with --fresh to begin a new performance"
        )
    body = len(first) + 1

    # The last checkpoint that can be read; one torn by a crash (or damaged, when skipping) falls back
    # to the one before: the records between them are replayed instead.
    end = size
    while (start := _checkpoint_before(f, body, end)) > body:
        f.seek(start)
        line = f.readline(size - start)
        if line.endswith(b"\n"):
            with contextlib.suppress(ValueError):
                if isinstance(_entry(line[:-1], score), _Checkpoint):
                    break
            if not skip_bad:
                break  # the replay below reports it
        end = start
    f.seek(start)
    tail = f.read(size - start)

    first_number: int | None = None

    def place(index: int) -> str:
        nonlocal first_number
        if first_number is None:
            first_number = 1 + _count_lines(f, start)
        return f"{path}:{first_number + index}"

    transport = Transport(score)
    skipped: list[str] = []
    checkpoint_seq: int | None = None
    records = unread = 0
    for index, offset, line, torn in _lines(tail):
        try:
            if torn:
                raise ValueError("torn by a crash (the last line has no end)")
            entry = _entry(line, score)
            if isinstance(entry, _Checkpoint):
                if offset == 0:
                    transport.restore(entry.state)
                    checkpoint_seq = entry.seq
                elif entry.seq != transport.seq:
                    raise ValueError(f"a checkpoint of change {entry.seq} after change {transport.seq}")
                continue
            _follows(entry.change.seq, transport.seq, unread if skip_bad else 0)
        except ValueError as e:
            if not (torn or skip_bad):
                raise JournalError(f"{place(index)}: {e}; {SKIP_OR_FRESH}") from e
            skipped.append(f"{place(index)}: {e}; skipped")
            unread += not isinstance(e, _OutOfOrder)  # a line that could not be read may have held the missing seq
            continue
        transport.apply(entry.change)
        records += 1
        unread = 0
    return Resumed(transport, records, checkpoint_seq, skipped)


def read(path: Path) -> JournalContents:
    """Every record of a journal, in order, for replaying a performance (checkpoints are not records).

    Lines a restart would skip with ``skip_bad`` are skipped here too, and listed.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"{path}: cannot read the journal: {_why(e)}") from e
    first_end = data.find(b"\n")
    if first_end < 0:
        if _torn_header(data):
            return JournalContents({}, [], [f"{path}:1: the header was torn by a crash; skipped"] if data else [])
        raise JournalError(f"{path}:1: not a Tutti journal header (version {VERSION})")
    contents = JournalContents(_header(path, data[:first_end]))
    last = unread = 0
    for index, _, line, torn in _lines(data, first_end + 1):
        try:
            if torn:
                raise ValueError("torn by a crash (the last line has no end)")
            entry = _entry(line, None)
            if isinstance(entry, _Checkpoint):
                continue
            _follows(entry.change.seq, last, unread)
        except ValueError as e:
            contents.skipped.append(f"{path}:{index + 2}: {e}; skipped")
            unread += not isinstance(e, _OutOfOrder)
            continue
        contents.records.append(entry)
        last, unread = entry.change.seq, 0
    return contents


def sketch_log(path: Path) -> Path:
    """Where the sketch events of a journal's performance are journalled: beside it
    (``conductor/server/sketches.py`` writes them, ``tutti replay`` shows them)."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".sketch.jsonl")


def replay_times(records: list[Record]) -> Iterator[tuple[float, Record]]:
    """Each record with its delay from the first one, for re-emitting a performance in time."""
    if not records:
        return
    start = records[0].accepted
    for record in records:
        yield record.accepted - start, record


# Writing.

Waiting = list[tuple[Record, asyncio.Future[None]]]


class Journal:
    """An open journal: ``append`` returns a future that resolves once the record is on disk.

    Opening writes ``header`` to a new (or empty) file, and cuts off a line torn by a crash at the
    end of an existing one; ``durable`` is then the state ``resume`` rebuilt from it.
    """

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
        self.max_batch: int | None = None  # records written at most at once (None: all waiting); for benchmarks
        self.unavailable: str | None = None
        self.on_availability: Callable[[str | None], None] | None = None
        self.batches = 0  # writes of records, each with one fdatasync
        self._pending: Waiting = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._since_checkpoint = 0  # records written since the last checkpoint
        self._checkpoint_due = math.inf  # loop time by which the next checkpoint is written
        self._now = -math.inf  # conductor time of the latest record written
        self._closing = False
        self._fd, self._size = self._open(header)  # _size: the file's length after the last good write

    def _open(self, header: dict[str, Any]) -> tuple[int, int]:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise JournalError(_unwritable(path, e)) from e
        try:
            size = os.fstat(fd).st_size
            whole = _end_of_last_line(fd, size)
            if whole < size:
                if whole == 0 and not _torn_header(os.pread(fd, len(HEADER), 0)):
                    raise JournalError(f"{path}:1: not a Tutti journal header (version {VERSION})")
                os.ftruncate(fd, whole)  # a line torn by a crash: resume skipped it, and the next starts clean
                size = whole
            if size == 0:
                line = _line({"type": "header", "version": VERSION, **header})
                try:
                    _write_all(fd, line)
                    os.fdatasync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)  # not half a header for the next start to puzzle over
                    raise
                size = len(line)
            else:
                os.fdatasync(fd)
        except OSError as e:
            os.close(fd)
            raise JournalError(_unwritable(path, e)) from e
        except JournalError:
            os.close(fd)
            raise
        return fd, size

    async def start(self) -> None:
        """Start the writer (records appended before are written at once)."""
        if self._writer:
            return
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        self._writer = asyncio.create_task(self._run(), name=f"journal {self.path}")

    def append(self, record: Record) -> asyncio.Future[None]:
        """Queue ``record``; the future resolves once it is on disk, or fails with JournalUnavailable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.unavailable or self._closing:
            future.set_exception(JournalUnavailable(self.unavailable or f"journal {self.path} is closed"))
        else:
            self._pending.append((record, future))
            if self._wake:
                self._wake.set()
        return future

    async def close(self) -> None:
        """Write what is waiting, then stop and close the file."""
        if self._writer is None:
            await self.start()
        self._closing = True
        assert self._wake and self._writer
        self._wake.set()
        await self._writer
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while self._pending or not self._closing:
            if not self._pending:
                due = self._checkpoint_due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if due == math.inf else max(0.0, due - loop.time()))
                self._wake.clear()
                if not self._pending and self._since_checkpoint and loop.time() >= self._checkpoint_due:
                    await self._write_checkpoint()
                continue
            cut = self.max_batch or len(self._pending)
            batch, self._pending = self._pending[:cut], self._pending[cut:]
            await self._write(batch)
            if not self.unavailable and (
                self._since_checkpoint >= self.checkpoint_every or loop.time() >= self._checkpoint_due
            ):
                await self._write_checkpoint()
            if self.unavailable:
                await self._recover()

    async def _write(self, batch: Waiting) -> None:
        try:
            data = await _encoded([record for record, _ in batch])
            await asyncio.to_thread(self._sync, data)
        except OSError as e:
            self._failed(f"journal {self.path}: {_why(e)}", batch)
            return
        except (TypeError, ValueError) as e:  # a record JSON cannot hold: refused like a failed write, in order
            log.exception("journal: a change cannot be encoded")
            self._failed(f"journal {self.path}: a change cannot be written ({e})", batch)
            return
        self.batches += 1
        for record, _ in batch:
            self.durable.apply(record.change)
            self._now = max(self._now, record.accepted)
        # What was superseded before the latest change was accepted no longer matters: keep durable small.
        self.durable.segments.prune(self._now)
        for timeline in self.durable.params.values():
            timeline.prune(self._now)
        if not self._since_checkpoint:
            self._checkpoint_due = asyncio.get_running_loop().time() + self.checkpoint_seconds
        self._since_checkpoint += len(batch)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _checkpoint_line(self) -> bytes:
        state = self.durable.snapshot(self._now)
        return _line({"type": "checkpoint", "seq": self.durable.seq, "state": state})

    async def _write_checkpoint(self) -> bool:
        try:
            await asyncio.to_thread(self._sync, self._checkpoint_line())
        except OSError as e:
            if not self.unavailable:
                self._failed(f"journal {self.path}: {_why(e)}", [])
            return False
        self._since_checkpoint = 0
        self._checkpoint_due = math.inf
        return True

    def _sync(self, data: bytes) -> None:
        """In a thread: append ``data`` and fdatasync; on failure, cut the file back to its last good size."""
        try:
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)  # what a failed write left, if cutting it failed then
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
                os.fdatasync(self._fd)  # the cut reaches the disk before any part of the batch can
            raise
        self._size += len(data)

    def _failed(self, reason: str, batch: Waiting) -> None:
        self.unavailable = reason
        for _, future in [*batch, *self._pending]:
            if not future.done():
                future.set_exception(JournalUnavailable(reason))
        self._pending.clear()
        self._tell(reason)

    async def _recover(self) -> None:
        """Every RETRY_EVERY seconds, try to write a checkpoint of the state on disk; then accept again."""
        assert self._wake is not None
        while self.unavailable and not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_EVERY)  # close() wakes it
            self._wake.clear()
            if self._closing:
                return
            if await self._write_checkpoint():
                self.unavailable = None
                self._tell(None)

    def _tell(self, reason: str | None) -> None:
        if self.on_availability:
            try:
                self.on_availability(reason)
            except Exception:  # the writer must go on whatever a listener does
                log.exception("journal: on_availability")


def _unwritable(path: Path, error: OSError) -> str:
    return (
        f"{path}: cannot write the journal: {_why(error)}; make room or make it writable, "
        "or name another journal in the concert file"
    )


def _end_of_last_line(fd: int, size: int) -> int:
    """Offset just after the file's last newline (0 if it has none), reading backwards."""
    end = size
    while end > 0:
        start = max(0, end - BLOCK)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)  # a full disk may take part of it, then refuse the rest
        if written <= 0:
            raise OSError(errno.EIO, "the write wrote nothing")
        view = view[written:]


async def _encoded(records: list[Record]) -> bytes:
    """The lines of ``records``, encoded on the event loop a slice at a time.

    Not in the writer's thread: a thread that encodes holds the interpreter's lock for up to its
    switch interval (5 ms) at a time, and the event loop would wait as long.
    """
    lines = []
    for i, record in enumerate(records, start=1):
        lines.append(_line(record.to_json()))
        if i % ENCODE_AT_ONCE == 0:
            await asyncio.sleep(0)
    return b"".join(lines)


def _line(entry: dict[str, Any]) -> bytes:
    line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)  # a twentieth of json's time
    if b"null" in line:  # orjson writes NaN and infinity as null; json refuses them
        line = (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()
    return line
