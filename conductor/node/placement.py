"""Where scsynth places a timetag, measured, and allowed for in every cue.

scsynth turns a bundle's timetag into a sample from its own estimate of when its JACK cycle began,
a clock filter (SC_Jack.cpp, ``SC_TimeDLL``) fed with the moments its process callback starts.
The filter is slow (0.012 Hz) and starts again at every xrun from the moment of the xrun, so for
tens of seconds after scsynth starts or JACK reports an xrun every bundle sounds off its time by a
smoothly shrinking amount: up to 1.6 ms after a start and 4 ms after an xrun here, 0.3 ms when it has
settled. A node therefore plays a mark (``tutti_mark``: one sample) on scsynth's last output, which
nothing else plays on, every ``EVERY`` seconds, hears it on a JACK client in a process of its own,
and times it as the recorder does (``jackio``). A line through the last two seconds of marks'
errors, started afresh at every xrun, says how far scsynth strays at any moment; the node moves
each cue's timetag by that much when it sends the cue to scsynth, shortly before its time
(``agent.SEND_AHEAD``). scsynth's own allowance for the sound card's output latency (the ``max output latency`` it
prints) is kept: that is where a bundle is meant to sound in the graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from typing import TextIO

import jack
import numpy as np

from conductor.core.osc import osc_bundle
from conductor.node.jackio import _connect, _FrameClock, _JackClient, end_helper, serve, start_helper
from conductor.node.scsynth import Scsynth, jack_env

log = logging.getLogger("tutti.placement")

EVERY = 0.1  # seconds between marks: after an xrun, the line starts again from the next
AHEAD = 0.1  # seconds ahead a mark is timetagged: its bundle is at scsynth well before
KEPT = 20  # marks the line is drawn through: two seconds of them
LINE_FROM = 4  # marks needed for a line; fewer give their mean
AHEAD_MOST = 2.0  # seconds past the last mark the line is followed; beyond, it is held
STEEPEST = 0.002  # seconds per second: a slope beyond this is not scsynth's filter settling
JUMP = 0.0005  # seconds off the line: scsynth's clock started again (an xrun JACK did not report)
LIMIT = 0.015  # seconds: a mark heard further than this from its time is not the mark
SETTLE = 0.05  # seconds after an xrun before marks count: the frame clock itself restarts
RESTART_AFTER = 1.0  # seconds before a listener that ended is started again
AMP = 0.1  # the mark's level (alone on its output) ...
HEARD = 0.05  # ... and what counts as hearing it


class Drift:
    """How far scsynth places a timetag from its time: a line through the recent marks' errors."""

    def __init__(self) -> None:
        self.marks: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (time it was due, error)
        self._line = (0.0, 0.0, 0.0, 0.0)  # through (t, error) with a slope, followed up to a time

    def add(self, due: float, error: float) -> None:
        if self.marks and abs(error - self.at(due)) > JUMP:
            self.marks.clear()
        self.marks.append((due, error))
        self._draw()

    def reset(self) -> None:
        self.marks.clear()
        self._draw()

    def at(self, t: float) -> float:
        """Seconds a bundle timetagged ``t`` sounds after ``t`` (0 before any mark is heard)."""
        t0, error, slope, until = self._line
        return error + slope * (min(t, until) - t0)

    def _draw(self) -> None:
        if not self.marks:
            self._line = (0.0, 0.0, 0.0, 0.0)
            return
        due = np.array([m[0] for m in self.marks])
        errors = np.array([m[1] for m in self.marks])
        slope = 0.0
        if len(due) >= LINE_FROM and due[-1] > due[0]:
            slope = max(-STEEPEST, min(STEEPEST, float(np.polyfit(due - due[-1], errors, 1)[0])))
        # Through the marks' middle: a slope held back pivots there, not on the newest mark.
        self._line = (float(due.mean()), float(errors.mean()), slope, float(due[-1]) + AHEAD_MOST)


