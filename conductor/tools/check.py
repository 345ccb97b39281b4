"""``tutti deploy check CONCERT``: on one of the concert's machines, go or no-go, and what to fix.

It finds which of the deployment's hosts are this machine's addresses, and checks what they must
do: the conductor answers over the deployment's URL with a certificate the concert's CA signed;
each node's JACK server is up on its sound card, its scsynth answers on its local UDP port with
SynthDefs loaded, and the conductor sees it joined with its clock settled and its JackTrip ends
connected and measured (``conductor/core/preflight.py``, the rows the console shows); and every
port ``PLAN.txt`` lists for the machine is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from pythonosc.osc_message import OscMessage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conductor.core.concert import Concert
from conductor.core.osc import osc_message
from conductor.core.preflight import node_rows, scsynth_fix
from conductor.core.protocol import PreflightRow
from conductor.tools.deploy import CONFIG, Machine, conductor_url, jack_server, plan

ASK_WITHIN = 5.0  # seconds for the conductor, 1 for scsynth
TCP_LISTEN = "0A"


def jack_name(server: str, rehearsal: str | None) -> str:
    """A node's JACK server name; in a rehearsal it carries the rehearsal's tag (machines there
    share one filesystem, where JACK keeps its sockets)."""
    return f"{rehearsal}-{server.removeprefix('tutti-')}" if rehearsal else server


def is_local(address: str) -> bool:
    """Whether this machine (this network namespace) has the address."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def open_ports() -> set[tuple[str, int]]:
    """(tcp|udp, port) of every listening TCP socket and every bound UDP socket here."""
    found = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
                fields = line.split()
                if proto.startswith("tcp") and fields[3] != TCP_LISTEN:
                    continue
                found.add((proto[:3], int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def jack_device(server: str) -> str | None:
    """The driver device of the running jackd named ``server`` (``dummy`` for the dummy driver)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
            if Path(argv[0]).name != "jackd" or "-n" not in argv or argv[argv.index("-n") + 1] != server:
                continue
            driver = argv[argv.index("-d") + 1] if "-d" in argv else ""
            rest = argv[argv.index("-d") + 2 :]
            return rest[rest.index("-d") + 1] if driver == "alsa" and "-d" in rest else driver
    return None


async def jack_up(server: str) -> bool:
    probe = await asyncio.create_subprocess_exec(
        "jack_lsp", "-s", server, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await probe.wait() == 0


async def scsynth_status(port: int) -> list[Any] | None:
    """scsynth's /status.reply on 127.0.0.1 (its UDP socket is IPv4 only), or None."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[Any]] = loop.create_future()

    class Reply(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            with contextlib.suppress(Exception):
                message = OscMessage(data)
                if message.address == "/status.reply" and not answer.done():
                    answer.set_result(message.params)

    transport, _ = await loop.create_datagram_endpoint(Reply, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(osc_message("/status", []))
        return await asyncio.wait_for(answer, 1.0)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def conductor_status(url: str, ca: str | None) -> tuple[PreflightRow, dict[str, Any] | None]:
    context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    host = url.split("//", 1)[1].rsplit(":", 1)[0]
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ASK_WITHIN)) as http,
            http.get(f"{url}/api/status", ssl=context or False) as r,
        ):
            status = await r.json()
    except aiohttp.ClientSSLError as e:
        fix = f"make its certificate with the concert's CA ({ca or 'give it with --ca'}) as PLAN.txt says"
        return PreflightRow(what="conductor", go=False, detail=f"{url}: certificate refused: {e}", fix=fix), None
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        fix = f"start tutti-conductor.service on {host}, and open its port (PLAN.txt)"
        return PreflightRow(what="conductor", go=False, detail=f"{url}: {e or 'no answer'}", fix=fix), None
    secured = ", certificate verified" if context else " (plain HTTP: iPads will not keep the screen on)"
    return PreflightRow(what="conductor", go=True, detail=f"{url} answers{secured}"), status


async def machine_rows(
    concert: Concert, host: str, machine: Machine, status: dict[str, Any] | None, rehearsal: str | None
) -> list[PreflightRow]:
    deployment = concert.settings.deployment
    assert deployment is not None
    rows = []
    nodes = [(n.name, n.port, n.sound_card) for m in deployment.sites.values() for n in m.nodes if n.host == host]
    if deployment.hub is not None and deployment.hub.host == host:
        nodes.append((deployment.hub.name, None, "dummy"))
    clients = {c["name"]: c for c in (status or {}).get("clients", []) if c["role"] == "node"}
    for name, port, card in nodes:
        server = jack_name(jack_server(name), rehearsal)
        wanted = "dummy" if rehearsal else card or "dummy"
        device = jack_device(server)
        up = await jack_up(server)
        detail = f"{server} {'up' if up else 'not answering'}, device {device or '?'}"
        if rehearsal and card and card != "dummy":
            detail += f" (the rehearsal's dummy driver for {card})"
        go = up and device == wanted
        fix = "" if go else f"start tutti-jack-{name}.service (or the node's own JACK) on {wanted}"
        rows.append(PreflightRow(what=f"{name}: JACK", go=go, detail=detail, fix=fix))
        if port is not None:
            reply = await scsynth_status(port)
            defs = reply[4] if reply and len(reply) > 4 else 0
            go = reply is not None and defs > 0
            detail = f"127.0.0.1:{port} " + (f"answers, {defs} SynthDefs loaded" if reply else "does not answer")
            fix = "" if go else scsynth_fix(name)
            rows.append(PreflightRow(what=f"{name}: scsynth", go=go, detail=detail, fix=fix))
        client = clients.get(name)
        if client is None:
            fix = f"start tutti-node-{name}.service here; check its token in {CONFIG}/node.env"
            rows.append(PreflightRow(what=f"{name}: joined the conductor", go=False, detail="not listed", fix=fix))
            continue
        rows += [row for row in node_rows(client) if not row.what.endswith(": scsynth")]  # probed here
    listening = open_ports()
    for proto, number, why in machine.ports:
        go = (proto, number) in listening
        fix = "" if go else f"{why}: start what serves it; `ufw allow {number}/{proto}`"
        what = f"port {proto}/{number}"
        rows.append(PreflightRow(what=what, go=go, detail=why + ("" if go else ": nothing listens"), fix=fix))
    for r in machine.ranges:
        open_here = sorted(n for p, n in listening if p == r.proto and r.first <= n <= r.last)
        go = len(open_here) >= r.held
        detail = f"{r.why}: {len(open_here)} of {r.held} open ({', '.join(map(str, open_here)) or 'none'})"
        fix = "" if go else f"wait for every site to join; `ufw allow {r.first}:{r.last}/{r.proto}`"
        rows.append(PreflightRow(what=f"ports {r.proto}/{r.first}-{r.last}", go=go, detail=detail, fix=fix))
    return rows


def table(rows: list[PreflightRow], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for column in ("", "check", "detail", "to fix"):
        out.add_column(column)
    for row in rows:
        mark = Text("GO", style="green") if row.go else Text("NO-GO", style="bold red")
        out.add_row(mark, row.what, row.detail, row.fix)
    return out


async def run(concert: Concert, ca: str | None, rehearsal: str | None, hosts: list[str] | None) -> int:
    deployment = concert.settings.deployment
    assert deployment is not None
    machines = plan(concert)
    here = hosts or [h for h in machines if is_local(h)]
    if not here:
        print(
            f"tutti deploy check: none of {', '.join(machines)} is an address of this machine:"
            " run it on a concert machine, or name one with --host"
        )
        return 1
    if ca is None:
        local = Path(CONFIG) / "ca.pem"
        ca = str(local) if local.exists() else str(concert.path.parent / deployment.ca) if deployment.ca else None
    url = conductor_url(concert, deployment)
    first, status = await conductor_status(url, ca)
    rows = [first]
    for host in here:
        rows += await machine_rows(concert, host, machines[host], status, rehearsal)
    Console(width=160).print(table(rows, f"{concert.title}: {', '.join(here)}"))
    failed = [row for row in rows if not row.go]
    if failed:
        print(f"NO-GO: {len(failed)} of {len(rows)} checks to fix (first: {failed[0].what})")
        return 1
    print(f"GO: all {len(rows)} checks pass on {', '.join(here)}")
    return 0
