"""The journal: every accepted change, appended and flushed to disk before it is broadcast.

A journal is a JSON Lines file. Its first line is a header naming the score (and its hash);
each further line is one change, as ``Change.to_json()`` plus who made it and when it was
accepted. A conductor started on an existing journal replays the changes and so resumes the
performance exactly where the clock says it is. A process killed mid-write leaves at most one
torn last line, which is reported and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conductor.core.transport import Change

VERSION = 1


class JournalError(Exception):
    pass


@dataclass
class Record:
    change: Change
    accepted: float  # conductor time the conductor accepted it
    by: dict[str, Any]  # role and name of who sent it


@dataclass
class JournalContents:
    header: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "line N: why" for lines that could not be read


def read(path: Path) -> JournalContents:
    """Read a journal; a damaged line is skipped and listed, anything else unreadable raises."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise JournalError(f"{path}: empty journal (no header)")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise JournalError(f"{path}:1: header is not JSON: {e}") from e
    if not isinstance(header, dict) or header.get("type") != "header" or header.get("version") != VERSION:
        raise JournalError(f"{path}:1: not a Tutti journal header (version {VERSION})")
    contents = JournalContents(header)
    for n, line in enumerate(lines[1:], start=2):
        try:
            data = json.loads(line)
            contents.records.append(Record(Change.from_json(data), data["accepted"], data.get("by", {})))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            contents.skipped.append(f"{path}:{n}: unreadable entry skipped ({e.__class__.__name__}: {e})")
    return contents


class Journal:
    """An open journal, appended to with ``append``; each entry reaches the disk before it returns."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8")
        if fresh:
            self._write({"type": "header", "version": VERSION, **header})
        elif not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # end a line torn by a crash, so the next entry starts clean

    def _write(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fdatasync(self._file.fileno())

    def append(self, record: Record) -> None:
        self._write({**record.change.to_json(), "accepted": record.accepted, "by": record.by})

    def close(self) -> None:
        self._file.close()


def replay_times(records: list[Record]) -> Iterator[tuple[float, Record]]:
    """Each record with its delay from the first one, for re-emitting a performance in time."""
    if not records:
        return
    start = records[0].accepted
    for record in records:
        yield record.accepted - start, record
