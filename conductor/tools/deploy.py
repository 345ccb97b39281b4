"""A concert across sites, set up from its concert file: what runs where, and each machine's files.

The concert file's ``deployment`` section names the machines: the conductor's, the node agents'
at each site, and optionally a server that runs the JackTrip hub in a container. Together with
the ``audio`` section it says every process, every port to open, every systemd unit and the hub's
compose file; ``tutti deploy plan`` prints them and ``tutti deploy render`` writes one folder per
machine.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from conductor.core.audio import client_name, hub_command
from conductor.core.deployment import Deployment

if TYPE_CHECKING:
    from conductor.core.audio import AudioSettings
    from conductor.core.concert import Concert

HUB_UDP_BASE = 61002  # jacktrip's hub gives its clients UDP ports from here up, one each
INSTALL = "/opt/tutti"  # where setup.sh installed Tutti on each machine
CONFIG = "/etc/tutti"  # where each machine keeps its concert files and tokens
JOURNAL = "/var/lib/tutti/journal.jsonl"
SOURCE = Path(__file__).resolve().parents[2]  # what the hub's image installs: this Tutti
HUB_IMAGE_FILES = ("pyproject.toml", "README.md", "conductor", "clients", "sc_synths")
DOCKERFILE = f"""\
# The JackTrip hub's image: JACK (dummy driver: a hub needs no sound card), jacktrip and Tutti.
FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends jackd2 jacktrip python3 python3-venv \\
 && rm -rf /var/lib/apt/lists/*
COPY tutti {INSTALL}
RUN python3 -m venv {INSTALL}/.venv && {INSTALL}/.venv/bin/pip install --no-cache-dir {INSTALL}
ENTRYPOINT ["{INSTALL}/.venv/bin/tutti"]
"""


@dataclass
class Machine:
    host: str
    runs: list[str] = field(default_factory=list)  # human-readable lines
    ports: list[tuple[str, int, str]] = field(default_factory=list)  # (tcp|udp, port, what for)
    units: dict[str, str] = field(default_factory=dict)  # file name -> systemd unit
    files: dict[str, str] = field(default_factory=dict)  # other files to write there: name -> text


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
        # Every client, controller and cue channel is a file descriptor; 1024 is soon reached.
        "LimitRTPRIO=95\nLimitMEMLOCK=infinity\nLimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def plan(concert: Concert) -> dict[str, Machine]:
    """Every machine of the concert, what it runs and which ports it must open."""
    deployment = concert.settings.deployment
    if deployment is None:
        raise ValueError(f"{concert.path}: no 'deployment' section: nothing says which machine runs what")
    machines: dict[str, Machine] = {}
    url = conductor_url(concert, deployment)
    # Nodes trust the concert's CA: a copy of it in each node machine's CONFIG.
    ca = (concert.path.parent / deployment.ca).read_text() if deployment.ca else None
    trust = ["--ca", f"{CONFIG}/ca.pem"] if ca else []
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
    if deployment.hub is not None and audio is not None and audio.hub is not None:
        server = machines.setdefault(deployment.hub.host, Machine(deployment.hub.host))
        agent = ["node", "--no-synth", "--url", url, "--name", deployment.hub.name, "--site", audio.hub.site, *trust]
        server.runs.append(f"JackTrip hub (site {audio.hub.site}) in a container: tutti {shlex.join(agent)}")
        _hub_ports(server, audio)
        compose = {
            "services": {
                "jacktrip-hub": {
                    "build": ".",
                    "image": "tutti-jacktrip-hub",
                    "command": agent,
                    "env_file": [f"{CONFIG}/node.env"],  # TUTTI_NODE_TOKEN
                    "network_mode": "host",  # the hub gives each client a UDP port of its own; IPv6 as is
                    "restart": "always",
                    "cap_add": ["SYS_NICE"],
                    "ulimits": {"rtprio": 95, "memlock": -1},
                    **({"volumes": [f"{CONFIG}/ca.pem:{CONFIG}/ca.pem:ro"]} if ca else {}),
                    # What its node agent runs, from audio.hub (it keeps it running, patched and measured):
                    "x-jacktrip": shlex.join(hub_command(audio, audio.hub)),
                }
            }
        }
        server.files["compose.yaml"] = yaml.safe_dump(compose, sort_keys=False)
        server.files["Dockerfile"] = DOCKERFILE
        if ca:
            server.files["ca.pem"] = ca
    for site, machines_at in deployment.sites.items():
        for node in machines_at.nodes:
            machine = machines.setdefault(node.host, Machine(node.host))
            parts = "".join(f" --part {p}" for p in node.parts)
            command = (
                f"{INSTALL}/.venv/bin/tutti node --url {url} --name {node.name} --site {site}{parts} --port {node.port}"
            ) + "".join(f" {x}" for x in trust)
            if ca:
                machine.files["ca.pem"] = ca
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
                    _hub_ports(machine, audio)
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


def _hub_ports(machine: Machine, audio: AudioSettings) -> None:
    assert audio.hub is not None
    machine.ports.append(("tcp", audio.hub.port, "JackTrip hub: clients join"))
    for i, link in enumerate(audio.links):
        machine.ports.append(("udp", HUB_UDP_BASE + i, f"JackTrip hub: audio with {link.site}"))


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
        for name, text in {**machine.units, **machine.files}.items():
            (folder / name).write_text(text)
            written.append(folder / name)
        if "compose.yaml" in machine.files:  # the image's build context: this Tutti
            image = folder / "tutti"
            image.mkdir(exist_ok=True)
            for name in HUB_IMAGE_FILES:
                if (SOURCE / name).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__")
                    shutil.copytree(SOURCE / name, image / name, dirs_exist_ok=True, ignore=ignore)
                else:
                    shutil.copy(SOURCE / name, image / name)
            written.append(image)
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
