"""Listening to JACK from Python: a recorder that knows when each frame sounded.

JACK-Client calls back on JACK's own real-time thread (the one place Tutti uses a thread, as the
library requires); the callback only copies the block and notes the time.

When did a frame sound? When JACK's driver began the cycle that carries it: JACK counts the frames
since then (``frames_since_cycle_start``, from the moment its driver woke), and the wall clock read
beside that count places the cycle, however late the callback runs: after the clients ahead of it
in the graph, or waiting for the interpreter's lock while its process runs Python (timed by when
the callback started, a recorder whose process was busy heard every sound 2.4 ms late). The driver
itself wakes late, never early, so the lowest reading among neighbouring cycles is the cycle's own
time. JACK's smoothed timer (``frame_time``) is not used: after an xrun the dummy driver starts its
timing again, and that timer takes seconds to follow (4 ms off, seen here). A straight line of
frames against time over the whole recording would be wrong for the same reason: the line breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import jack
import numpy as np

from conductor.core.process import die_with_parent

KEPT = 16  # the latest cycles, whose earliest start is taken as this one's
CLOSE_WITHIN = 5.0  # seconds a JACK server has to let a client go


@dataclass(frozen=True)
class Onset:
    time: float  # wall-clock seconds at which the sound began
    frame: int  # JACK frame
    peak: float


class _JackClient:
    """A client of JACK server ``server`` (never one it starts); ``close()`` leaves the graph."""

    def __init__(self, server: str, name: str):
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.rate = self.client.samplerate

    def close(self) -> bool:
        """Leave the graph; False if the server had not let go within ``CLOSE_WITHIN``: a jackd 1.9.21
        that stopped running its clients holds ``deactivate`` for ever, and the client is then left
        to the server's or the process's end rather than holding up whatever is closing it."""
        leaving = threading.Thread(target=self._leave, name=f"{self.client.name}-close", daemon=True)
        leaving.start()
        leaving.join(CLOSE_WITHIN)
        return not leaving.is_alive()

    def _leave(self) -> None:
        self.client.deactivate()
        self.client.close()


class Recorder(_JackClient):
    """Records JACK input ports (``in_1`` ...), with each block's start time; counts xruns."""

    def __init__(self, server: str, name: str = "tutti-recorder", ports: int = 1):
        super().__init__(server, name)
        self.ports = [self.client.inports.register(f"in_{i + 1}") for i in range(ports)]
        self.lock = threading.Lock()
        self.blocks: list[tuple[int, float, np.ndarray]] = []  # first frame, wall time of frame 0, samples
        self.xruns: list[float] = []  # wall-clock times
        clock = _FrameClock(self.client)

        @self.client.set_process_callback
        def process(frames: int) -> None:
            start = self.client.last_frame_time
            block = np.stack([port.get_array() for port in self.ports])
            with self.lock:
                self.blocks.append((start, clock.cycle(start), block))

        @self.client.set_xrun_callback
        def xrun(delay: float) -> None:
            self.xruns.append(time.time())

        self.client.activate()

    def listen_to(self, source: str, port: int = 0) -> None:
        """Record ``source`` (a JACK output port name) on ``in_{port + 1}``, and nothing else there."""
        for existing in self.client.get_all_connections(self.ports[port]):
            self.client.disconnect(existing, self.ports[port])
        self.client.connect(source, self.ports[port])

    def clear(self) -> None:
        with self.lock:
            self.blocks.clear()
        self.xruns.clear()

    def onsets(self, threshold: float = 0.5, silence: float = 0.01, port: int = 0) -> list[Onset]:
        """Every sound on ``port`` that rises above ``threshold`` after ``silence`` seconds below it."""
        with self.lock:
            blocks = list(self.blocks)
        if not blocks:
            return []
        quiet_frames = int(silence * self.rate)
        out = []
        quiet_since = -quiet_frames - 1
        for start, zero, both in blocks:
            block = both[port]
            for i in np.flatnonzero(np.abs(block) > threshold):
                frame = start + int(i)
                if frame > quiet_since + quiet_frames:
                    out.append(Onset(frame / self.rate + zero, frame, float(np.abs(block[i:]).max())))
                quiet_since = frame
        return out


