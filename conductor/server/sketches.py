"""Sketch events: what one performer's sketch sends to the others (``tutti.send``, ``socket.emit``).

Every relayed event is journalled beside the performance's journal, in ``JOURNAL.sketch.jsonl``
(one JSON line each: when it was accepted, who sent it, what, to whom, its timing, and the score's
version), written in batches off the event loop; ``tutti replay`` shows them among the changes.

An event goes to the pages of the parts it names (default: every part), not back to its sender's
page. A timed one names a score time (``at``); it is sent at once with the conductor time that
score time falls on, and each page fires it then on its synced clock. Each sender may send
``RATE`` events a second on average and ``BURST`` at once; beyond that, and for anything
malformed, the event is refused with its reason (and counted, like every refusal).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conductor.core import protocol
from conductor.core.protocol import Rejected, SketchDelivery, SketchEvent
from conductor.core.score import Score
from conductor.core.transport import Transport
from conductor.server.allowance import Allowance
from conductor.server.gateway import Out
from conductor.server.joins import Client, part_room
from conductor.server.periodic import Periodic

log = logging.getLogger("tutti.sketches")
WRITE_EVERY = 0.2  # seconds between writes of the sketch-event journal


class SketchLog(Periodic):
    """Sketch events appended to their journal in batches, each batch written in a thread."""

    every = WRITE_EVERY

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.waiting: list[dict[str, Any]] = []  # bounded by the senders' rates, emptied every WRITE_EVERY
        self.failed = ""  # why the last write failed (events are relayed all the same)

    def append(self, entry: dict[str, Any]) -> None:
        self.waiting.append(entry)

    def _write(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)

    async def tick(self) -> None:
        batch, self.waiting = self.waiting, []
        if not batch:
            return
        lines = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in batch)
        try:
            await asyncio.to_thread(self._write, lines)
            self.failed = ""
        except OSError as e:
            if not self.failed:
                log.error("cannot journal sketch events in %s: %s", self.path, e.strerror or e)
            self.failed = str(e)

    async def stop(self) -> None:
        await super().stop()
        await self.tick()  # what came last


RATE = 30.0  # events a second a sender may send on average ...
BURST = 60.0  # ... and at once


@dataclass
class SketchRelay:
    score: Callable[[], Score]
    transport: Callable[[], Transport]
    out: Out
    now: Callable[[], float]
    journal: SketchLog | None = None
    version: Callable[[], str] = lambda: ""  # of the score, journalled with each event
    allowance: Allowance = field(default_factory=lambda: Allowance(RATE, BURST))  # events each sender may send
    relayed: int = 0

    def _spend(self, sid: str, now: float) -> None:
        if not self.allowance.spend(sid, now):
            raise Rejected("rate_limited", f"more than {RATE:g} sketch events a second ({BURST:g} at once): slow down")

    def _when(self, at: float, now: float) -> float:
        """The conductor time the score reaches ``at``, as the piece plays now."""
        transport = self.transport()
        segment = transport.segments.at(now)
        if not segment.playing:
            raise Rejected("not_playing", "a timed sketch event ('at') needs the piece playing: send it without 'at'")
        position = transport.position(now)
        if at < position:
            raise Rejected("too_late", f"'at' {at:g} s is {position - at:.3f} s behind the score's position")
        return now + (at - position) / segment.rate

    async def send(self, client: Client, event: SketchEvent) -> dict[str, object]:
        if client.role != "performer":
            raise Rejected("forbidden", f"only performers' sketches send sketch events (you are {client.role})")
        unknown = [p for p in event.to or [] if self.score().part(p) is None]
        if unknown:
            raise Rejected("unknown_part", f"to: no part {', '.join(unknown)} in the score")
        now = self.now()
        t = self._when(event.at, now) if event.at is not None else None
        self._spend(client.sid, now)
        delivery = SketchDelivery(
            name=event.name, data=event.data, part=client.part, sender=client.name, at=event.at, t=t
        ).model_dump()
        for part in event.to or [p.id for p in self.score().parts]:
            await self.out.emit(protocol.SKETCH, delivery, room=part_room(part), skip_sid=[client.sid])
        self.relayed += 1
        if self.journal:
            entry = {"accepted": now, "part": client.part, "sender": client.name, **event.model_dump()}
            self.journal.append({**entry, "t": t, "score": self.version()})
        return {"ok": True, **({"t": t} if t is not None else {})}

    def left(self, sid: str) -> None:
        self.allowance.forget(sid)
