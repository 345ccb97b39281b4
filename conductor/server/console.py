"""The console feed: every second, the conductor-role clients are told who is there and what was refused."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from conductor.core import protocol
from conductor.core.scheduler import Lookahead
from conductor.server.gateway import Out
from conductor.server.joins import Roster
from conductor.server.periodic import Periodic

log = logging.getLogger("tutti.console")
FEED_EVERY = 1.0  # seconds


class Refusals:
    """Every refusal counted by code, and the latest kept for the console."""

    def __init__(self, now: Callable[[], float]):
        self.now = now
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)

    def count(self, code: str, message: str, event: str = "osc", client: str = "") -> None:
        self.counts[code] += 1
        self.recent.append({"t": self.now(), "code": code, "message": message, "event": event, "client": client})
        log.info("rejected %s from %s: %s", event, client or "?", message)


class ConsoleFeed(Periodic):
    every = FEED_EVERY

    def __init__(
        self,
        roster: Roster,
        refusals: Refusals,
        controls: dict[str, Any],
        lookahead: Lookahead,
        journal_state: Callable[[], str | None],
        out: Out,
        links: Callable[[], dict[str, Any] | None] = lambda: None,
        preflight: Callable[[list[dict[str, Any]]], list[protocol.PreflightRow]] | None = None,
    ):
        self.preflight = preflight  # the go / no-go table, from the clients
        self.roster = roster
        self.refusals = refusals
        self.controls = controls  # "part/control" -> the latest value a performer sent
        self.lookahead = lookahead
        self.journal_state = journal_state
        self.out = out
        self.links = links
        super().__init__()

    def feed(self) -> protocol.ConsoleFeed:
        clients = self.roster.clients.values()
        # The audience as counts: a table of a thousand phones helps nobody, and encoding it
        # every second delayed everyone's broadcasts (bench/fanout.py).
        infos = [c.info() for c in clients if c.role != "audience"]
        nodes = [i.model_dump() for i in infos if i.role == "node"]
        return protocol.ConsoleFeed(
            clients=infos,
            preflight=self.preflight(nodes) if self.preflight else [],
            audience=Counter(c.site or "" for c in clients if c.role == "audience"),
            rejections=dict(self.refusals.counts),
            recent=list(self.refusals.recent)[-10:],
            controls=self.controls,
            lookahead=self.lookahead.to_json(),
            journal=self.journal_state(),
            now=self.refusals.now(),
            links=self.links(),
        )

    async def tick(self) -> None:
        feed = self.feed().model_dump()
        for room in ("role:conductor", "role:composer"):  # the composer's page: errors and refused edits
            await self.out.emit(protocol.CLIENTS, feed, room=room)