class Patchbay(_JackClient):
    """Makes JACK connections by exact port name (no patterns, so no name needs escaping)."""

    def __init__(self, server: str, name: str):
        super().__init__(server, name)
        self.client.activate()

    def ports(self) -> set[str]:
        return {port.name for port in self.client.get_ports()}

    def connect(self, pairs: list[tuple[str, str]]) -> int:
        """Connect each (output, input) pair not yet connected; returns how many were made."""
        made = 0
        for source, destination in pairs:
            if destination not in {p.name for p in self.client.get_all_connections(source)}:
                self.client.connect(source, destination)
                made += 1
        return made


SLOT = 1.0  # seconds of conductor time between impulses on one measuring channel, each way: a link
# (re)connected is measured within about a second, and a queue that steps is seen soon after
WINDOW = 0.45  # an impulse is looked for this long after its slot: longer delays go unmeasured
PHASE = {"near": 0.0, "far": 0.5}  # the end that connects out sends on whole seconds, the other half-way
QUIET = 0.01  # seconds below the threshold before a new impulse counts
LOUD = 0.3
PASS_ON_EVERY = 0.05  # seconds between the reports of a process that holds a node's JACK clients
ROUTE_WITHIN = 5.0  # seconds a measuring process has to patch a channel
RUNS_WITHIN = 3.0  # seconds a new client waits for its process callback before its JACK server counts as stuck
LEAVE_WITHIN = 2.0  # seconds a node's JACK helper process is given to leave JACK before it is killed


@dataclass(frozen=True)
class Heard:
    port: int
    frame: int  # JACK frame at which the impulse arrived
    t: float  # conductor time of that frame


@dataclass(frozen=True)
class Sent:
    port: int
    frame: int
    slot: float  # the conductor time it was sent at (to a sample)


def cycle_start(client: jack.Client, rate: int) -> float:
    """The wall time at which JACK's driver began the cycle under way, whose first frame
    ``last_frame_time`` numbers (read that first: the two then belong to one cycle, or this one to a
    later cycle, which the earliest of neighbouring readings leaves out)."""
    before, since, after = time.time(), client.frames_since_cycle_start, time.time()
    return (before + after) / 2 - (since + 0.5) / rate  # JACK counts whole frames


class _FrameClock:
    """JACK frames to local wall time for a client's process callback: the earliest of the latest
    cycles' starts (``cycle_start``)."""

    def __init__(self, client: jack.Client):
        self.client = client
        self.rate = client.samplerate
        self._zeros: deque[float] = deque(maxlen=KEPT)

    def cycle(self, frame: int) -> float:
        """Note the start of the cycle that began at ``frame``; the wall time of frame 0 as now best
        known."""
        self._zeros.append(cycle_start(self.client, self.rate) - frame / self.rate)
        return min(self._zeros)


