"""``tutti deploy rehearse``: a concert's deployment brought up on this machine, one network namespace a host.

The concert is rendered as ``tutti deploy render`` would; each machine of the deployment becomes a
namespace with the file's own addresses, all on one bridge, or, when the concert file has a
``rehearsal`` section, joined through a router in this process that delays each pair of hosts as
their campuses' delays say (``conductor/tools/wan.py``); and each runs what its rendered units run:
the ``ExecStart`` of each ``tutti-*.service`` with its environment file, and the hub's compose
service's command. What a real machine has and this one lacks is stood in for, and said: Tutti
runs from this checkout rather than ``/opt/tutti``; each machine's ``/etc/tutti`` is its rendered
folder; tokens are made up for the rehearsal; a throwaway CA signs the conductor's certificate by
the plan's own commands; a sound card's JACK runs the dummy driver; and JACK server names carry the
rehearsal's tag, since namespaces share one filesystem (and JACK's sockets are files). Units are
restarted as systemd would (``Restart=``, ``RestartSec=``), and everything in a unit's process
group is ended when its main process exits. Every process and namespace is removed at the end.
Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conductor.core.concert import Concert
from conductor.tools import netns
from conductor.tools.check import jack_name
from conductor.tools.deploy import CONFIG, INSTALL, _certificate, _env_names, conductor_url, jack_server, render
from conductor.tools.wan import Lag, Router

log = logging.getLogger("tutti.rehearse")
UP_WITHIN = 60.0  # seconds for each host's first process to answer
STOP_WITHIN = 10.0  # seconds a unit has to end when asked, before it is killed


@dataclass
class Unit:
    """A process the rehearsal keeps running as a machine's service manager would."""

    host: str  # the machine's address
    name: str  # the unit's file name, or ``compose:SERVICE``
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    restart: bool = True
    restart_sec: float = 1.0
    jack: str | None = None  # the JACK server this unit starts, once it answers
    proc: asyncio.subprocess.Process | None = None
    starts: list[float] = field(default_factory=list)  # time.monotonic() of each start


def _unit_fields(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";", "[")):
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            env[key.strip()] = value.strip()
    return env


