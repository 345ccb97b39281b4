"""JackTrip audio links between sites: the topology in the concert file, and running it on the nodes.

One site's node runs the hub server (``jacktrip -S``); every other site's node joins it as a hub
client (``jacktrip -C``). The node agent starts jacktrip with options that take effect, reads its
output into a link state and counters, restarts it with backoff when it exits, patches its JACK
ports (and keeps them patched across reconnects and scsynth restarts), and measures each link's
audio round trip in-band, on a channel of its own that the hub loops straight back.

Tutti patches the hub itself (jacktrip runs with ``--hubpatch 5``, no auto patching): so the
measuring channel stays out of the mix, and a client that reconnects is patched again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from .jackio import Patchbay, Prober

log = logging.getLogger("tutti.jacktrip")

Port = Annotated[int, Field(ge=1, le=65535)]
Channels = Annotated[int, Field(ge=1, le=64)]
SiteName = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
HUB_PATCHES = {"server": 0, "loopback": 1, "fan": 2, "mix": 4}  # --hubpatch numbers, as Tutti applies them
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before each restart in a row
STEADY = 10.0  # seconds connected after which a link counts as healthy again (backoff starts over)
CONNECT_WITHIN = 2.5  # seconds a client may wait for the hub's audio, times the failures in a row
PROBE_EVERY = 5.0  # seconds between round-trip measurements of a connected link


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _End(_Strict):
    site: SiteName
    node: StrictStr | None = None  # the node that runs this end (default: the site's node)
    queue: Annotated[int, Field(ge=2, le=128)] = 4  # -q: receive queue, in packets (periods)
    # --bufstrategy: -1 the classic ring buffer; 0-2 jitter buffers; 3-4 (jacktrip 2.x) with -q in ms
    buffer_strategy: Literal[-1, 0, 1, 2, 3, 4] = 1
    sample_rate: StrictInt | None = None  # this end's JACK rate, if it differs from the concert's
    bit_depth: Literal[16, 24, 32] | None = None  # this end's -b, if it differs from the concert's
    receive_to_scsynth: Annotated[int, Field(ge=1)] | None = None  # receive_1.. → scsynth in_N..
    scsynth_to_send: Annotated[int, Field(ge=1)] | None = None  # scsynth out_N.. → send_1..
    channels: Channels | None = None  # -n
    timeout: StrictBool = False  # -t: quit after 10 s without network activity


class HubSettings(_End):
    address: StrictStr  # where clients reach the hub: an IPv6 or IPv4 literal, or a name
    port: Port = 4464  # the hub's bind port (-B): clients' peer port
    patch: Literal["fan", "mix", "loopback", "server"] = "fan"


class LinkSettings(_End):
    host: StrictStr = "::"  # this site's own address; two clients on one host need their own bind ports
    bind_port: Port = 4464  # -B
    measure: StrictBool = True  # one more channel, looped back at the hub, to measure the round trip


class AudioSettings(_Strict):
    sample_rate: StrictInt = 48000
    bit_depth: Literal[16, 24, 32] = 24
    period: Annotated[int, Field(ge=16, le=4096)] = 128  # JACK frames per period at every site
    hub: HubSettings
    links: list[LinkSettings] = []

    def channels(self, link: LinkSettings) -> int:
        """Channels jacktrip carries for a link: its audio, plus the measuring channel."""
        return (link.channels or 2) + (1 if link.measure else 0)


Loc = tuple[str | int, ...]


def check_audio(audio: AudioSettings) -> tuple[list[tuple[Loc, str]], list[tuple[Loc, str]]]:
    """Errors (the links cannot work) and warnings (an option with no effect) in an audio topology."""
    errors: list[tuple[Loc, str]] = []
    warnings: list[tuple[Loc, str]] = []
    hub = audio.hub
    hub_rate, hub_bits = hub.sample_rate or audio.sample_rate, hub.bit_depth or audio.bit_depth
    if hub.channels is not None:
        message = "-n has no effect on a hub server: each client brings its own channel count"
        warnings.append((("audio", "hub", "channels"), message))
    if hub.timeout:
        warnings.append((("audio", "hub", "timeout"), "-t has no effect on a hub server"))
    bound: dict[tuple[str, int], int] = {}
    for i, link in enumerate(audio.links):
        loc: Loc = ("audio", "links", i)
        if link.site == hub.site:
            errors.append(((*loc, "site"), f"'{link.site}' runs the hub; it needs no link to itself"))
        rate, bits = link.sample_rate or audio.sample_rate, link.bit_depth or audio.bit_depth
        if rate != hub_rate:
            message = f"{rate} Hz at {link.site} but {hub_rate} Hz at the hub: jacktrip does not resample"
            errors.append(((*loc, "sample_rate"), message))
        if bits != hub_bits:
            message = f"{bits}-bit at {link.site} but {hub_bits}-bit at the hub: both ends must agree"
            errors.append(((*loc, "bit_depth"), message))
        key = (link.host, link.bind_port)
        if key in bound:
            errors.append(
                ((*loc, "bind_port"), f"links {bound[key]} and {i} share port {link.bind_port} on host {link.host}")
            )
        bound.setdefault(key, i)
        if link.host == hub.address and link.bind_port == hub.port:
            errors.append(((*loc, "bind_port"), f"port {hub.port} on {link.host} is the hub's own"))
        if link.timeout:
            message = "-t makes a client quit after 10 s of silence; Tutti restarts it anyway"
            warnings.append(((*loc, "timeout"), message))
    sites = [link.site for link in audio.links]
    for i, site in enumerate(sites):
        if site in sites[:i]:
            errors.append((("audio", "links", i, "site"), f"'{site}' has two links"))
    return errors, warnings


def parse_version(text: str) -> tuple[int, ...]:
    """``jacktrip -v`` output → (major, minor, patch); (0,) if it says no version."""
    m = re.search(r"VERSION:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x or 0) for x in m.groups()) if m else (0,)


async def jacktrip_version() -> tuple[int, ...]:
    proc = await asyncio.create_subprocess_exec(
        "jacktrip", "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return parse_version(out.decode(errors="replace"))


def hub_command(audio: AudioSettings) -> list[str]:
    hub = audio.hub
    return [
        "jacktrip", "-S", "-p", "5", "-B", str(hub.port), "-q", str(hub.queue),
        "--bufstrategy", str(hub.buffer_strategy), "-b", str(hub.bit_depth or audio.bit_depth), "-I", "1",
    ]  # fmt: skip


def client_command(audio: AudioSettings, link: LinkSettings) -> list[str]:
    command = [
        "jacktrip", "-C", audio.hub.address, "-P", str(audio.hub.port), "-B", str(link.bind_port),
        "-K", link.site, "-J", client_name(link), "-n", str(audio.channels(link)), "-q", str(link.queue),
        "--bufstrategy", str(link.buffer_strategy), "-b", str(link.bit_depth or audio.bit_depth),
        "-D", "-I", "1",
    ]  # fmt: skip
    return command + (["-t"] if link.timeout else [])


def client_name(link: LinkSettings) -> str:
    """The JACK client name of a link's jacktrip at its own site (never a JACK server's name)."""
    return f"jacktrip-{link.site}"


# --- the state of a link, from jacktrip's output ------------------------------------------------

IOSTAT = re.compile(
    r"send: (\d+)/(\d+) recv: (\d+)/(\d+) prot: (\d+)/(\d+)/(\d+) tot: (\d+)"
)  # per second with -I 1: send underruns/overflows, receive underruns/overflows, lost/out of order/revived


@dataclass
class LinkState:
    site: str
    role: Literal["hub", "client"]
    state: str = "starting"  # connecting, connected, peer lost, restarting, stopped
    since: float = field(default_factory=time.time)
    restarts: int = 0
    underruns: int = 0
    overflows: int = 0
    lost: int = 0
    packets: int = 0
    peers: int = 0  # hub: clients connected
    last_error: str = ""
    latency_ms: float | None = None  # the latest measured audio round trip
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=20))  # (time, ms)
    measured: int = 0  # round trips measured so far
    patched: int = 0  # JACK connections Tutti made for this link
    version: str = ""

    def set(self, state: str) -> None:
        if state != self.state:
            log.info("link %s (%s): %s", self.site, self.role, state)
            self.state, self.since = state, time.time()

    def read(self, line: str) -> None:
        """Take in one line of jacktrip's output."""
        if m := IOSTAT.search(line):
            su, so, ru, ro, lost, _ooo, _rev, tot = (int(x) for x in m.groups())
            self.underruns, self.overflows, self.lost, self.packets = ru + su, ro + so, lost, tot
        elif "Received Connection from Peer" in line:
            self.set("connected")
        elif "Waiting for Peer" in line or "Waiting for client connections" in line:
            if self.role == "hub":
                self.set("connected" if self.peers else "waiting")
            else:
                self.set("connecting")
        elif "Client Connection Received" in line:
            self.peers += 1
            self.set("connected")
        elif m := re.search(r"Total Running Threads:\s*(\d+)", line):
            self.peers = int(m[1])
        elif "Timed Out" in line or "Peer Stopped" in line or "stopped responding" in line.lower():
            self.last_error = line.strip()[:200]
            self.set("peer lost")
        elif "error" in line.lower() or "could not" in line.lower():
            self.last_error = line.strip()[:200]

    def report(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "role": self.role,
            "state": self.state,
            "for_s": round(time.time() - self.since, 1),
            "restarts": self.restarts,
            "underruns": self.underruns,
            "overflows": self.overflows,
            "lost": self.lost,
            "peers": self.peers,
            "latency_ms": self.latency_ms,
            "measured": self.measured,
            "history_ms": [ms for _, ms in self.history],
            "patched": self.patched,
            "last_error": self.last_error,
            "version": self.version,
        }


