"""A task that does one thing every so often, until stopped: the console feed, the link metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("tutti.periodic")


class Periodic:
    """Runs ``tick`` every ``every`` seconds from ``start()`` until ``stop()``; a tick that fails is
    logged, and the next one runs."""

    every = 1.0

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.tick()
            except Exception:
                log.exception("%s", type(self).__name__)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
