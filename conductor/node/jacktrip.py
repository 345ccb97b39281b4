"""JackTrip audio links between sites: the topology in the concert file, and running it on the nodes.

One site's node runs the hub server (``jacktrip -S``); every other site's node joins it as a hub
client (``jacktrip -C``). The node agent starts jacktrip with options that take effect, reads its
output into a link state and counters, restarts it with backoff when it exits, patches its JACK
ports (and keeps them patched across reconnects and scsynth restarts), and measures each link
in-band, on a channel of its own: each end sends an impulse at known conductor times and the other
end times its arrival (one way, each direction), and the far end (the hub, or a pair's server)
loops that channel straight back, so the end that connects out also times the round trip.

Tutti patches the hub itself (jacktrip runs with ``--hubpatch 5``, no auto patching): so the
measuring channel stays out of the mix, and a client that reconnects is patched again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from conductor.core.audio import (
    AudioSettings,
    _End,
    client_command,
    client_name,
    hub_command,
    pair_commands,
    parse_version,
)
from conductor.core.process import die_with_parent
from conductor.node.jackio import PHASE, SLOT, WINDOW, Heard, Patchbay, Probes, Sent

log = logging.getLogger("tutti.jacktrip")
T = TypeVar("T")

BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)  # seconds before each restart in a row
STEADY = 10.0  # seconds connected after which a link counts as healthy again (backoff starts over)
CONNECT_WITHIN = 5.0  # seconds a client waits for the hub's audio (times the failures in a row): a busy
# machine takes seconds, and a client that gives up too soon, joining again and again, can leave
# jacktrip 1.7's hub without a worker for it
READ_AFTER_EXIT = 1.0  # seconds a link's last output is read for once its jacktrip has ended
STAGGER = 0.5  # seconds between the sites' first joins of a hub that nobody has joined yet
SILENT_FOR = 2  # seconds without a packet after which a connected end (not a hub) starts again
SPREAD_OF = 10  # successive one-way measurements whose spread is reported as the jitter


async def jacktrip_version(program: str = "jacktrip") -> tuple[int, ...]:
    """The version of the jacktrip at ``program``; (0,) if it does not say, or is not there."""
    try:
        proc = await asyncio.create_subprocess_exec(
            program, "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError:
        return (0,)
    out, _ = await proc.communicate()
    return parse_version(out.decode(errors="replace"))


# --- the state of a link, from jacktrip's output ------------------------------------------------

IOSTAT = re.compile(
    r"send: (\d+)/(\d+) recv: (\d+)/(\d+) prot: (\d+)/(\d+)/(\d+) tot: (\d+)"
)  # per second with -I 1: send underruns/overflows, receive underruns/overflows, lost/out of order/revived


CLIENTS = ("client", "p2p client")  # the ends that connect out, and wait for audio to come back


def _stopped(line: str) -> bool:
    """jacktrip says the far end went."""
    return "Timed Out" in line or "Peer Stopped" in line or "stopped responding" in line.lower()


def _trouble(line: str) -> bool:
    return "error" in line.lower() or "could not" in line.lower()


@dataclass
class LinkState:
    site: str
    role: Literal["hub", "client", "p2p server", "p2p client"]
    peer: str = ""  # the site at the other end (a hub's are its clients)
    state: str = "starting"  # connecting, connected, peer lost, restarting, stopped
    since: float = field(default_factory=time.time)
    started: float | None = None  # wall-clock time its running jacktrip started (a hub's: began to listen)
    restarts: int = 0
    underruns: int = 0
    overflows: int = 0
    lost: int = 0
    packets: int = 0  # received in all
    silent_s: int = 0  # seconds in a row, connected, with no packet received
    peers: int = 0  # hub: clients connected
    last_error: str = ""
    latency_ms: float | None = None  # the latest measured audio round trip
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=20))  # (time, ms)
    measured: int = 0  # round trips measured so far
    ways: dict[str, deque[float]] = field(default_factory=dict)  # peer -> its latest one-way delays to here, ms
    ways_measured: int = 0
    patched: int = 0  # JACK connections Tutti made for this link
    version: str = ""
    impulses_sent: int = 0  # on this end's measuring channel
    impulses_heard: int = 0
    probe_error: str = ""  # why the measuring channel cannot be routed, if it cannot

    def set(self, state: str) -> None:
        if state != self.state:
            log.info("link %s (%s): %s", self.site, self.role, state)
            self.state, self.since = state, time.time()

    def read(self, line: str) -> None:
        """Take in one line of jacktrip's output."""
        if m := IOSTAT.search(line):
            su, so, ru, ro, lost, _ooo, _rev, tot = (int(x) for x in m.groups())
            self.silent_s = self.silent_s + 1 if tot == self.packets and self.state == "connected" else 0
            self.underruns, self.overflows, self.lost, self.packets = ru + su, ro + so, lost, tot
        elif self.role == "hub":
            self._read_hub(line)
        elif "Received Connection from Peer" in line:
            self.set("connected")
        elif "Waiting for Peer" in line:
            self.set("connecting" if self.role in CLIENTS else "waiting")
        elif _stopped(line):
            self.last_error = line.strip()[:200]
            self.set("peer lost")
        elif _trouble(line):
            self.last_error = line.strip()[:200]

    def _read_hub(self, line: str) -> None:
        """A hub's sites are its workers, counted as they start and end (jacktrip's "Total Running
        Threads" is said only when a site joins, and counts the worker that a site joining again
        replaces moments later). One site stopping is not the hub's failure: it is said, no more."""
        if "spawning jacktripWorker" in line:
            self.peers += 1
        elif "releasing jacktripWorker" in line:
            self.peers = max(0, self.peers - 1)
        elif "Waiting for client connections" in line:
            self.started = time.time()  # a site that called before now was not heard
        else:
            if _stopped(line) or _trouble(line):
                self.last_error = line.strip()[:200]
            return
        self.set("connected" if self.peers else "waiting")

    def way_in(self, peer: str, seconds: float) -> None:
        """A one-way delay measured from ``peer`` to this end."""
        self.ways.setdefault(peer, deque(maxlen=SPREAD_OF)).append(round(seconds * 1000, 3))
        self.ways_measured += 1

    def report(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "role": self.role,
            "peer": self.peer,
            "state": self.state,
            "for_s": round(time.time() - self.since, 1),
            "up_s": None if self.started is None else round(time.time() - self.started, 3),
            "restarts": self.restarts,
            "underruns": self.underruns,
            "overflows": self.overflows,
            "lost": self.lost,
            "peers": self.peers,
            "latency_ms": self.latency_ms,
            "measured": self.measured,
            "history_ms": [ms for _, ms in self.history],
            "way_in_ms": {peer: ways[-1] for peer, ways in self.ways.items()},
            "way_jitter_ms": {peer: round(max(ways) - min(ways), 3) for peer, ways in self.ways.items()},
            "ways_measured": self.ways_measured,
            "patched": self.patched,
            "last_error": self.last_error,
            "version": self.version,
            "impulses_sent": self.impulses_sent,
            "impulses_heard": self.impulses_heard,
            "probe_error": self.probe_error,
        }