class _ProbeClients:
    """Impulses on measuring channels at known conductor times, and their arrivals in conductor time.

    Two JACK clients, so neither sits in a loop with the jacktrip it measures (a loop delays one of
    them by a period): ``<name>-send`` writes, and ``<name>-hear`` listens. Port ``k`` sends an
    impulse at every slot of its phase (``SLOT`` seconds apart in conductor time); whatever arrives
    on its input is returned with its conductor time. ``offset`` (conductor minus local time) is
    kept up to date by the ``offset`` command; the JACK threads only read it.
    """

    def __init__(self, server: str, name: str, phases: list[float]):
        self.sender = _JackClient(server, f"{name}-send")
        self.hearer = _JackClient(server, f"{name}-hear")
        self.rate = self.sender.rate
        self.offset = 0.0
        self.phases = phases
        self.outs = [self.sender.client.outports.register(f"probe_{k + 1}") for k in range(len(phases))]
        self.ins = [self.hearer.client.inports.register(f"in_{k + 1}") for k in range(len(phases))]
        self.sent: deque[Sent] = deque(maxlen=256)  # appended on JACK's threads, drained by ``serve``
        self.heard: deque[Heard] = deque(maxlen=256)
        send_clock, hear_clock = _FrameClock(self.sender.client), _FrameClock(self.hearer.client)
        last_slot = [-1] * len(phases)
        quiet_since = [-(10**12)] * len(phases)
        quiet = int(QUIET * self.rate)

        @self.sender.client.set_process_callback
        def send(frames: int) -> None:
            start = self.sender.client.last_frame_time
            t0 = start / self.rate + send_clock.cycle(start) + self.offset  # conductor time of this cycle
            for k, port in enumerate(self.outs):
                out = port.get_array()
                out.fill(0.0)
                n = math.ceil((t0 - phases[k]) / SLOT)
                at = round((n * SLOT + phases[k] - t0) * self.rate)
                if 0 <= at < frames and n != last_slot[k]:
                    out[at] = 1.0
                    last_slot[k] = n
                    self.sent.append(Sent(k, start + at, n * SLOT + phases[k]))

        @self.hearer.client.set_process_callback
        def hear(frames: int) -> None:
            start = self.hearer.client.last_frame_time
            base = hear_clock.cycle(start) + self.offset
            for k, port in enumerate(self.ins):
                for i in np.flatnonzero(np.abs(port.get_array()) > LOUD):
                    frame = start + int(i)
                    if frame > quiet_since[k] + quiet:
                        self.heard.append(Heard(k, frame, frame / self.rate + base))
                    quiet_since[k] = frame

        self.sender.client.activate()
        self.hearer.client.activate()

    def route(self, k: int, send: str, receive: str) -> None:
        """Port ``k`` sends into ``send`` and hears ``receive`` (a restarted jacktrip's ports are new)."""
        _connect(self.sender.client, self.outs[k], send, out=True)
        _connect(self.hearer.client, self.ins[k], receive, out=False)

    def command(self, line: str, out: TextIO) -> None:
        """``offset X``, or ``route K SEND RECEIVE`` (answered ``routed K`` or ``error K WHY``)."""
        verb, *args = line.split(" ")
        if verb == "offset":
            self.offset = float(args[0])
        elif verb == "route":
            try:
                self.route(int(args[0]), args[1], args[2])
                out.write(f"routed {args[0]}\n")
            except jack.JackError as e:
                why = str(e).replace("\n", " ")
                out.write(f"error {args[0]} {why}\n")

    def report(self) -> list[str]:
        """What was sent and heard since the last report, a line each."""
        sent = [self.sent.popleft() for _ in range(len(self.sent))]
        heard = [self.heard.popleft() for _ in range(len(self.heard))]
        return [f"sent {x.port} {x.frame} {x.slot!r}" for x in sent] + [
            f"heard {x.port} {x.frame} {x.t!r}" for x in heard
        ]

    def close(self) -> None:
        self.sender.close()
        self.hearer.close()


