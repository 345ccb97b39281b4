"""Listening to JACK from Python: a recorder that knows when each frame sounded.

JACK-Client calls back on JACK's own real-time thread (the one place Tutti uses a thread, as the
library requires); the callback only copies the block and notes the time.

When did a frame sound? Each block is played when JACK runs its cycle, which is when the process
callback starts, give or take the few microseconds before Python gets the GIL. That delay is never
negative, so the lowest offset among neighbouring cycles is the cycle's own time. A straight line
of frames against time over the whole recording would be wrong: after every xrun JACK's drivers
(and the dummy driver often, on virtual machines) restart their timing, and the line breaks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import jack
import numpy as np

NEIGHBOURS = 8  # cycles either side whose earliest start is taken as this cycle's


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

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class Recorder(_JackClient):
    """Records JACK input ports (``in_1`` ...), with each block's start time; counts xruns."""

    def __init__(self, server: str, name: str = "tutti-recorder", ports: int = 1):
        super().__init__(server, name)
        self.ports = [self.client.inports.register(f"in_{i + 1}") for i in range(ports)]
        self.lock = threading.Lock()
        self.blocks: list[tuple[int, float, np.ndarray]] = []  # first frame, wall time, samples (port, frame)
        self.xruns: list[float] = []  # wall-clock times

        @self.client.set_process_callback
        def process(frames: int) -> None:
            started = time.time()
            block = np.stack([port.get_array() for port in self.ports])
            with self.lock:
                self.blocks.append((self.client.last_frame_time, started, block))

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
        frames = np.array([b[0] for b in blocks], dtype=np.float64)
        offsets = np.array([b[1] for b in blocks]) - frames / self.rate  # wall time minus frame time
        quiet_frames = int(silence * self.rate)
        out = []
        quiet_since = -quiet_frames - 1
        for k, (start, _, both) in enumerate(blocks):
            block = both[port]
            for i in np.flatnonzero(np.abs(block) > threshold):
                frame = start + int(i)
                if frame > quiet_since + quiet_frames:
                    offset = offsets[max(0, k - NEIGHBOURS) : k + NEIGHBOURS + 1].min()
                    out.append(Onset(frame / self.rate + offset, frame, float(np.abs(block[i:]).max())))
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # it may have timed out already
        future.set_result(None)


class Prober(_JackClient):
    """Sends one impulse into a port and times its return on another, in JACK frames."""

    def __init__(self, server: str, name: str):
        super().__init__(server, name)
        self.out = self.client.outports.register("probe")
        self.back = self.client.inports.register("return")
        self._arm = threading.Event()
        self._sent_at: int | None = None
        self._heard_at: int | None = None
        self._back: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

        @self.client.set_process_callback
        def process(frames: int) -> None:
            out = self.out.get_array()
            out.fill(0.0)
            start = self.client.last_frame_time
            if self._arm.is_set() and self._sent_at is None:
                out[0] = 1.0
                self._sent_at = start
            elif self._sent_at is not None and self._heard_at is None:
                loud = np.flatnonzero(np.abs(self.back.get_array()) > 0.3)
                if loud.size and self._loop and self._back:
                    self._heard_at = start + int(loud[0])
                    self._loop.call_soon_threadsafe(_resolve, self._back)

        self.client.activate()

    def route(self, send: str, receive: str) -> None:
        """Send the probe into ``send``; listen for it on ``receive`` (and nothing else)."""
        for existing in self.client.get_all_connections(self.out):
            if existing.name != send:
                self.client.disconnect(self.out, existing)
        for existing in self.client.get_all_connections(self.back):
            if existing.name != receive:
                self.client.disconnect(existing, self.back)
        if send not in {p.name for p in self.client.get_all_connections(self.out)}:
            self.client.connect(self.out, send)
        if receive not in {p.name for p in self.client.get_all_connections(self.back)}:
            self.client.connect(receive, self.back)

    async def round_trip(self, within: float) -> float | None:
        """Seconds from the impulse leaving to its return; None if it did not come back in time."""
        self._loop = asyncio.get_running_loop()
        self._back = self._loop.create_future()
        self._sent_at = self._heard_at = None
        self._arm.set()
        try:
            async with asyncio.timeout(within):
                await self._back
        except TimeoutError:
            return None
        finally:
            self._arm.clear()
        assert self._heard_at is not None and self._sent_at is not None
        return (self._heard_at - self._sent_at) / self.rate