class Rehearsal:
    """The deployment of ``concert``, rendered into ``folder`` and run in namespaces named ``tag-…``."""

    def __init__(self, concert: Concert, folder: Path, tag: str):
        deployment = concert.settings.deployment
        if deployment is None:
            raise ValueError(f"{concert.path}: no 'deployment' section: nothing to rehearse")
        self.concert = concert
        self.deployment = deployment
        self.folder = folder
        self.tag = tag
        self.url = conductor_url(concert, deployment)
        self.labels = self._labels()  # host -> a short name for its namespace
        self.hosts: dict[str, netns.Host] = {}  # host address -> its namespaces, once made
        self.jack_servers = {server: jack_name(server, tag) for server in self._jack_names()}
        self.units: list[Unit] = []
        self.tokens: dict[str, str] = {}  # environment variable -> the rehearsal's token
        self.ca = folder / "rehearsal-ca.pem"
        self.console_url = ""  # the conductor, offered on this machine's loopback
        self.router: Router | None = None  # with a rehearsal section: what carries the hosts' packets
        self._tasks: list[asyncio.Task[None]] = []

    def _labels(self) -> dict[str, str]:
        d = self.deployment
        labels = {d.conductor: "conductor"}
        if d.hub is not None:
            labels.setdefault(d.hub.host, d.hub.name)
        for machines in d.sites.values():
            for node in machines.nodes:
                labels.setdefault(node.host, node.name)
        return labels

    def lags(self) -> dict[tuple[str, str], Lag]:
        """Each pair of hosts' delay one way (by their namespaces' short names), from the concert
        file's ``rehearsal`` section; empty without one."""
        settings = self.concert.settings.rehearsal
        if settings is None or not settings.delays:
            return {}
        site = {node.host: name for name, machines in self.deployment.sites.items() for node in machines.nodes}
        lags = {}
        for a, label_a in self.labels.items():
            for b, label_b in self.labels.items():
                if a != b:
                    delay, jitter = settings.pair(site.get(a), site.get(b))
                    lags[label_a, label_b] = Lag(delay / 1000, jitter / 1000)
        return lags

    def delay_table(self) -> list[str]:
        """The lags as a table of ms, from the row's host to the column's ("+0..J": jitter)."""
        lags = self.lags()
        names = list(self.labels.values())
        width = max(len(n) for n in names) + 2
        rows = ["from \\ to".ljust(width) + "".join(n.rjust(width) for n in names)]
        for a in names:
            cells = []
            for b in names:
                lag = lags.get((a, b), Lag())
                cell = "-" if a == b else f"{lag.delay * 1000:g}" + (f"+0..{lag.jitter * 1000:g}" if lag.jitter else "")
                cells.append(cell.rjust(width))
            rows.append(a.ljust(width) + "".join(cells))
        return rows

    def _jack_names(self) -> list[str]:
        names = [node.name for machines in self.deployment.sites.values() for node in machines.nodes]
        return [jack_server(name) for name in names + ([self.deployment.hub.name] if self.deployment.hub else [])]

    # --- the machines' files ------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Render the concert, and make what each machine's PLAN.txt asks a technician for."""
        await asyncio.to_thread(render, self.concert, self.folder)  # it copies Tutti for the hub's image
        roles = ("conductor", "performer", "audience", "node")
        self.tokens = {name: secrets.token_urlsafe(16) for name in _env_names(self.concert, roles)}
        node_spec = self.concert.settings.tokens.node or ""
        node_token = self.tokens.get(node_spec.removeprefix("env:"), node_spec)
        await self._certificates()
        for host in self.labels:
            machine = self.machine_folder(host)
            (machine / "node.env").write_text(f"TUTTI_NODE_TOKEN={node_token}\n")
            if (machine / "ca.pem").exists():
                (machine / "ca.pem").write_bytes(self.ca.read_bytes())
        conductor = self.machine_folder(self.deployment.conductor)
        (conductor / "tokens.env").write_text("".join(f"{k}={v}\n" for k, v in self.tokens.items()))
        settings = yaml.safe_load((conductor / "concert.yaml").read_text())
        settings["journal"] = str(conductor / "journal.jsonl")  # /var/lib/tutti on a real machine
        (conductor / "concert.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        self.units = [unit for host in self.labels for unit in self._units(host)]

    def machine_folder(self, host: str) -> Path:
        return self.folder / host.replace(":", "_")

    def token(self, role: str) -> str:
        spec = getattr(self.concert.settings.tokens, role) or ""
        return self.tokens.get(spec.removeprefix("env:"), spec) if isinstance(spec, str) else ""

    async def _certificates(self) -> None:
        """A throwaway CA in place of the concert's, and the conductor's certificate made with the
        commands of its PLAN.txt."""
        work = self.folder / "ca"
        work.mkdir(exist_ok=True)
        ca = Path(self.deployment.ca or "ca.pem").name
        make_ca = (
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca-key.pem"
            f' -out {ca} -subj "/CN=Tutti rehearsal CA" -days 2'
        )
        target = self.machine_folder(self.deployment.conductor)
        commands = [make_ca, *(c.replace(CONFIG, str(target)) for c in _certificate(self.deployment.conductor, ca))]
        for command in commands:
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", command, cwd=work, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )  # fmt: skip
            _, err = await proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"making the rehearsal's certificates: {command}: {err.decode().strip()}")
        self.ca.write_bytes((work / ca).read_bytes())

    def _argv(self, host: str, command: list[str]) -> list[str]:
        """A rendered command line as this machine runs it in the rehearsal."""
        where = str(self.machine_folder(host))
        argv = []
        for arg in command:
            if arg == f"{INSTALL}/.venv/bin/tutti":
                argv += [sys.executable, "-m", "conductor"]
            elif arg in self.jack_servers:
                argv.append(self.jack_servers[arg])
            else:
                argv.append(arg.replace(CONFIG, where))
        return argv

    def _units(self, host: str) -> list[Unit]:
        folder = self.machine_folder(host)
        units = []
        for path in sorted(folder.glob("tutti-*.service")):
            fields = _unit_fields(path.read_text())
            argv = self._argv(host, shlex.split(fields["ExecStart"][0]))
            env = {}
            for line in fields.get("Environment", []):
                key, _, value = line.partition("=")
                env[key] = value
            for name in fields.get("EnvironmentFile", []):
                env.update(_env_file(Path(self._argv(host, [name])[0])))
            jack = None
            if Path(argv[0]).name == "jackd":
                argv, jack = self._dummy_jack(argv)
            unit = Unit(host, path.name, argv, env, folder, fields.get("Restart", ["no"])[0] != "no")
            unit.restart_sec = float(fields.get("RestartSec", ["0.1"])[0])
            unit.jack = jack
            units.append(unit)
        compose = folder / "compose.yaml"
        if compose.exists():
            for name, service in yaml.safe_load(compose.read_text())["services"].items():
                argv = self._argv(host, [f"{INSTALL}/.venv/bin/tutti", *service["command"]])  # the image's ENTRYPOINT
                env = {}
                for env_file in service.get("env_file", []):
                    env.update(_env_file(Path(self._argv(host, [env_file])[0])))
                jack = argv[argv.index("--jack-server") + 1] if "--jack-server" in argv else None
                unit = Unit(host, f"compose:{name}", argv, env, folder, service.get("restart", "no") != "no")
                unit.jack = jack
                units.append(unit)
        return units

    def _dummy_jack(self, argv: list[str]) -> tuple[list[str], str]:
        """jackd on the dummy driver at the unit's rate and period, in place of the sound card."""
        server = argv[argv.index("-n") + 1]
        driver = argv.index("-d")
        options = dict(zip(argv[driver + 2 :: 2], argv[driver + 3 :: 2], strict=False))
        rate, period = options.get("-r", "48000"), options.get("-p", "128")
        return ["jackd", "-n", server, "-d", "dummy", "-r", rate, "-p", period, "-C", "2", "-P", "2"], server

    # --- running ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Rehearsal]:
        """Bring every host up (the conductor, then the hub, then each site: JACK servers one at a
        time, as they must start); remove everything at the end, also on failure or cancellation."""
        await self.prepare()
        addresses = {self.labels[h]: [h] for h in self.labels}
        async with contextlib.AsyncExitStack() as stack:
            if lags := self.lags():
                self.router = Router(lags)
                made = await stack.enter_async_context(netns.wan(self.tag, addresses, self.router))
            else:
                made = await stack.enter_async_context(netns.lan(self.tag, addresses))
            self.hosts = {h: made[self.labels[h]] for h in self.labels}
            stack.push_async_callback(self._stop)
            port = self.concert.settings.port
            conductor = self.deployment.conductor
            for unit in self.units_of(conductor):
                self._start(unit)
            await self._until(lambda: self._answers(conductor, port), f"the conductor on [{conductor}]:{port}")
            for unit in sorted(self.units, key=lambda u: u.jack is None):  # what starts JACK first
                if unit.host == conductor:
                    continue
                self._start(unit)
                if unit.jack:
                    server = unit.jack
                    await self._until(lambda s=server, h=unit.host: self._jack_up(h, s), f"JACK server {server}")
            forward = netns.Forward(self.hosts[conductor].netns, conductor, port)
            await forward.start()
            stack.push_async_callback(forward.close)
            scheme = self.url.split(":", 1)[0]
            self.console_url = f"{scheme}://127.0.0.1:{forward.port}"
            yield self

    def units_of(self, host: str) -> list[Unit]:
        return [u for u in self.units if u.host == host]

    def _start(self, unit: Unit) -> None:
        self._tasks.append(asyncio.create_task(self._keep(unit)))

    async def _keep(self, unit: Unit) -> None:
        """Run the unit; when its main process exits, end the rest of it and start it again after
        ``RestartSec`` if its policy says so (systemd's ``Restart=always``)."""
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        while True:
            with (logs / f"{self.labels[unit.host]}-{unit.name.replace(':', '-')}.log").open("ab") as out:
                unit.proc = await asyncio.create_subprocess_exec(
                    *self.hosts[unit.host].command(*unit.argv), cwd=unit.cwd,
                    env={**os.environ, **unit.env}, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            unit.starts.append(time.monotonic())
            code = await unit.proc.wait()
            _signal_group(unit.proc.pid, signal.SIGKILL)
            if not unit.restart:
                return
            log.warning("%s on %s exited (%s): restarting in %g s", unit.name, unit.host, code, unit.restart_sec)
            await asyncio.sleep(unit.restart_sec)

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [u.proc for u in self.units if u.proc and u.proc.returncode is None]
        for proc in running:
            _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_WITHIN)
        for proc in running:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + UP_WITHIN
        while not await condition():
            failed = [u for u in self.units if u.proc and u.proc.returncode is not None and not u.restart]
            if failed or time.monotonic() > deadline:
                logs = self.folder / "logs"
                raise RuntimeError(f"{what} did not come up within {UP_WITHIN:g} s: see the logs in {logs}")
            await asyncio.sleep(0.1)

    async def _answers(self, host: str, port: int) -> bool:
        try:
            _, writer = await netns.connect_in(self.hosts[host].netns, host, port)
        except OSError:
            return False
        writer.close()
        return True

    async def _jack_up(self, host: str, server: str) -> bool:
        probe = await asyncio.create_subprocess_exec(
            *self.hosts[host].command("jack_lsp", "-s", server),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await probe.wait() == 0

    def check_command(self, host: str) -> list[str]:
        """``tutti deploy check`` as that machine runs it in the rehearsal."""
        return self.hosts[host].command(
            sys.executable, "-m", "conductor", "deploy", "check", str(self.concert.path.resolve()),
            "--ca", str(self.ca), "--rehearsal", self.tag,
        )  # fmt: skip


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def rehearse(concert: Concert, folder: Path, tag: str, stop: asyncio.Event) -> int:
    """The CLI: bring the concert up, say where to look, and take it all down on Ctrl-C (also while
    it is coming up)."""
    rehearsal = Rehearsal(concert, folder, tag)
    up = asyncio.Event()
    if rehearsal.lags():
        print("one-way delays (ms) from each host to each other, from the concert file's rehearsal section:")
        for row in rehearsal.delay_table():
            print(f"  {row}")
    else:
        print("no delays in the concert file (its rehearsal section): every host on one bridge, none between them")

    async def session() -> None:
        async with rehearsal.run():
            up.set()
            print(f"rehearsing {concert.title}: {len(rehearsal.hosts)} hosts up, files and logs in {folder}")
            for address, host in rehearsal.hosts.items():
                units = ", ".join(u.name for u in rehearsal.units_of(address))
                print(f"  {host.netns:<24} {address:<20} {units}")
            print(f"console: {rehearsal.console_url}/console (conductor token {rehearsal.token('conductor')})")
            print(f"check a host: {shlex.join(rehearsal.check_command(rehearsal.deployment.conductor))}")
            print("Ctrl-C ends the rehearsal and removes every namespace and process it made.", flush=True)
            await stop.wait()

    running = asyncio.create_task(session())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not up.is_set():
        running.cancel()  # still coming up: it takes down what it made so far
    stopped.cancel()
    await asyncio.gather(stopped, return_exceptions=True)
    with contextlib.suppress(asyncio.CancelledError):
        await running
    if rehearsal.router and (dropped := rehearsal.router.dropped()):
        print(f"packets the rehearsal's network dropped: {dropped}")
    return 0