class Probes:
    """Impulses on measuring channels at known conductor times, and their arrivals in conductor
    time (``_ProbeClients``), measured in a process of its own: a Python JACK callback needs the
    interpreter's lock every cycle, and in the busy node agent it was late often enough to give
    JACK xruns under load, and to hold up the jacktrip that the probes feed. ``offset`` (conductor
    minus local time) is passed on whenever it is set."""

    def __init__(self, server: str, name: str, phases: list[float]):
        self.server, self.name, self.phases = server, name, phases
        self.rate = 0
        self._offset = 0.0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sent: list[Sent] = []
        self._heard: list[Heard] = []
        self._routed: dict[int, asyncio.Future[str]] = {}

    async def start(self, env: dict[str, str]) -> None:
        """Start the measuring process; raises OSError if it cannot join the JACK server."""
        self._proc = await start_helper(
            "conductor.node.jackio", self.server, self.name, *map(repr, self.phases), env=env
        )
        assert self._proc.stdout is not None
        first = await self._proc.stdout.readline()
        if not first.startswith(b"ready "):
            await self.close()
            raise OSError(f"the measuring clients did not start on JACK server {self.server}")
        self.rate = int(first.split()[1])
        self._reader = asyncio.create_task(self._read(self._proc.stdout))

    @property
    def offset(self) -> float:
        return self._offset

    @offset.setter
    def offset(self, value: float) -> None:
        if value != self._offset and self._proc and self._proc.stdin:
            self._proc.stdin.write(f"offset {value!r}\n".encode())
        self._offset = value

    async def route(self, k: int, send: str, receive: str) -> None:
        """Port ``k`` sends into ``send`` and hears ``receive``; raises OSError if it cannot."""
        assert self._proc is not None and self._proc.stdin is not None
        answer = self._routed[k] = asyncio.get_running_loop().create_future()
        self._proc.stdin.write(f"route {k} {send} {receive}\n".encode())
        async with asyncio.timeout(ROUTE_WITHIN):
            why = await answer
        if why:
            raise OSError(why)

    def take(self) -> tuple[list[Sent], list[Heard]]:
        """What was sent and heard since the last call."""
        sent, heard, self._sent, self._heard = self._sent, self._heard, [], []
        return sent, heard

    async def _read(self, lines: asyncio.StreamReader) -> None:
        while line := await lines.readline():
            verb, *args = line.decode().split(" ", 3)
            if verb == "sent":
                self._sent.append(Sent(int(args[0]), int(args[1]), float(args[2])))
            elif verb == "heard":
                self._heard.append(Heard(int(args[0]), int(args[1]), float(args[2])))
            elif verb in ("routed", "error") and (answer := self._routed.pop(int(args[0]), None)):
                answer.set_result(" ".join(args[1:]).strip() if verb == "error" else "")
        for answer in self._routed.values():
            answer.set_result("the measuring process ended")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def close(self) -> None:
        if self._proc:
            await end_helper(self._proc)
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def start_helper(module: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m module args``: a process that holds JACK clients for this node (``serve``), its
    commands on its standard input, its reports on its standard output, ending with the node."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, preexec_fn=die_with_parent,
    )  # fmt: skip


async def end_helper(proc: asyncio.subprocess.Process) -> None:
    """Close its commands, so that it leaves JACK; killed if it has not within ``LEAVE_WITHIN``."""
    if proc.stdin:
        proc.stdin.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), LEAVE_WITHIN)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def serve(commands: int, out: TextIO, command: Callable[[str, TextIO], None], report: Callable[[], list[str]]) -> None:
    """The main loop of a process that holds JACK clients for a node (its Python callbacks then
    never wait for the node's event loop): until ``commands`` (a file descriptor) ends, each line
    goes to ``command``, and every ``PASS_ON_EVERY`` s what ``report`` says goes to ``out``."""
    pending = b""
    while True:
        if select.select([commands], [], [], PASS_ON_EVERY)[0]:
            read = os.read(commands, 4096)
            if not read:
                return
            *lines, pending = (pending + read).split(b"\n")
            for line in lines:
                command(line.decode(), out)
        if said := report():
            out.write("\n".join(said) + "\n")
        out.flush()


def _connect(client: jack.Client, port: jack.Port, other: str, out: bool) -> None:
    if other not in {p.name for p in client.get_all_connections(port)}:
        client.connect(*((port, other) if out else (other, port)))


def main(server: str, name: str, *phases: str) -> None:
    """The measuring process (``Probes``): its clients, until its commands end."""
    try:
        clients = _ProbeClients(server, name, [float(p) for p in phases])
    except jack.JackError as e:
        sys.exit(f"cannot measure on JACK server {server}: {e}")
    try:
        print(f"ready {clients.rate}", flush=True)
        serve(sys.stdin.fileno(), sys.stdout, clients.command, clients.report)
    finally:
        clients.close()


def runs(server: str) -> None:
    """``python -m conductor.node.jackio runs SERVER``: ends 0 once a new client of ``server`` has
    had its process callback called, 1 if not within ``RUNS_WITHIN`` (a stuck server)."""
    called = threading.Event()
    try:
        client = jack.Client("tutti-runs", servername=server, no_start_server=True)
        client.set_process_callback(lambda frames: called.set())
        client.activate()
    except jack.JackError:
        sys.exit(1)
    if not called.wait(RUNS_WITHIN):
        os._exit(1)  # not closed: a stuck server would not answer
    client.deactivate()
    client.close()


if __name__ == "__main__":
    if sys.argv[1] == "runs":
        runs(sys.argv[2])
    else:
        main(*sys.argv[1:])