@dataclass(frozen=True)
class Probe:
    """A measuring channel at one end: the peer at the other end, and the JACK ports for it here."""

    peer: str
    jacktrip: str  # the jacktrip JACK client carrying it here
    channel: int
    near: bool  # the end that connects out (it also times the round trip: the far end loops it back)

    @property
    def phase(self) -> float:
        return PHASE["near" if self.near else "far"]


class Link:
    """One jacktrip process, kept running: restarted with backoff whenever it exits."""

    def __init__(
        self,
        command: list[str],
        state: LinkState,
        env: dict[str, str],
        probes: list[Probe] | None = None,
        after: float = 0.0,
    ):
        self.command = command
        self.state = state
        self.env = env
        self.probes = probes or []  # the measuring channels this end sends and hears on
        self.after = after  # seconds to wait before the first start
        self.proc: asyncio.subprocess.Process | None = None
        self._rejoin = asyncio.Event()  # set: start again after ``_rejoin_after``, not the backoff
        self._rejoin_after = 0.0

    def rejoin(self, hub_started: float, after: float) -> None:
        """The hub's jacktrip began to listen at ``hub_started`` (wall clock): a jacktrip of this
        end that called it before then is connected to a hub that has gone (1.7 may not notice for
        seconds, and may even take audio from a new worker on its old port, meant for another
        site) or waits for one that never answers (1.7 waits for ever), and one waiting to start
        again need not wait out its backoff. Both start in ``after`` s."""
        state = self.state
        if state.state == "connected" and state.since >= hub_started:  # connected to this hub
            return
        if state.started is not None and state.started >= hub_started:  # called this hub
            return
        self._rejoin_after = after
        self._rejoin.set()
        if self.proc is not None and self.proc.returncode is None:
            state.last_error = "the hub started again: joining it"
            self._end(signal.SIGKILL)

    async def run(self) -> None:
        await asyncio.sleep(self.after)
        failures = 0
        while True:
            self._rejoin.clear()
            started = time.monotonic()
            self.state.started = None if self.state.role == "hub" else time.time()
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            self.state.set("connecting" if self.state.role in CLIENTS else "waiting")
            self.state.packets = self.state.silent_s = 0  # this process's own
            reader = asyncio.create_task(self._read(self.proc))
            exited = asyncio.create_task(self.proc.wait())
            try:
                code = await self._supervise(exited, started, CONNECT_WITHIN * (failures + 1))
                await asyncio.wait([reader], timeout=READ_AFTER_EXIT)  # its last lines
            finally:
                for task in (reader, exited):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self.state.restarts += 1
            self.state.peers, self.state.started = 0, None
            failures = 0 if time.monotonic() - started > STEADY else failures + 1
            delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
            self.state.last_error = self.state.last_error or f"jacktrip exited ({code})"
            log.warning("jacktrip for %s exited (%s); restarting in %.1f s", self.state.site, code, delay)
            self.state.set("restarting")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rejoin.wait(), delay)
            if self._rejoin.is_set():  # the hub is back: it is joined at once (staggered), afresh
                failures = 0
                await asyncio.sleep(self._rejoin_after)

    async def _supervise(self, exited: asyncio.Task[int], started: float, patience: float) -> int:
        """Until the process ends (not its output: a pipe that another process holds open would
        keep a killed link from ever starting again), ending it if it waits for audio too long."""
        assert self.proc is not None
        while True:
            await asyncio.wait([exited], timeout=0.25)
            if self.proc.returncode is not None:  # set on exit; ``wait`` may also wait for the pipes
                return self.proc.returncode
            if self.state.state == "connecting" and time.monotonic() - started > patience:
                # A client can wait for the hub's audio for ever (seen after a reconnection).
                self.state.last_error = f"no audio from the hub within {patience:g} s"
                self._end(signal.SIGKILL)
            elif self.state.role != "hub" and self.state.silent_s >= SILENT_FOR:
                # The far end went (a restarted hub has new ports, a pair's client a new
                # process): jacktrip 1.7 would wait for ever; started again, each end finds the
                # other when it is back.
                self.state.last_error = f"no audio from {self.state.peer} for {SILENT_FOR} s: joining again"
                self._end(signal.SIGKILL)

    def _end(self, how: signal.Signals) -> None:
        """Send jacktrip ``how``; it may have ended by itself since we looked (then sending raises)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(how)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self.state.read(line.decode(errors="replace"))

    async def close(self) -> None:
        if self.proc and self.proc.returncode is None:
            self._end(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            if self.proc.returncode is None:
                self._end(signal.SIGKILL)


# --- the node's side: which ends it runs, and their JACK connections ------------------------------


def wanted_connections(audio: AudioSettings, site: str, scsynth: str, ports: set[str]) -> list[tuple[str, str]]:
    """The JACK connections this site's ends need now, among the ``ports`` that exist."""
    out: list[tuple[str, str]] = []
    hub = audio.hub
    if hub is not None and site == hub.site:
        for link in audio.links:
            n = link.channels or 2
            for other in audio.links:
                if hub.patch == "mix" or (hub.patch == "fan" and other.site != link.site):
                    out += [(f"{link.site}:receive_{i}", f"{other.site}:send_{i}") for i in range(1, n + 1)]
            if hub.patch == "loopback":
                out += [(f"{link.site}:receive_{i}", f"{link.site}:send_{i}") for i in range(1, n + 1)]
            if link.measure:  # the measuring channel comes straight back
                out.append(_loop(link.site, audio.channels(link)))
            out += _scsynth_patch(hub, link.site, scsynth, n)
    for link in audio.links:
        if link.site == site:
            out += _scsynth_patch(link, client_name(link), scsynth, link.channels or 2)
    for pair in audio.pairs:
        if pair.server.site == site:
            name = f"jacktrip-{pair.client.site}"
            out += [_loop(name, audio.channels(pair))] if pair.measure else []
            out += _scsynth_patch(pair.server, name, scsynth, pair.channels)
        if pair.client.site == site:
            out += _scsynth_patch(pair.client, f"jacktrip-{pair.server.site}", scsynth, pair.channels)
    names = namesakes(ports)
    pairs = [
        (a, b) for x, y in out for a in _as_named(x, names) for b in _as_named(y, names) if _same(x, y) == _same(a, b)
    ]
    return [(a, b) for a, b in pairs if a in ports and b in ports]


