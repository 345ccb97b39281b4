"""The change pipeline: command → core → change → outputs.

``Pipeline.submit`` hands a validated command to the performance's core (``core/performance.py``),
which plans and applies it, and passes the accepted change on:

1. at once, to the outputs that make it heard (``on_accepted``: the node-cue sender, the OSC
   echo). A fader's motion is the music: its values reach the nodes without waiting for a disk.
2. to the journal, which writes changes in batches, each with one ``fdatasync``, off the event loop;
3. once its batch is on disk, to the outputs that show it (``on_durable``: the browsers' state, the
   console), and to whoever sent it (the future ``submit`` returns).

A batch the journal cannot write is refused as a whole: the state goes back to what is on disk,
the nodes are set to it again (``on_reverted``), and every change is refused with
``journal_unavailable`` until the journal can be written again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from conductor.core import journal
from conductor.core.performance import Accepted, Performance, Timing
from conductor.core.protocol import Command, Rejected
from conductor.core.transport import Change

log = logging.getLogger("tutti.pipeline")

Output = Callable[[Accepted], None]


class Pipeline:
    def __init__(
        self,
        core: Performance,
        journal_: journal.Journal,
        timing: Callable[[], Timing],
        version: Callable[[], str] | None = None,
    ):
        self.core = core
        self.journal = journal_
        self.timing = timing
        self.version = version  # of the score (live edits change it): journalled with each change
        self.on_accepted: list[Output] = []
        self.on_durable: list[Output] = []
        self.on_reverted: list[Callable[[], None]] = []

    def submit(self, command: Command, by: dict[str, Any], coalesced: int = 0) -> asyncio.Future[Change]:
        """Accept ``command`` now (raises Rejected); the future resolves once it is on disk."""
        if self.journal.unavailable:
            raise Rejected("journal_unavailable", f"changes cannot be kept: {self.journal.unavailable}")
        timing = self.timing()
        accepted = self.core.accept(command, timing)
        for output in self.on_accepted:  # first: the nodes' cues leave before the journal's writer wakes
            output(accepted)
        by = {**by, "score": self.version()} if self.version else by
        written = self.journal.append(journal.Record(accepted.change, timing.now, by, coalesced))
        done: asyncio.Future[Change] = asyncio.get_running_loop().create_future()
        written.add_done_callback(lambda w: self._written(w, accepted, done))
        return done

    async def apply(self, command: Command, by: dict[str, Any]) -> Change:
        """Submit and wait until it is on disk; raises Rejected."""
        return await self.submit(command, by)

    def _written(self, written: asyncio.Future[None], accepted: Accepted, done: asyncio.Future[Change]) -> None:
        if written.cancelled() or written.exception() is not None:
            self._revert()
            if not done.done():
                done.set_exception(Rejected("journal_unavailable", f"not kept: {written.exception() or 'cancelled'}"))
            return
        for output in self.on_durable:
            try:
                output(accepted)
            except Exception:  # one output's fault must not keep the change from the others
                log.exception("output of change %d", accepted.change.seq)
        if not done.done():
            done.set_result(accepted.change)

    def _revert(self) -> None:
        """Back to the state on disk: what could not be kept did not happen."""
        durable = self.journal.durable
        if self.core.transport.seq == durable.seq:
            return
        log.error("journal: going back to change %d (the last one on disk)", durable.seq)
        self.core.transport.restore(durable.snapshot(self.timing().now))
        for output in self.on_reverted:
            output()
