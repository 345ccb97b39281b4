"""The journal on real disks that fail: a full one, and a read-only one (tmpfs mounts, as root)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor.core import journal
from conductor.core.transport import Transport
from tests.test_journal import HEADER, SCORE, opened, param, refused, resume
from tests.test_node import until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 256 KiB (tmpfs), to fill."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()
    return filler


async def test_a_full_disk_refuses_changes_leaves_nothing_behind_and_recovers(small_disk: Path) -> None:
    path = small_disk / "j.jsonl"
    heard: list[str | None] = []
    j = opened(path)
    j.on_availability = heard.append
    await j.start()
    await j.append(param(1, 0.1))
    size = path.stat().st_size
    filler = fill(small_disk)
    # More than the page the journal ends in holds: part of the batch reaches the file, then the disk is full.
    batch = [j.append(param(i, 0.2)) for i in range(2, 400)]
    for future in batch:
        with pytest.raises(journal.JournalUnavailable, match="No space left on device"):
            await future
    assert j.unavailable == f"journal {path}: No space left on device (errno 28)" and heard == [j.unavailable]
    assert path.stat().st_size == size  # what part of the batch was written is cut off again
    with pytest.raises(journal.JournalUnavailable):
        await j.append(param(2, 0.3))  # refused at once while unavailable
    assert j.durable.seq == 1

    filler.unlink()
    await until(lambda: j.unavailable is None, 10, "the journal did not recover")
    assert heard == [heard[0], None]
    await j.append(param(2, 0.4))
    await j.append(param(3, 0.5))
    await j.close()

    # Every acknowledged change is there; none of those refused, though the disk had room for them later.
    assert [(r.change.seq, r.change.params["density"]) for r in journal.read(path).records] == [
        (1, 0.1),
        (2, 0.4),
        (3, 0.5),
    ]
    resumed = resume(path)
    assert resumed.skipped == [] and resumed.transport.seq == 3
    assert resumed.transport.params["density"].at(1e9) == 0.5


def test_a_read_only_disk_at_start_is_one_line(small_disk: Path) -> None:
    existing = small_disk / "old.jsonl"
    existing.write_text("")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # root ignores file modes
    for path in (small_disk / "j.jsonl", existing):
        message = refused(lambda p=path: journal.Journal(p, HEADER, Transport(SCORE.score)))
        assert message.startswith(f"{path}: cannot write the journal: Read-only file system (errno 30)")


def test_a_full_disk_when_writing_the_header_is_one_line_and_leaves_no_half_header(small_disk: Path) -> None:
    fill(small_disk)
    path = small_disk / "j.jsonl"
    message = refused(lambda: journal.Journal(path, HEADER, Transport(SCORE.score)))
    assert message.startswith(f"{path}: cannot write the journal: No space left on device (errno 28)")
    assert not path.exists() or path.stat().st_size == 0
    assert resume(path).transport.seq == 0  # the next start begins afresh
