"""A concert across sites, set up from its concert file: what runs where, and each machine's files.

The concert file's ``deployment`` section names the machines: the conductor's, and the node
agents' at each site. Together with the ``audio`` section it says every process, every port to
open, and every systemd unit; ``tutti deploy plan`` prints them and ``tutti deploy render`` writes
one folder per machine.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .jacktrip import client_name

if TYPE_CHECKING:
    from .concert import Concert

Port = Annotated[int, Field(ge=1, le=65535)]
HUB_UDP_BASE = 61002  # jacktrip's hub gives its clients UDP ports from here up, one each
INSTALL = "/opt/tutti"  # where setup.sh installed Tutti on each machine
CONFIG = "/etc/tutti"  # where each machine keeps its concert files and tokens
JOURNAL = "/var/lib/tutti/journal.jsonl"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeMachine(_Strict):
    name: StrictStr  # the node's name (cues may target node:NAME)
    host: StrictStr  # the machine's address
    parts: list[StrictStr] = []  # default: the site's parts
    port: Port = 57110  # scsynth's UDP port


class SiteMachines(_Strict):
    nodes: list[NodeMachine] = []


class Deployment(_Strict):
    conductor: StrictStr  # the address of the machine that runs the conductor
    url: StrictStr | None = None  # how nodes and browsers reach it (default: from that address and port)
    sites: dict[StrictStr, SiteMachines] = {}


@dataclass
class Machine:
    host: str
    runs: list[str] = field(default_factory=list)  # human-readable lines
    ports: list[tuple[str, int, str]] = field(default_factory=list)  # (tcp|udp, port, what for)
    units: dict[str, str] = field(default_factory=dict)  # file name -> systemd unit


def conductor_url(concert: Concert, deployment: Deployment) -> str:
    if deployment.url:
        return deployment.url
    scheme = "https" if concert.settings.tls else "http"
    host = f"[{deployment.conductor}]" if ":" in deployment.conductor else deployment.conductor
    return f"{scheme}://{host}:{concert.settings.port}"


def _unit(description: str, command: str, environment: str) -> str:
    return (
        f"[Unit]\nDescription={description}\nAfter=network-online.target\nWants=network-online.target\n\n"
        f"[Service]\nExecStart={command}\nEnvironmentFile={CONFIG}/{environment}\nRestart=always\nRestartSec=1\n"
        "LimitRTPRIO=95\nLimitMEMLOCK=infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def plan(concert: Concert) -> dict[str, Machine]:
    """Every machine of the concert, what it runs and which ports it must open."""
    deployment = concert.settings.deployment
    if deployment is None:
        raise ValueError(f"{concert.path}: no 'deployment' section: nothing says which machine runs what")
    machines: dict[str, Machine] = {}
    url = conductor_url(concert, deployment)
    head = machines.setdefault(deployment.conductor, Machine(deployment.conductor))
    head.runs.append(f"conductor at {url}")
    head.ports.append(("tcp", concert.settings.port, "conductor: HTTP and Socket.IO"))
    osc = concert.settings.osc
    if osc is not None:
        head.ports.append(("udp", osc.udp_port, "OSC controllers"))
        if osc.tcp_port:
            head.ports.append(("tcp", osc.tcp_port, "OSC controllers (SLIP)"))
    head.units["tutti-conductor.service"] = _unit(
        f"Tutti conductor: {concert.title}", f"{INSTALL}/.venv/bin/tutti serve {CONFIG}/concert.yaml", "tokens.env"
    )
    audio = concert.settings.audio
    for site, machines_at in deployment.sites.items():
        for node in machines_at.nodes:
            machine = machines.setdefault(node.host, Machine(node.host))
            parts = "".join(f" --part {p}" for p in node.parts)
            command = (
                f"{INSTALL}/.venv/bin/tutti node --url {url} --name {node.name} --site {site}{parts} --port {node.port}"
            )
            machine.runs.append(f"node {node.name} (site {site}) with scsynth on UDP {node.port} (local)")
            machine.units[f"tutti-node-{node.name}.service"] = _unit(f"Tutti node {node.name}", command, "node.env")
            if audio is None:
                continue
            first = machines_at.nodes[0].name
            for end in audio.ends():
                if end.site != site or (end.node or first) != node.name:
                    continue
                if end is audio.hub:
                    machine.runs.append(f"JackTrip hub on port {audio.hub.port}")
                    machine.ports.append(("tcp", audio.hub.port, "JackTrip hub: clients join"))
                    for i, link in enumerate(audio.links):
                        machine.ports.append(("udp", HUB_UDP_BASE + i, f"JackTrip hub: audio with {link.site}"))
                else:
                    link = next((x for x in audio.links if x is end), None)
                    if link is not None:
                        machine.runs.append(f"JackTrip link to the hub as {client_name(link)}")
                        machine.ports.append(("udp", link.bind_port, "JackTrip: audio from the hub"))
                    for pair in audio.pairs:
                        if end is pair.server:
                            machine.runs.append(f"JackTrip pair with {pair.client.site} (server)")
                            machine.ports.append(("udp", pair.server.port, f"JackTrip: audio from {pair.client.site}"))
                        if end is pair.client:
                            machine.runs.append(f"JackTrip pair with {pair.server.site} (client)")
                            machine.ports.append(
                                ("udp", pair.client.bind_port, f"JackTrip: audio from {pair.server.site}")
                            )
    return machines


def describe(machines: dict[str, Machine]) -> str:
    lines = []
    for host, machine in machines.items():
        lines.append(f"{host}")
        lines += [f"  runs  {what}" for what in machine.runs]
        lines += [f"  open  {proto}/{port}  {why}" for proto, port, why in machine.ports]
    return "\n".join(lines)


def render(concert: Concert, out: Path) -> list[Path]:
    """One folder per machine: its systemd units, and the concert (with the score) for the conductor."""
    written = []
    for host, machine in plan(concert).items():
        folder = out / host.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in machine.units.items():
            (folder / name).write_text(text)
            written.append(folder / name)
        (folder / "PLAN.txt").write_text(describe({host: machine}) + "\n")
        written.append(folder / "PLAN.txt")
        if "tutti-conductor.service" in machine.units:
            written += _conductor_files(concert, folder)
    return written


def _conductor_files(concert: Concert, folder: Path) -> list[Path]:
    """The concert file for /etc/tutti, with the score (and its sketches) beside it."""
    written = []
    score = concert.score
    for name in [score.path.name, *score.files()]:
        target = folder / "score" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(score.folder / name, target)
        written.append(target)
    settings = concert.settings.model_dump(exclude_none=True, exclude={"deployment"})
    settings.update(score=f"score/{score.path.name}", journal=JOURNAL)
    (folder / "concert.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return [*written, folder / "concert.yaml"]