class _Listener:
    """The JACK client that hears the marks, in a process of its own (``python -m
    conductor.node.placement SERVER NAME``): a Python JACK callback needs the interpreter's lock
    every cycle, and in the node agent, whose event loop holds it for up to the switch interval,
    it was late often enough under load to give JACK an xrun a few times a second (723 in 30 s,
    against 18 here, with two CPU hogs). Its callbacks only note times; its main thread, idle
    otherwise, passes them on as lines (``heard T``, ``xrun T``: wall-clock seconds) and takes
    ``listen PORT`` to hear scsynth's mark output."""

    def __init__(self, server: str, name: str):
        self.jack = _JackClient(server, name)
        self.port = self.jack.client.inports.register("mark")
        self.heard: deque[float] = deque(maxlen=64)
        self.xruns: deque[float] = deque(maxlen=64)
        clock, rate = _FrameClock(self.jack.client), self.jack.rate
        client, port = self.jack.client, self.port

        @client.set_process_callback
        def process(frames: int) -> None:
            start = client.last_frame_time
            base = clock.cycle(start)
            for i in np.flatnonzero(port.get_array() > HEARD):
                self.heard.append((start + int(i)) / rate + base)

        @client.set_xrun_callback
        def xrun(delay: float) -> None:
            self.xruns.append(time.time())

        client.activate()

    def command(self, line: str, out: TextIO) -> None:
        """``listen PORT``: hear scsynth's mark output there."""
        verb, _, port = line.partition(" ")
        if verb == "listen":
            try:
                _connect(self.jack.client, self.port, port, out=False)
            except jack.JackError as e:
                out.write(f"error cannot hear {port}: {e}\n")

    def report(self) -> list[str]:
        said = [f"xrun {self.xruns.popleft()!r}" for _ in range(len(self.xruns))]
        return said + [f"heard {self.heard.popleft()!r}" for _ in range(len(self.heard))]


class Placement:
    """The node's measure of where its scsynth places timetags: ``correction(at)`` is what to add
    to a timetag for its bundle to sound at ``at``. Its listener is a process it keeps running."""

    def __init__(self, scsynth: Scsynth, jack_server: str, name: str):
        self.scsynth = scsynth
        self.jack_server = jack_server
        self.name = name
        self.drift = Drift()
        self._due: deque[tuple[float, float]] = deque(maxlen=32)  # (timetag, where scsynth means it)
        self._settle_until = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def correction(self, at: float) -> float:
        return -self.drift.at(at)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except OSError as e:
                log.warning("scsynth's timing mark: %s", e)
            self.drift.reset()  # cues go as scsynth places them until a new listener hears marks
            await asyncio.sleep(RESTART_AFTER)

    async def _listen(self) -> None:
        listener = await start_helper(
            "conductor.node.placement", self.jack_server, self.name, env=jack_env(self.jack_server)
        )
        assert listener.stdin is not None and listener.stdout is not None
        reader = asyncio.create_task(self._read(listener.stdout))
        scsynth, started = self.scsynth, -1
        try:
            while not reader.done():
                await asyncio.sleep(EVERY)
                if not scsynth.health.up:
                    continue
                if scsynth.health.restarts != started:  # a new scsynth: new ports, a new clock filter
                    listener.stdin.write(f"listen {scsynth.mark_output}\n".encode())
                    started = scsynth.health.restarts
                    self.drift.reset()
                    self._due.clear()
                at = time.time() + AHEAD
                scsynth.send(osc_bundle(at, "/s_new", ["tutti_mark", -1, 0, 0, "out", scsynth.channels, "amp", AMP]))
                self._due.append((at, at - scsynth.output_latency))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await end_helper(listener)
        log.warning("scsynth's timing mark: its listener ended (%s); starting another", listener.returncode)

    async def _read(self, lines: asyncio.StreamReader) -> None:
        while line := await lines.readline():
            what, _, value = line.decode().strip().partition(" ")
            if what == "xrun":
                self._settle_until = float(value) + SETTLE
                self.drift.reset()
            elif what == "heard":
                self._heard(float(value))
            elif what == "error":
                log.warning("scsynth's timing mark: %s", value)

    def _heard(self, heard: float) -> None:
        due = min(self._due, key=lambda d: abs(heard - d[1]), default=None)
        if due is None or abs(heard - due[1]) > LIMIT or heard < self._settle_until:
            return
        self._due.remove(due)
        self.drift.add(due[0], heard - due[1])

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def main(server: str, name: str) -> None:
    try:
        listener = _Listener(server, name)
    except jack.JackError as e:
        sys.exit(f"cannot hear scsynth's timing mark on JACK server {server}: {e}")
    try:
        serve(sys.stdin.fileno(), sys.stdout, listener.command, listener.report)
    finally:
        listener.jack.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
