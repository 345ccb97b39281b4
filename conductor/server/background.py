"""A part of the conductor that runs one task of its own for as long as the conductor runs."""

from __future__ import annotations

import asyncio
import contextlib


class Background:
    """``_run`` is started by ``start`` and cancelled (and awaited) by ``stop``."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
