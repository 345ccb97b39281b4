"""The node-cue sender: what the nodes play, sent ahead so that it sounds together.

Cues reach the nodes as ``protocol.Cues``, a batch per room: the first cues of an event loop's
pass leave at once (a lone fader value waits for nothing), and every cue queued in the rest of
the pass goes in one message, so a burst of fader values costs two messages per room, not one per
value. A node that opened its cue channel (``CHANNEL``: a plain WebSocket, whose
ticket its welcome gave it) is sent each batch there as one text frame, encoded once for all:
the lightest way to a node, and measured so (``bench/relay.py``). Any other node (or every node,
with web workers) gets ``cues`` Socket.IO events. The cues of an accepted change (parameter
settings) are queued the moment it is accepted. Score cues are sent once they fall within the
lookahead (``scheduler.Lookahead``); ``immediate`` ones are held until their time. Every
``LOOKAHEAD_EVERY`` the lookahead follows the clients' delays and each aligned site's offsets
follow the measured audio links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from conductor.core import protocol
from conductor.core.performance import Accepted, Performance, Routed, Timing
from conductor.core.protocol import NodeCue
from conductor.core.scheduler import Lookahead, audio_delays, moved
from conductor.server.fanout import frame
from conductor.server.gateway import Out
from conductor.server.joins import Roster

log = logging.getLogger("tutti.cues")
CUE_TICK = 0.01  # seconds between looks for cues entering the lookahead
LOOKAHEAD_EVERY = 0.25  # seconds between updates of the lookahead from the clients' delays
CHANNEL = "/nodes/cues"  # a node's cue channel: a WebSocket, opened with the ticket in its welcome


class NodeCues:
    def __init__(self, core: Performance, roster: Roster, out: Out, lookahead: Lookahead, now: Callable[[], float]):
        self.core = core
        self.roster = roster
        self.out = out
        self.lookahead = lookahead
        self.now = now
        self.sent_until = 0.0  # conductor time up to which score cues have been sent
        self.align: dict[str, dict[str, float]] = {}  # aligned site -> how early each site plays
        self.replanned = 0  # times a link's delay moved by more than a period
        self._held: list[Routed] = []  # immediate score cues, until their time comes
        self._queued: dict[str, list[NodeCue]] = {}  # room -> cues for the next batch
        self._sending = False
        self._events: deque[tuple[str, dict[str, Any], list[str] | None]] = deque()  # for Socket.IO, in order
        self._emitting: asyncio.Task[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self.members: dict[str, set[str]] = {}  # room -> the nodes in it
        self.tickets: dict[str, str] = {}  # ticket -> the node's sid, until it opens its channel
        self.channels: dict[str, tuple[web.WebSocketResponse, asyncio.Transport]] = {}  # sid -> its cue channel
        period = audio.period / audio.sample_rate if (audio := roster.concert.settings.audio) else 0.0
        self._period = period
        # The loop's jump back, as a change like any other (set by the conductor: its pipeline)
        self.repeat: Callable[[float], bool] = lambda at: False

    def timing(self) -> Timing:
        return Timing(self.now(), self.lookahead.value, self.lookahead.transport, self.sent_until, self.align)

    # --- outputs of the pipeline ---------------------------------------------------------------

    def accepted(self, accepted: Accepted) -> None:
        self.queue(accepted.cues)

    def reverted(self) -> None:
        """The state went back: set every node's synths to it again."""
        self.queue(self.core.settings(self.now()))

    def queue(self, cues: list[Routed]) -> None:
        """The first cues of a loop's pass leave at once; the rest of the pass's go in one batch at its end."""
        if not cues:
            return
        for routed in cues:
            self._queued.setdefault(routed.room, []).append(routed.cue)
        if not self._sending:
            self._send()
            self._sending = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._sending = False
        if not self._queued:
            return
        queued, self._queued = self._queued, {}
        for room, cues in queued.items():
            batch = protocol.Cues(cues=cues)
            members = self.members.get(room, set())
            direct = [sid for sid in members if sid in self.channels]
            if direct:
                framed = frame(batch.model_dump_json())
                for sid in direct:
                    self._write(sid, framed)
            if len(direct) < len(members):
                self._events.append((room, batch.model_dump(), direct or None))
        if self._events and (self._emitting is None or self._emitting.done()):
            self._emitting = asyncio.ensure_future(self._emit())

    def _write(self, sid: str, framed: bytes) -> None:
        """Straight to the node's connection, at once: the frame is whole, so it cannot interleave."""
        transport = self.channels[sid][1]
        if transport.is_closing():
            return
        transport.write(framed)
        if transport.get_write_buffer_size() > self.roster.concert.settings.unread_limit:
            log.warning("node %s reads nothing from its cue channel: closed (its events go on)", sid)
            transport.abort()

    async def _emit(self) -> None:
        while self._events:  # one at a time, in order
            room, data, skip = self._events.popleft()
            await self.out.emit(protocol.CUES, data, room=room, skip_sid=skip)

    # --- the cue channel ---------------------------------------------------------------------------

    def ticket(self, sid: str) -> str:
        """A one-time ticket for a node's cue channel."""
        ticket = secrets.token_urlsafe(18)
        self.tickets[ticket] = sid
        return ticket

    async def left(self, sid: str) -> None:
        for members in self.members.values():
            members.discard(sid)
        self.tickets = {t: s for t, s in self.tickets.items() if s != sid}
        if channel := self.channels.pop(sid, None):
            await channel[0].close()

    async def channel(self, request: web.Request) -> web.StreamResponse:
        """``GET CHANNEL?ticket=…``: the node whose ticket it is gets its cues here from now on."""
        sid = self.tickets.pop(request.query.get("ticket", ""), None)
        if sid is None or sid not in self.roster.clients:
            raise web.HTTPForbidden(text="no such ticket: join as a node first, and use the ticket once")
        ws = web.WebSocketResponse(heartbeat=10)
        await ws.prepare(request)
        assert request.transport is not None
        self.channels[sid] = (ws, request.transport)
        try:
            async for message in ws:  # nodes send nothing here; a close ends it
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.channels.get(sid, (None,))[0] is ws:
                del self.channels[sid]
        return ws

    # --- a node joins ----------------------------------------------------------------------------

    async def welcome(self, sid: str, parts: list[str], rooms: list[str]) -> None:
        """What a joining node needs: its synths' settings now, and the score cues already sent
        for the time ahead (it plays each cue once, so one it has already is dropped)."""
        for room in rooms:
            self.members.setdefault(room, set()).add(sid)
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
        for ws, _ in list(self.channels.values()):
            await ws.close()
        for task in (self._loop, self._emitting):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _alignment(self, site: str) -> dict[str, float]:
        """How early each site plays so that its sound reaches ``site`` with the site's own."""
        return audio_delays(self.roster.links(), site, self._period)

    def _replan(self, align: dict[str, dict[str, float]], sent_until: float) -> None:
        """Take the links' latest delays for aligned cues: the cues not sent yet are planned with
        them. A delay that moved by more than a period is said, with the first cue time it applies to."""
        for site, other, before, after in moved(self.align, align, self._period):
            self.replanned += 1
            log.info(
                "audio from %s to %s now takes %.3f ms (was %.3f): aligned cues from %.3f on are planned with it",
                other, site, after * 1000, before * 1000, sent_until,
            )  # fmt: skip
        self.align = align

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
                    roster, elapsed = self.roster, time.monotonic() - updated
                    self.lookahead.update(roster.delays(), elapsed, roster.node_names(), roster.link_leads())
                    updated = time.monotonic()
                    self._replan({site: self._alignment(site) for site in aligned}, self.sent_until)
                    early = max((max(o.values(), default=0.0) for o in self.align.values()), default=0.0)
                now = self.now()
                horizon = max(self.sent_until, now + self.lookahead.value + early)
                # A loop's end within the horizon: its jump first, so no cue past the end is sent.
                while (at := self.core.transport.next_jump(self.sent_until, horizon)) is not None:
                    if not self.repeat(at):
                        break
                due = self.core.clicks(self.sent_until, horizon)
                for routed in self.core.score_cues(self.sent_until, horizon, self.align):
                    if self.core.immediate(score.cues[routed.cue.id or 0]):
                        self._held.append(routed)
                    else:
                        due.append(routed)
                self.sent_until = horizon
                while self._held and (self._held[0].cue.t or 0.0) <= now:
                    routed = self._held.pop(0)
                    due.append(Routed(routed.room, routed.cue.model_copy(update={"t": None})))
                self.queue(due)
            except Exception:
                log.exception("sending cues")
