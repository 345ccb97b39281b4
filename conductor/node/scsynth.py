"""A supervised scsynth on a JACK server, spoken to over OSC; a JACK server with the dummy driver."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import re
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage

from conductor.core.osc import osc_message
from conductor.core.process import die_with_parent
from conductor.files import SYNTHS
from conductor.node.jackio import RUNS_WITHIN

log = logging.getLogger("tutti.scsynth")
OUTPUT_LATENCY = re.compile(r"max output latency ([0-9.]+) ms")  # SC_Jack.cpp, as the graph changes
UNANSWERED = 3  # status polls in a row (a second apart) left unanswered before scsynth counts as not answering
STUCK = (  # what a scsynth that runs and answers nothing means, most often
    "it is hung, or its JACK server {server} no longer runs its clients (its log says 'Process error'"
    " every cycle): restart that server (in a deployment: systemctl restart tutti-jack-{node})"
)
DEFAULT_GROUP = 1  # as sclang's Server makes it: where cues with target 1 put their synths


SHARED_MEMORY = Path("/dev/shm")  # POSIX shared memory on Linux: jack2's and scsynth's
JACK_REGISTRY = SHARED_MEMORY / "jack-shm-registry"  # jack2's list of servers (shm.h)
JACK_REGISTRY_HEADER = struct.Struct("<IHxxiiii")  # magic, protocol, type, size, hdr_len, entry_len
JACK_MAGIC = 0x4A41434B  # "JACK"
JACK_MAX_SERVERS = 8


class ScsynthUnanswered(TimeoutError):
    """scsynth did not answer in time (while it starts, or a scsynth whose JACK server is stuck)."""


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[str, list[asyncio.Future[OscMessage]]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            message = OscMessage(data)
        except Exception:
            return  # scsynth sends well-formed replies; anything else is not for us
        for future in self.waiting.pop(message.address, []):
            if not future.done():
                future.set_result(message)

    def error_received(self, exc: Exception) -> None:  # scsynth not listening (yet): ignore
        pass


@dataclass
class Health:
    up: bool = False
    restarts: int = 0
    late: int = 0  # bundles scsynth reported late (it says so only on its stdout)
    failures: int = 0  # commands scsynth refused (FAILURE IN SERVER, e.g. a duplicate node ID)
    ugens: int = 0
    synths: int = 0
    synthdefs: int = 0  # loaded
    cpu_avg: float = 0.0
    cpu_peak: float = 0.0
    last_error: str = ""
    unanswered: int = 0  # status polls in a row it did not answer
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answering(self) -> bool:
        return self.up and self.unanswered < UNANSWERED


def forget_killed_jack_servers(registry: Path = JACK_REGISTRY) -> int:
    """Free the entries that killed JACK servers left in jack2's registry; how many were freed.

    jack2 takes back a dead server's entry only for a new server of the same name, and refuses a
    ninth name ("Too many servers already active"): a machine whose JACK servers were killed
    (a node agent killed with its server) would soon start none. Only entries whose process is
    gone are cleared, as jack2 itself clears them.
    """
    try:
        fd = os.open(registry, os.O_RDWR)
    except OSError:
        return 0  # no JACK server has run here yet
    try:
        with mmap.mmap(fd, 0) as shm:
            magic, _, _, _, header, _ = JACK_REGISTRY_HEADER.unpack_from(shm)
            entry = (header - JACK_REGISTRY_HEADER.size) // JACK_MAX_SERVERS
            if magic != JACK_MAGIC or entry < 8:
                return 0  # not a layout this knows: leave it to jack2
            freed = 0
            for at in range(JACK_REGISTRY_HEADER.size, header, entry):
                (pid,) = struct.unpack_from("<i", shm, at)
                if pid > 0 and not _alive(pid):
                    shm[at : at + entry] = bytes(entry)
                    freed += 1
            return freed
    except (OSError, ValueError, struct.error):
        return 0
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def start_jack(
    name: str, *, rate: int = 48000, period: int = 128, channels: int = 2
) -> asyncio.subprocess.Process:
    """A JACK server named ``name`` with the dummy driver, once it answers (stop it with terminate()).

    A server of the same name that is still going away (the previous agent's, killed with it) makes
    a new one exit at once; it is started again until the name is free.
    """
    if freed := await asyncio.to_thread(forget_killed_jack_servers):
        log.info("freed %d entries of killed JACK servers in %s", freed, JACK_REGISTRY)
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"}
    deadline = time.monotonic() + 20
    jackd = None
    while time.monotonic() < deadline:
        if jackd is None or jackd.returncode is not None:
            jackd = await asyncio.create_subprocess_exec(
                "jackd", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period),
                "-C", str(channels), "-P", str(channels),
                env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        await asyncio.sleep(0.1)
        if jackd.returncode is not None:
            continue  # the name is taken: ours exited
        # The server named by the environment: `jack_lsp -s NAME` aborts for names of some lengths
        # (24 and 40 characters, jack2 1.9.21), as if no server were there.
        probe = await asyncio.create_subprocess_exec(
            "jack_lsp", env=jack_env(name), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        # Ours must still be running once the name answers: otherwise it was the old server.
        if await probe.wait() == 0 and jackd.returncode is None:
            return jackd
    if jackd is not None and jackd.returncode is None:
        jackd.kill()
    raise RuntimeError(f"JACK server {name} did not start")


async def end_stuck_jack(server: str) -> bool:
    """End JACK server ``server`` if it no longer runs its clients (a stuck jackd never recovers:
    its log says 'Process error' every cycle), so that its unit starts it again; whether it did."""
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conductor.node.jackio", "runs", server,
        env=jack_env(server), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if await asyncio.wait_for(check.wait(), RUNS_WITHIN + 2) == 0:
            return False
    except TimeoutError:  # it could not even join
        check.kill()
        await check.wait()
    ended = [pid for pid in jackd_pids(server) if _kill(pid)]
    log.error("JACK server %s does not run its clients: ended it (%s)", server, ended)
    return bool(ended)


def jackd_pids(server: str, proc: Path = Path("/proc")) -> list[int]:
    """The jackd processes of JACK server ``server`` (by their command lines)."""
    pids = []
    for entry in proc.glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = entry.read_bytes().split(b"\0")
            named = any(a in (b"-n", b"--name") and b == server.encode() for a, b in itertools.pairwise(argv))
            if argv and Path(argv[0].decode(errors="replace")).name == "jackd" and named:
                pids.append(int(entry.parent.name))
    return pids


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def jack_env(server: str) -> dict[str, str]:
    """The environment of a program that should use JACK server ``server``. One that cannot find
    it fails and is started again: libjack would otherwise start a server of its own, with the
    wrong settings, which outlives the program and holds on to its output."""
    env = {"JACK_NO_AUDIO_RESERVATION": "1", "JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1"}
    return {**os.environ, **env}


def forget_shared_memory(port: int) -> None:
    """Remove the shared memory an ended scsynth on ``port`` leaves (8 MiB, whether it was killed
    or terminated), as a machine whose ports change (a test suite, a new plan) would fill with them."""
    with contextlib.suppress(FileNotFoundError):
        (SHARED_MEMORY / f"SuperColliderServer_{port}").unlink()


async def _end(proc: asyncio.subprocess.Process | None) -> None:
    if proc and proc.returncode is None:
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(proc.wait(), 10)


class Scsynth:
    """A supervised scsynth on UDP ``port``, on JACK server ``jack_server``, with ``channels``
    outputs and one more, its last, for the node's timing mark (``placement.py``)."""

    def __init__(
        self,
        port: int,
        jack_server: str,
        client_name: str,
        *,
        synth_dir: Path = SYNTHS,
        channels: int = 2,
        inputs: int = 8,  # room for audio from other sites (JackTrip links patch into in_3 and up)
    ):
        self.port = port
        self.jack_server = jack_server
        self.client_name = client_name
        self.synth_dir = synth_dir
        self.channels = channels
        self.inputs = inputs
        self.output_latency = 0.0  # seconds scsynth plays early for the sound card (it prints it)
        self.health = Health()
        self.env = jack_env(jack_server)
        self._proc: asyncio.subprocess.Process | None = None
        self._replies = _Replies()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # What the performance needs from any scsynth, sent again to a restarted one:
        self.groups: list[int] = []  # a group per part, inside the default group
        self.controls: dict[tuple[int, str], list[Any]] = {}  # the latest /n_set of each group's control
        self._made: set[int] = set()  # groups created on the running scsynth

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self._replies, local_addr=("127.0.0.1", 0))
        await self._start_scsynth()
        self._tasks = [asyncio.create_task(self._supervise()), asyncio.create_task(self._poll_status())]

    async def _start_scsynth(self) -> None:
        self.output_latency = 0.0
        self._proc = await asyncio.create_subprocess_exec(
            "scsynth",
            "-u",
            str(self.port),
            "-i",
            str(self.inputs),
            "-o",
            str(self.channels + 1),
            "-R",
            "0",
            "-l",
            "8",
            "-H",
            f"{self.jack_server}:{self.client_name}",
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self._reader = asyncio.create_task(self._read_output(self._proc))
        await self.ask("/status", [], "/status.reply", within=10)
        await self.ask("/d_loadDir", [str(self.synth_dir)], "/done", within=10)
        self._made = set()
        self.make_groups(self.groups)
        for args in self.controls.values():
            self.send(osc_message("/n_set", args))
        await self.ask("/sync", [1], "/synced", within=5)
        self.health.up, self.health.unanswered = True, 0
        log.info("scsynth up on port %d with the synths of %s", self.port, self.synth_dir)

    @property
    def mark_output(self) -> str:
        """The JACK port of the timing mark: scsynth's last output."""
        return f"{self.client_name}:out_{self.channels + 1}"

    def make_groups(self, groups: list[int]) -> None:
        """Create the default group and these part groups on this scsynth, once each."""
        self.groups = sorted(set(self.groups) | set(groups))
        for group, action, target in [(DEFAULT_GROUP, 0, 0), *((g, 1, DEFAULT_GROUP) for g in self.groups)]:
            if group not in self._made:
                self.send(osc_message("/g_new", [group, action, target]))
                self._made.add(group)

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if text.startswith("late "):
                self.health.late += 1
            elif m := OUTPUT_LATENCY.search(text):
                self.output_latency = float(m[1]) / 1000
            elif "error" in text.lower() or "fail" in text.lower():
                self.health.failures += text.startswith("FAILURE")
                self.health.last_error = text[:200]

    async def _supervise(self) -> None:
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            forget_shared_memory(self.port)
            self.health.up = False
            self.health.restarts += 1
            self.health.last_error = f"scsynth exited ({code}); restarting"
            log.warning("scsynth exited with %s; restarting", code)
            while True:
                try:
                    await self._start_scsynth()
                    break
                except (TimeoutError, OSError) as e:
                    self.health.last_error = f"restart failed: {e}"
                    await asyncio.sleep(0.5)

    async def _poll_status(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.health.up:
                continue
            try:
                reply = await self.ask("/status", [], "/status.reply", within=0.5, tries=1)
            except TimeoutError:
                self.health.unanswered += 1
                if self.health.unanswered == UNANSWERED:  # it runs, but nothing it is sent is done
                    node = self.client_name.removeprefix("scsynth-")
                    self.health.last_error = (
                        f"scsynth does not answer: {STUCK.format(server=self.jack_server, node=node)}"
                    )
                    log.error("%s", self.health.last_error)
                continue
            if self.health.unanswered >= UNANSWERED:
                log.warning("scsynth answers again")
            self.health.unanswered = 0
            _, ugens, synths, _groups, defs, avg, peak = reply.params[:7]
            self.health.ugens, self.health.synths, self.health.synthdefs = ugens, synths, defs
            self.health.cpu_avg, self.health.cpu_peak = round(avg, 2), round(peak, 2)

    def send(self, dgram: bytes, port: int | None = None) -> None:
        assert self._transport is not None
        self._transport.sendto(dgram, ("127.0.0.1", port or self.port))

    async def ask(self, address: str, args: list[Any], reply: str, *, within: float, tries: int = 20) -> OscMessage:
        """Send a command and wait for its reply, retrying while scsynth starts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for _ in range(tries):
            future: asyncio.Future[OscMessage] = loop.create_future()
            self._replies.waiting.setdefault(reply, []).append(future)
            self.send(osc_message(address, args))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min(0.5, deadline - loop.time()))):
                    return await future
            if loop.time() >= deadline:
                break
        raise ScsynthUnanswered(f"no {reply} from scsynth on port {self.port} within {within:g} s")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await _end(self._proc)
        if self._proc and self._proc.returncode is not None:
            forget_shared_memory(self.port)
        if self._transport:
            self._transport.close()
