"""This machine's Ableton Link session, driven from the conductor's transport.

Link keeps tempo and phase in step on one local network; the conductor's clock keeps every site
in step. A node joins its network's Link session and makes the session follow the score: its
tempo is the score's ``tempo.bpm`` times the transport's rate, and Link's beat is the score's beat
(score seconds × bpm / 60), so with the quantum set to ``beats_per_bar`` Link's bar lines are the
score's bar lines, at the same conductor time at every site. Play and pause start and stop it.

Each transport segment is a line of beats against conductor time: through (``t``, ``pos`` in
beats) at the segment's tempo; a pause keeps the line (Link's timeline never stops) and only
stops it. A segment's line is committed ``lead`` seconds before it takes effect: a sclang
``LinkClock`` runs that much early (its ``latency``, the server's) so that its bundles sound on the
beat, and it must already see the new line for the first beat after the change.

Every ``CHECK`` the session is compared with the line: another peer's tempo (a DJ app, a
performer's ``LinkClock.tempo_``) is put back, or, if the concert lets peers set the tempo,
proposed to the conductor, which schedules it for every site; a phase that drifted more than
``TOLERANCE`` is put back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aalink

from conductor.core.transport import Segment, Transport
from conductor.tools.emulate import sleep_until

log = logging.getLogger("tutti.link")
CHECK = 0.1  # seconds between comparisons of the session with the conductor's line
TOLERANCE = 0.001  # seconds of phase error before the session is put back (nodes sharing one agree to less)
MARGIN = 0.002  # seconds before ``lead`` a change is committed: a timer may wake a little late
LATE = 0.005  # seconds after its due time a change counts as late
PROPOSE_EVERY = 1.0  # seconds between tempo proposals sent to the conductor


@dataclass(frozen=True)
class Line:
    """Beats against conductor time: ``beat`` at ``t``, ``bpm`` beats a minute."""

    t: float
    beat: float
    bpm: float

    def at(self, t: float) -> float:
        return self.beat + (t - self.t) * self.bpm / 60.0


def line_of(segment: Segment, bpm: float) -> Line:
    """The beat line of a segment, whether it plays or not: a pause keeps the phase of the line."""
    return Line(segment.t, segment.pos * bpm / 60.0, bpm * segment.rate)


def wrapped(beats: float, quantum: float) -> float:
    """A beat difference as the nearest phase difference, in (-quantum/2, quantum/2]."""
    return beats - quantum * math.floor(beats / quantum + 0.5)


class LinkPeer:
    """A Link peer following ``transport()`` in conductor time ``now()``; ``propose(bpm)`` asks the
    conductor for a tempo a peer set (None: peers' tempos are put back)."""

    def __init__(
        self,
        transport: Callable[[], Transport | None],
        now: Callable[[], float],
        propose: Callable[[float], Awaitable[bool]] | None = None,
        lead: float = 0.2,
    ):
        self.transport = transport
        self.now = now
        self.propose = propose
        self.lead = lead
        self.on_commit: Callable[[Segment, Line], None] | None = None  # a new line is in the session
        self.link: aalink.Link | None = None
        self.line: Line | None = None  # the line committed to the session
        self.segment: Segment | None = None  # the segment whose line it is (it may take effect up to ``lead`` later)
        self.playing = False
        self.phase_error = 0.0  # seconds, at the last check
        self.put_back = 0  # times another peer's tempo or phase was put back
        self.proposed = 0  # tempos proposed to the conductor
        self.late = 0  # changes that arrived too late to be committed ``lead`` ahead
        self._proposed_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._proposal: asyncio.Task[bool] | None = None

    def start(self) -> None:
        self.link = aalink.Link(120.0)
        self.link.enabled = True
        self.link.start_stop_sync_enabled = True
        self._task = asyncio.create_task(self._run())

    def changed(self) -> None:
        """The transport changed: look again for the next segment to commit."""
        self._wake.set()

    async def close(self) -> None:
        for task in (self._task, self._proposal):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.link:
            self.link.enabled = False

    def report(self) -> dict[str, Any]:
        """For the node's health: the session's peers (not counting this one), tempo and phase error."""
        link = self.link
        return {
            "peers": link.num_peers if link else 0,
            "tempo": link.tempo if link else 0.0,
            "playing": bool(link.playing) if link else False,
            "phase_error_ms": self.phase_error * 1000.0,
            "put_back": self.put_back,
            "proposed": self.proposed,
            "late": self.late,
            "lead": self.lead,
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                wait = self._step()
            except Exception:  # the session must go on following whatever one step met
                log.exception("link")
                wait = CHECK
            self._wake.clear()
            if wait < CHECK:  # a change is due before the next check: commit it on time
                await sleep_until(loop.time() + wait)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), CHECK)

    def _step(self) -> float:
        """Commit the segment due ``lead`` from now, check the session; seconds until the next change."""
        transport = self.transport()
        if transport is None or self.link is None:
            return CHECK
        score = transport.score
        self.link.quantum = float(score.tempo.beats_per_bar)
        now = self.now()
        due = now + self.lead + MARGIN
        segment = transport.segments.at(due)
        line = line_of(segment, score.tempo.bpm)
        if line != self.line or segment.playing != self.playing:
            if self.line is not None and segment.t > self.line.t and due - segment.t > LATE:
                self.late += 1
                log.warning(
                    "link: a change came %.0f ms too late to reach sclang on time: give the concert a longer"
                    " lookahead or this node a shorter --link-lead",
                    (due - segment.t) * 1000,
                )
            self.segment = segment
            self._commit(line, segment.playing, now)
            if self.on_commit:
                self.on_commit(segment, line)
        else:
            self._check(now)
        later = [t for t in transport.segments.times if t > due]
        return min(later) - due if later else CHECK

    def _commit(self, line: Line, playing: bool, now: float) -> None:
        assert self.link is not None
        self.line, self.playing = line, playing
        # Link takes the tempo and the beat in two commits, and a peer may see the first alone. Of
        # the two orders, the one whose state in between is behind the new line where a LinkClock
        # looks (``lead`` ahead): a clock that saw it waits a little longer, never plays early.
        if line.bpm > self.link.tempo:
            self.link.force_beat(line.at(self.now()))
            self.link.tempo = line.bpm
        else:
            self.link.tempo = line.bpm
            self.link.force_beat(line.at(self.now()))
        if bool(self.link.playing) != playing:
            self.link.playing = playing
        state = "playing" if playing else "stopped"
        log.info("link: %.3f bpm, beat %.3f at %.3f, %s", line.bpm, line.at(now), now, state)

    def _check(self, now: float) -> None:
        assert self.link is not None and self.line is not None
        tempo = self.link.tempo
        if abs(tempo - self.line.bpm) > 1e-6:
            refused = self._proposal is not None and self._proposal.done() and not self._answer()
            if self.propose is not None and not refused:
                self._propose(tempo)
                return  # the session keeps the peer's tempo until the conductor's change arrives
            self._proposal = None
            log.info("link: a peer set %.3f bpm; the conductor's %.3f is put back", tempo, self.line.bpm)
            self.put_back += 1
            self._commit(self.line, self.playing, now)
            return
        error = wrapped(self.link.beat - self.line.at(self.now()), self.link.quantum) * 60.0 / self.line.bpm
        self.phase_error = error
        if abs(error) > TOLERANCE:
            log.info("link: the phase was %.2f ms off: put back", error * 1000)
            self.put_back += 1
            self._commit(self.line, self.playing, now)

    def _answer(self) -> bool:
        assert self._proposal is not None
        return not self._proposal.cancelled() and self._proposal.exception() is None and self._proposal.result()

    def _propose(self, bpm: float) -> None:
        loop = asyncio.get_running_loop()
        if self.propose is None or loop.time() - self._proposed_at < PROPOSE_EVERY:
            return
        if self._proposal is not None and not self._proposal.done():
            return
        self._proposed_at = loop.time()
        self.proposed += 1
        self._proposal = asyncio.ensure_future(self.propose(min(max(bpm, 1.0), 600.0)))