def _same(a: str, b: str) -> bool:
    """Whether two ports are of one client (a loop within it stays within each namesake)."""
    return a.split(":", 1)[0] == b.split(":", 1)[0]


RENAMED = re.compile(r"(.+)-\d\d")


def namesakes(ports: set[str]) -> dict[str, list[str]]:
    """Each JACK client among ``ports`` under the name it asked for. JACK names a client NAME-01
    (-02, ...) while one called NAME is still there: a hub's worker for a site that reconnected
    can start before the old one has left, and keeps that name for as long as it runs."""
    out: dict[str, list[str]] = {}
    for client in {port.split(":", 1)[0] for port in ports}:
        out.setdefault(client, []).append(client)
        if m := RENAMED.fullmatch(client):
            out.setdefault(m[1], []).append(client)
    return out


def _as_named(port: str, names: dict[str, list[str]]) -> list[str]:
    client, short = port.split(":", 1)
    return [f"{c}:{short}" for c in names.get(client, [client])]


def _loop(jacktrip: str, channel: int) -> tuple[str, str]:
    return (f"{jacktrip}:receive_{channel}", f"{jacktrip}:send_{channel}")


def _scsynth_patch(end: _End, jacktrip: str, scsynth: str, channels: int) -> list[tuple[str, str]]:
    out = []
    for i in range(1, channels + 1):
        if end.receive_to_scsynth is not None:
            out.append((f"{jacktrip}:receive_{i}", f"{scsynth}:in_{end.receive_to_scsynth + i - 1}"))
        if end.scsynth_to_send is not None:
            out.append((f"{scsynth}:out_{end.scsynth_to_send + i - 1}", f"{jacktrip}:send_{i}"))
    return out