class Link:
    """One jacktrip process, kept running: restarted with backoff whenever it exits."""

    def __init__(self, command: list[str], state: LinkState, env: dict[str, str]):
        self.command = command
        self.state = state
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            self.state.set("connecting" if self.state.role == "client" else "waiting")
            reader = asyncio.create_task(self._read(self.proc))
            patience = CONNECT_WITHIN * (failures + 1)
            while not reader.done():
                await asyncio.wait([reader], timeout=0.25)
                if self.state.state == "connecting" and time.monotonic() - started > patience:
                    # A client can wait for the hub's audio for ever (seen after a reconnection).
                    self.state.last_error = f"no audio from the hub within {patience:g} s"
                    self.proc.kill()
            code = await self.proc.wait()
            self.state.restarts += 1
            self.state.peers = 0
            failures = 0 if time.monotonic() - started > STEADY else failures + 1
            delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
            self.state.last_error = self.state.last_error or f"jacktrip exited ({code})"
            log.warning("jacktrip for %s exited (%s); restarting in %.1f s", self.state.site, code, delay)
            self.state.set("restarting")
            await asyncio.sleep(delay)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.state.read(line.decode(errors="replace"))

    async def close(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            if self.proc.returncode is None:
                self.proc.kill()


# --- the node's side: which ends it runs, and their JACK connections ------------------------------


def wanted_connections(audio: AudioSettings, site: str, scsynth: str, ports: set[str]) -> list[tuple[str, str]]:
    """The JACK connections this site's end needs now, among the ``ports`` that exist."""
    out: list[tuple[str, str]] = []
    if site == audio.hub.site:
        hub = audio.hub
        for link in audio.links:
            n = link.channels or 2
            for other in audio.links:
                if hub.patch == "mix" or (hub.patch == "fan" and other.site != link.site):
                    out += [(f"{link.site}:receive_{i}", f"{other.site}:send_{i}") for i in range(1, n + 1)]
            if hub.patch == "loopback":
                out += [(f"{link.site}:receive_{i}", f"{link.site}:send_{i}") for i in range(1, n + 1)]
            if link.measure:  # the measuring channel comes straight back
                m = audio.channels(link)
                out.append((f"{link.site}:receive_{m}", f"{link.site}:send_{m}"))
            out += _scsynth_patch(hub, link.site, scsynth, n)
    for link in audio.links:
        if link.site == site:
            out += _scsynth_patch(link, client_name(link), scsynth, link.channels or 2)
    return [(a, b) for a, b in out if a in ports and b in ports]


def _scsynth_patch(end: _End, jacktrip: str, scsynth: str, channels: int) -> list[tuple[str, str]]:
    out = []
    for i in range(1, channels + 1):
        if end.receive_to_scsynth is not None:
            out.append((f"{jacktrip}:receive_{i}", f"{scsynth}:in_{end.receive_to_scsynth + i - 1}"))
        if end.scsynth_to_send is not None:
            out.append((f"{scsynth}:out_{end.scsynth_to_send + i - 1}", f"{jacktrip}:send_{i}"))
    return out


def scsynth_inputs(audio: AudioSettings, site: str) -> int:
    """How many inputs this site's scsynth needs for the links patched into it."""
    ends: list[tuple[_End, int]] = [(link, link.channels or 2) for link in audio.links if link.site == site]
    if site == audio.hub.site:
        ends += [(audio.hub, max((link.channels or 2 for link in audio.links), default=2))]
    return max([2] + [end.receive_to_scsynth + n - 1 for end, n in ends if end.receive_to_scsynth is not None])


class SiteAudio:
    """What one node runs of the audio topology: its site's jacktrip, patches, and measurements."""

    def __init__(self, audio: AudioSettings, site: str, jack_server: str, scsynth: str, env: dict[str, str]):
        self.audio = audio
        self.site = site
        self.jack_server = jack_server
        self.scsynth = scsynth
        self.env = env
        self.links: list[Link] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.patchbay: Patchbay | None = None
        self.prober: Prober | None = None

    @property
    def states(self) -> list[LinkState]:
        return [link.state for link in self.links]

    async def start(self) -> None:
        version = await jacktrip_version()
        label = ".".join(map(str, version))
        ends: list[_End] = [self.audio.hub, *self.audio.links]
        if version[0] < 2 and any(e.site == self.site and e.buffer_strategy >= 3 for e in ends):
            state = LinkState(self.site, "hub" if self.site == self.audio.hub.site else "client", version=label)
            state.set("stopped")
            state.last_error = f"--bufstrategy 3 and 4 need jacktrip 2.x; this is {label}"
            self.links.append(Link([], state, self.env))
            return
        if self.site == self.audio.hub.site:
            state = LinkState(self.site, "hub", version=label)
            self.links.append(Link(hub_command(self.audio), state, self.env))
        for settings in self.audio.links:
            if settings.site == self.site:
                state = LinkState(settings.site, "client", version=label)
                self.links.append(Link(client_command(self.audio, settings), state, self.env))
        self.patchbay = Patchbay(self.jack_server, f"tutti-patch-{self.site}")
        if self.patchbay.rate != self.audio.sample_rate:
            for link in self.links:
                link.state.last_error = (
                    f"JACK runs at {self.patchbay.rate} Hz here, the concert at {self.audio.sample_rate} Hz"
                )
        self._tasks = [asyncio.create_task(link.run()) for link in self.links]
        self._tasks.append(asyncio.create_task(self._keep_patched()))
        if any(s.site == self.site and s.measure for s in self.audio.links):
            self.prober = Prober(self.jack_server, f"tutti-probe-{self.site}")
            self._tasks.append(asyncio.create_task(self._measure()))

    async def _keep_patched(self) -> None:
        """Make the wanted connections whenever their ports exist: after a reconnect, a restart."""
        assert self.patchbay is not None
        while True:
            try:
                ports = self.patchbay.ports()
                made = self.patchbay.connect(wanted_connections(self.audio, self.site, self.scsynth, ports))
                for link in self.links:
                    link.state.patched += made
            except Exception as e:  # JACK may be restarting; try again next time
                log.warning("patching: %s", e)
            await asyncio.sleep(0.25)

    async def _measure(self) -> None:
        """Measure the round trip on the measuring channel: on each (re)connection, then every so often."""
        assert self.prober is not None
        settings = next(s for s in self.audio.links if s.site == self.site)
        link = next(x for x in self.links if x.state.role == "client")
        channel = self.audio.channels(settings)
        name = client_name(settings)
        last: tuple[int, float] = (-1, 0.0)  # (restarts, time) of the latest measurement
        while True:
            await asyncio.sleep(0.1)
            state = link.state
            due = state.restarts != last[0] or time.monotonic() - last[1] >= PROBE_EVERY
            if state.state != "connected" or not due:
                continue
            try:
                self.prober.route(f"{name}:send_{channel}", f"{name}:receive_{channel}")
                seconds = await self.prober.round_trip(within=1.0)
            except Exception as e:  # the link's ports may be gone for a moment
                log.debug("measuring %s: %s", self.site, e)
                continue
            if seconds is not None:
                state.latency_ms = round(seconds * 1000, 3)
                state.history.append((time.time(), state.latency_ms))
                state.measured += 1
                last = (state.restarts, time.monotonic())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(link.close() for link in self.links))
        for jack_client in (self.patchbay, self.prober):
            if jack_client:
                jack_client.close()
