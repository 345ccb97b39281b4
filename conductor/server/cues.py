"""The node-cue sender: what the nodes play, sent ahead so that it sounds together.

Cues reach the nodes as ``cues`` events (``protocol.Cues``), a batch per room: every cue queued
while the event loop runs one pass goes in one message, so a burst of fader values costs one
Socket.IO message per room, not one per value. The cues of an accepted change (parameter
settings) are queued the moment it is accepted. Score cues are sent once they fall within the
lookahead (``scheduler.Lookahead``); ``immediate`` ones are held until their time. Every
``LOOKAHEAD_EVERY`` the lookahead follows the clients' delays and each aligned site's offsets
follow the measured audio links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from conductor.core import protocol
from conductor.core.performance import Accepted, Performance, Routed, Timing
from conductor.core.protocol import NodeCue
from conductor.core.scheduler import Lookahead, audio_delays
from conductor.server.gateway import Out
from conductor.server.joins import Roster

log = logging.getLogger("tutti.cues")
CUE_TICK = 0.01  # seconds between looks for cues entering the lookahead
LOOKAHEAD_EVERY = 0.25  # seconds between updates of the lookahead from the clients' delays


class NodeCues:
    def __init__(self, core: Performance, roster: Roster, out: Out, lookahead: Lookahead, now: Callable[[], float]):
        self.core = core
        self.roster = roster
        self.out = out
        self.lookahead = lookahead
        self.now = now
        self.sent_until = 0.0  # conductor time up to which score cues have been sent
        self.align: dict[str, dict[str, float]] = {}  # aligned site -> how early each site plays
        self._held: list[Routed] = []  # immediate score cues, until their time comes
        self._queued: dict[str, list[NodeCue]] = {}  # room -> cues for the next batch
        self._flushing: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        period = audio.period / audio.sample_rate if (audio := roster.concert.settings.audio) else 0.0
        self._period = period

    def timing(self) -> Timing:
        return Timing(self.now(), self.lookahead.value, self.sent_until, self.align)

    # --- outputs of the pipeline ---------------------------------------------------------------

    def accepted(self, accepted: Accepted) -> None:
        for routed in accepted.cues:
            self.queue(routed)

    def reverted(self) -> None:
        """The state went back: set every node's synths to it again."""
        for routed in self.core.settings(self.now()):
            self.queue(routed)

    def queue(self, routed: Routed) -> None:
        self._queued.setdefault(routed.room, []).append(routed.cue)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._queued:  # what is queued while a batch is sent goes in the next
            queued, self._queued = self._queued, {}
            for room, cues in queued.items():
                await self.out.emit(protocol.CUES, protocol.Cues(cues=cues).model_dump(), room=room)

    # --- a node joins ----------------------------------------------------------------------------

    async def welcome(self, sid: str, parts: list[str], rooms: list[str]) -> None:
        """What a joining node needs: its synths' settings now, and the score cues already sent
        for the time ahead (it plays each cue once, so one it has already is dropped)."""
        now = self.now()
        cues = [r.cue for r in self.core.settings(now) if r.room.removeprefix("nodes:part:") in parts]
        cues += [
            r.cue
            for r in self.core.score_cues(now, self.sent_until, self.align)
            if r.room in rooms and not self.core.immediate(self.core.score.cues[r.cue.id or 0])
        ]
        if cues:
            await self.out.emit(protocol.CUES, protocol.Cues(cues=cues).model_dump(), to=sid)

    # --- score cues --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._send_score_cues())

    async def stop(self) -> None:
        for task in (self._loop, self._flushing):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _alignment(self, site: str) -> dict[str, float]:
        """How early each site plays so that its sound reaches ``site`` with the site's own."""
        return audio_delays(self.roster.links(), site, self._period)

    async def _send_score_cues(self) -> None:
        self.sent_until = self.now()
        updated = time.monotonic()
        score = self.core.score
        aligned = score.site_ids()  # a cue, parameter or sound may be aligned at any site
        early = 0.0  # the most any site plays early: aligned cues are sent that much sooner
        while True:
            await asyncio.sleep(CUE_TICK)
            try:
                if time.monotonic() - updated > LOOKAHEAD_EVERY:
                    self.lookahead.update(self.roster.delays(), time.monotonic() - updated)
                    updated = time.monotonic()
                    self.align = {site: self._alignment(site) for site in aligned}
                    early = max((max(o.values(), default=0.0) for o in self.align.values()), default=0.0)
                now = self.now()
                horizon = max(self.sent_until, now + self.lookahead.value + early)
                for routed in self.core.score_cues(self.sent_until, horizon, self.align):
                    if self.core.immediate(score.cues[routed.cue.id or 0]):
                        self._held.append(routed)
                    else:
                        self.queue(routed)
                self.sent_until = horizon
                while self._held and (self._held[0].cue.t or 0.0) <= now:
                    routed = self._held.pop(0)
                    self.queue(Routed(routed.room, routed.cue.model_copy(update={"t": None})))
            except Exception:
                log.exception("sending cues")