def join_after(audio: AudioSettings, site: str, hub_joined: Collection[str] | None) -> float:
    """Seconds a site waits before it first joins the hub. When no site has joined it yet (the
    concert coming up), the sites join one at a time, ``STAGGER`` apart in the concert file's order:
    four sites joining a jacktrip 1.7 hub within a second can leave its workers passing no audio
    (deploy/README). A site whose node starts again while others play joins at once."""
    sites = [link.site for link in audio.links]
    if hub_joined is None or hub_joined or site not in sites:
        return 0.0
    return STAGGER * sites.index(site)


def _failed(state: LinkState, task: asyncio.Task[None]) -> None:
    """A link's supervisor runs until the node stops: if it fails, the link says so, rather than
    show for ever the state it was in."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the supervisor of %s's jacktrip failed", state.site, exc_info=error)
        state.last_error = f"its supervisor failed ({error.__class__.__name__}): restart the node"
        state.set("stopped")


class SiteAudio:
    """What one node runs of the audio topology: its site's jacktrip, patches, and measurements."""

    def __init__(
        self,
        audio: AudioSettings,
        site: str,
        jack_server: str,
        scsynth: str,
        env: dict[str, str],
        jacktrip: str = "jacktrip",
        clock_offset: Callable[[], float] = lambda: 0.0,
        hub_joined: Collection[str] | None = None,
    ):
        self.audio = audio
        self.hub_joined = hub_joined  # the sites joined to the hub when this node joined (None: not known)
        self.clock_offset = clock_offset  # conductor time minus this machine's: the impulses' times
        self.jacktrip = jacktrip  # the program: Debian 12's 1.7, or a 2.x (deploy/jacktrip2.sh)
        self.site = site
        self.jack_server = jack_server
        self.scsynth = scsynth
        self.env = env
        self.links: list[Link] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.patchbay: Patchbay | None = None
        self._ports: set[str] = set()  # the JACK ports last seen
        # libjack's calls wait on the JACK server: they go to a thread of their own, one at a time,
        # so that closing the clients never races a connection still being made
        self._jack = ThreadPoolExecutor(1, thread_name_prefix=f"tutti-jack-{site}")
        self.probes: Probes | None = None

    @property
    def states(self) -> list[LinkState]:
        return [link.state for link in self.links]

    def _plan(self, version: str) -> list[tuple[LinkState, list[str], _End, list[Probe]]]:
        """Each end this site runs: its state, command line, settings, and its measuring channels."""
        audio, site = self.audio, self.site
        hub = audio.hub
        out: list[tuple[LinkState, list[str], _End, list[Probe]]] = []
        if hub is not None and hub.site == site:
            probes = [Probe(link.site, link.site, audio.channels(link), False) for link in audio.links if link.measure]
            out.append((LinkState(site, "hub", version=version), hub_command(audio, hub), hub, probes))
        for link in audio.links:
            if hub is not None and link.site == site:
                probes = [Probe(hub.site, client_name(link), audio.channels(link), True)] if link.measure else []
                state = LinkState(site, "client", peer=hub.site, version=version)
                out.append((state, client_command(audio, hub, link), link, probes))
        for pair in audio.pairs:
            server, client = pair_commands(audio, pair)
            channel = audio.channels(pair)
            if pair.server.site == site:
                far = Probe(pair.client.site, f"jacktrip-{pair.client.site}", channel, False)
                probes = [far] if pair.measure else []
                state = LinkState(site, "p2p server", peer=pair.client.site, version=version)
                out.append((state, server, pair.server, probes))
            if pair.client.site == site:
                near = Probe(pair.server.site, f"jacktrip-{pair.server.site}", channel, True)
                probes = [near] if pair.measure else []
                state = LinkState(site, "p2p client", peer=pair.server.site, version=version)
                out.append((state, client, pair.client, probes))
        return out

    async def start(self) -> None:
        version = await jacktrip_version(self.jacktrip)
        label = ".".join(map(str, version))
        for state, command, end, probes in self._plan(label):
            if version == (0,):
                state.last_error = f"no jacktrip at '{self.jacktrip}' (or it gives no version)"
            elif version[0] < 2 and end.buffer_strategy >= 3:
                state.last_error = f"--bufstrategy 3 and 4 need jacktrip 2.x; this is {label}"
            if state.last_error:  # reported, never started
                state.set("stopped")
                self.links.append(Link([], state, self.env))
            else:
                after = join_after(self.audio, state.site, self.hub_joined) if state.role == "client" else 0.0
                self.links.append(Link([self.jacktrip, *command[1:]], state, self.env, probes, after))
        running = [link for link in self.links if link.command]
        if not running:
            return
        self.patchbay = Patchbay(self.jack_server, f"tutti-patch-{self.site}")
        if self.patchbay.rate != self.audio.sample_rate:
            problem = f"JACK runs at {self.patchbay.rate} Hz here, the concert at {self.audio.sample_rate} Hz"
            for link in running:
                link.state.last_error = problem
        self._tasks = [asyncio.create_task(link.run()) for link in running]
        for link, task in zip(running, self._tasks, strict=True):
            task.add_done_callback(functools.partial(_failed, link.state))
        self._tasks.append(asyncio.create_task(self._keep_patched()))
        measured = [(link.state, probe) for link in running for probe in link.probes]
        if measured:
            phases = [probe.phase for _, probe in measured]
            self.probes = Probes(self.jack_server, f"tutti-probe-{self.site}", phases)
            self._tasks.append(asyncio.create_task(self._measure(measured)))

    def hub_started(self, at: float) -> None:
        """The hub's jacktrip began to listen at ``at`` (wall clock): this site's link to it joins
        again now if it called before then, in the concert file's order as when nobody has joined."""
        for link in self.links:
            if link.state.role == "client" and link.command:
                link.rejoin(at, join_after(self.audio, self.site, []))

    async def _keep_patched(self) -> None:
        """Make the wanted connections whenever their ports exist: after a reconnect, a restart."""
        assert self.patchbay is not None
        while True:
            try:
                self._ports = ports = await self._in_jack(self.patchbay.ports)
                made = await self._in_jack(
                    self.patchbay.connect, wanted_connections(self.audio, self.site, self.scsynth, ports)
                )
                for link in self.links:
                    link.state.patched += made
            except Exception as e:  # JACK may be restarting; try again next time
                log.warning("patching: %s", e)
            await asyncio.sleep(0.25)

    async def _measure(self, measured: list[tuple[LinkState, Probe]]) -> None:
        """Time the impulses on each measuring channel: one-way into this end, and at the end that
        connects out, the round trip through the other end's loop back too.

        Each end sends at slots of its own phase in conductor time (see ``Probes``), so an impulse
        heard tells by its time which end sent it: one heard within ``WINDOW`` after the other
        end's slot took that long to come one way.
        """
        probes = self.probes
        assert probes is not None
        mine: list[deque[Sent]] = [deque(maxlen=4) for _ in measured]  # each port's latest impulses sent
        routed, failing, connected = 0.0, "", [False] * len(measured)
        while True:
            await asyncio.sleep(0.1)
            try:
                if not probes.running:  # not started yet, or ended: (again) with every channel routed anew
                    await probes.close()
                    await probes.start(self.env)
                    routed = 0.0
                probes.offset = self.clock_offset()
                # A restarted jacktrip's ports are new ones: routed again now and then, and at once
                # when a link connects, so that it is measured at its first slot.
                now_connected = [state.state == "connected" for state, _ in measured]
                if time.monotonic() - routed > 0.5 or now_connected != connected:
                    routed, connected = time.monotonic(), now_connected
                    await self._route(measured)
                sent, heard = probes.take()
                for s in sent:
                    mine[s.port].append(s)
                    measured[s.port][0].impulses_sent += 1
                for h in heard:
                    state, probe = measured[h.port]
                    state.impulses_heard += 1
                    self._heard(state, probe, h, mine[h.port], probes.rate)
            except Exception as e:  # one bad pass must not end the measuring for the rest of the concert
                if repr(e) != failing:  # said once, not ten times a second
                    log.exception("measuring the audio links")
                failing = repr(e)
                await asyncio.sleep(1.0)

    async def _route(self, measured: list[tuple[LinkState, Probe]]) -> None:
        assert self.probes is not None
        names = namesakes(self._ports)
        for k, (state, probe) in enumerate(measured):
            if state.state != "connected":
                continue
            ports = [f"{probe.jacktrip}:{way}_{probe.channel}" for way in ("send", "receive")]
            try:
                for client in names.get(probe.jacktrip, [probe.jacktrip]):
                    await self.probes.route(k, f"{client}:send_{probe.channel}", f"{client}:receive_{probe.channel}")
                state.probe_error = ""
            except (OSError, TimeoutError) as e:  # the link's ports may be gone for a moment; said if it lasts
                state.probe_error = f"cannot patch the measuring channel ({' and '.join(ports)}): {e}"[:200]

    @staticmethod
    def _heard(state: LinkState, probe: Probe, heard: Heard, mine: deque[Sent], rate: int) -> None:
        other = PHASE["far" if probe.near else "near"]
        since_other = (heard.t - other) % SLOT
        if since_other < WINDOW:
            state.way_in(probe.peer, since_other)
            return
        back = [s for s in mine if 0 < heard.frame - s.frame < WINDOW * rate]
        if probe.near and back:  # our own, through the other end's loop: the round trip, in frames
            state.latency_ms = round((heard.frame - back[-1].frame) / rate * 1000, 3)
            state.history.append((time.time(), state.latency_ms))
            state.measured += 1

    def _in_jack(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._jack, call, *args)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(link.close() for link in self.links))
        if self.probes:
            await self.probes.close()
        if self.patchbay:
            await self._in_jack(self.patchbay.close)
        self._jack.shutdown()
