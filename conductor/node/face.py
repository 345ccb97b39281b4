"""The performer's sclang, told where the score is: what the ``Tutti`` class (``sc_synths/Tutti``) reads.

The node sends OSC to sclang's port (57120, where ``to: sclang`` cues go):

- ``/tutti/score bpm beatsPerBar lead [section startBeat]...``: the score's tempo and meter, how
  early the node commits changes to Link (the ``LinkClock``'s latency must be the same), and the
  sections with the score beat each starts at.
- ``/tutti/transport playing bpm beat changeBeat``, in a bundle timetagged with the node's wall
  clock when sent: the Link line: its tempo, its beat ``lead`` seconds after the timetag (sclang
  rounds its clock's offset from it to whole bars), and the beat at which this segment begins,
  where it starts or stops and, stopped, stands.
- ``/tutti/param name value``: a parameter's value.

A transport message goes the moment its line is committed to Link, the score and every parameter
every ``EVERY`` seconds (a sclang started later catches up) and a parameter when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from conductor.core.osc import osc_bundle, osc_message
from conductor.core.transport import Segment
from conductor.node.link import Line, LinkPeer

log = logging.getLogger("tutti.face")
EVERY = 1.0  # seconds between full reports


class SclangFace:
    def __init__(self, link: LinkPeer, port: int, host: str = "127.0.0.1"):
        self.link = link
        self.address = (host, port)
        self.sent = 0
        self._params: dict[str, float] = {}  # the values sclang was last sent
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None  # for the next parameter value to come
        link.on_commit = self._committed

    def start(self) -> None:
        self._task = asyncio.create_task(self._report())

    async def close(self) -> None:
        if self._later:
            self._later.cancel()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()

    def _send(self, address: str, *args: float | int | str, at: float | None = None) -> None:
        """A message, or with ``at`` (this machine's wall clock) a bundle timetagged then."""
        packet = osc_message(address, args, doubles=True) if at is None else osc_bundle(at, address, args, doubles=True)
        with contextlib.suppress(OSError):  # no sclang listening yet: it catches up with the next report
            self._sock.sendto(packet, self.address)
            self.sent += 1

    def _committed(self, segment: Segment, line: Line) -> None:
        self._transport(segment, line)

    def _transport(self, segment: Segment, line: Line) -> None:
        wall = time.time()  # the line's beat is for this moment: sclang reads it from the timetag
        ahead = line.at(self.link.now() + self.link.lead)
        self._send("/tutti/transport", int(segment.playing), line.bpm, ahead, line.at(segment.t), at=wall)

    def changed(self) -> None:
        """The state changed: send the parameters that moved, and look again when the next is due."""
        transport = self.link.transport()
        if transport is None:
            return
        now = self.link.now()
        for name, timeline in transport.params.items():
            value = timeline.at(now)
            if self._params.get(name) != value:
                self._params[name] = value
                self._send("/tutti/param", name, value)
        due = [t for timeline in transport.params.values() for t in timeline.times if t > now]
        if self._later:
            self._later.cancel()
            self._later = None
        if due:
            self._later = asyncio.get_running_loop().call_later(min(due) - now, self.changed)

    async def _report(self) -> None:
        while True:
            transport = self.link.transport()
            if transport is not None and self.link.segment is not None and self.link.line is not None:
                score = transport.score
                per_beat = score.tempo.bpm / 60.0
                sections = [x for s in score.sections for x in (s.id, s.start * per_beat)]
                self._send("/tutti/score", score.tempo.bpm, score.tempo.beats_per_bar, self.link.lead, *sections)
                # What was committed, not the segment due ``lead`` from now: in the moment between a
                # commit and that, the two differ, and sclang followed a line that was not Link's.
                self._transport(self.link.segment, self.link.line)
                self._params.clear()
                self.changed()
            await asyncio.sleep(EVERY)
