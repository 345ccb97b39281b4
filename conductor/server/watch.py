"""``tutti serve --watch``: live edits in rehearsal.

The score file and its sketch files are looked at every ``EVERY`` seconds. An edit that passes
``tutti check`` (and keeps the score's parts and parameters, which the performance's state and
the connected clients are built on) is taken at once: every page is sent the new version and
shows it at its place in the piece, without a reload. An edit that fails is refused: each problem
as ``file:line: ...`` in the terminal and on the console, and the pages keep the last good version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from conductor.core.score import InvalidFile, LoadedScore, load_score, sketch_problems
from conductor.core.yamlcheck import Problem
from conductor.server.periodic import Periodic

log = logging.getLogger("tutti.watch")
EVERY = 0.1  # seconds between looks at the files


def _stamps(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    out = {}
    for path in paths:
        with contextlib.suppress(OSError):  # a file being replaced: seen on the next look
            stat = os.stat(path)
            out[path] = (stat.st_mtime_ns, stat.st_size)
    return out


def _checked(path: Path, current: LoadedScore) -> LoadedScore:
    """The edited score, as ``tutti check`` would pass it; raises InvalidFile."""
    loaded = load_score(path)
    problems = sketch_problems(loaded)
    old, new = current.score, loaded.score
    if [p.id for p in old.parts] != [p.id for p in new.parts]:
        problems.append(
            Problem(str(path), 1, "parts", "a live edit keeps the parts: restart tutti serve to change them")
        )
    if old.parameters != new.parameters:
        problems.append(
            Problem(str(path), 1, "parameters", "a live edit keeps the parameters: restart tutti serve to change them")
        )
    if problems:
        raise InvalidFile(problems)
    return loaded


class ScoreWatch(Periodic):
    every = EVERY

    def __init__(
        self,
        current: Callable[[], LoadedScore],
        take: Callable[[LoadedScore], Awaitable[None]],
        refuse: Callable[[str], None],
    ):
        super().__init__()
        self.current = current
        self.take = take
        self.refuse = refuse
        self.seen: dict[Path, tuple[int, int]] = {}

    def _paths(self) -> list[Path]:
        loaded = self.current()
        return [loaded.path, *(loaded.folder / name for name in sorted(loaded.files()))]

    async def start(self) -> None:
        self.seen = await asyncio.to_thread(_stamps, self._paths())
        # The sketches' checks remembered and the syntax checker started now, not on the first edit.
        await asyncio.to_thread(sketch_problems, self.current())
        await super().start()

    async def tick(self) -> None:
        if await asyncio.to_thread(_stamps, self._paths()) == self.seen:
            return
        await self._edited()
        self.seen = await asyncio.to_thread(_stamps, self._paths())  # with the sketches the new version names

    async def _edited(self) -> None:
        path = self.current().path
        try:
            loaded = await asyncio.to_thread(_checked, path, self.current())
        except OSError:
            return  # a file being replaced: read on the next look
        except InvalidFile as e:
            lines = [str(p) for p in e.problems]
            for line in lines:
                log.error("edit refused: %s", line)
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            self.refuse(f"{lines[0]}{more}: fix and save again; the pages keep the last good version")
            return
        if loaded.sha256 == self.current().sha256 and loaded.file_versions == self.current().file_versions:
            return  # saved again unchanged
        await self.take(loaded)
