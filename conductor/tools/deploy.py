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
from conductor.core.deployment import Deployment, NodeMachine

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


@dataclass(frozen=True)
class PortRange:
    """Ports handed out as peers come: ``held`` of ``first``..``last`` are open once all have come."""

    proto: str
    first: int
    last: int
    held: int
    why: str


@dataclass
class Machine:
    host: str
    runs: list[str] = field(default_factory=list)  # human-readable lines
    ports: list[tuple[str, int, str]] = field(default_factory=list)  # (tcp|udp, port, what for)
    ranges: list[PortRange] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # file name -> systemd unit
    files: dict[str, str] = field(default_factory=dict)  # other files to write there: name -> text


def conductor_url(concert: Concert, deployment: Deployment) -> str:
    if deployment.url:
        return deployment.url
    scheme = "https" if concert.settings.tls or deployment.ca else "http"  # a concert CA signs its certificate
    host = f"[{deployment.conductor}]" if ":" in deployment.conductor else deployment.conductor
    return f"{scheme}://{host}:{concert.settings.port}"


def _unit(description: str, command: str, environment: str) -> str:
    return (
        # Started again a second after it ends, for as long as it takes: systemd's own limit
        # (five starts in ten seconds) would leave a concert's machine silent after a bad minute.
        f"[Unit]\nDescription={description}\nAfter=network-online.target\nWants=network-online.target\n"
        "StartLimitIntervalSec=0\n\n"
        f"[Service]\nExecStart={command}\nEnvironmentFile={CONFIG}/{environment}\nRestart=always\nRestartSec=1\n"
        # Ahead of the machine's other programs: an event loop waiting for a CPU runs late (measured
        # with bench/continuous.py, where most of the conductor's lateness was that wait).
        "Nice=-10\n"
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
        agent = ["node", "--no-synth", "--url", url, "--name", deployment.hub.name, "--site", audio.hub.site]
        # Its own JACK server's name, like every node's: machines that share a filesystem keep apart.
        agent += ["--jack-server", jack_server(deployment.hub.name), *trust]
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
            jack = _sound_card(machine, node, audio)
            command = (
                f"{INSTALL}/.venv/bin/tutti node --url {url} --name {node.name} --site {site}{parts} --port {node.port}"
            ) + "".join(f" {x}" for x in [*trust, *jack])
            if ca:
                machine.files["ca.pem"] = ca
            machine.runs.append(f"node {node.name} (site {site}) with scsynth on UDP {node.port} (local)")
            unit = _unit(f"Tutti node {node.name}", command, "node.env")
            if jack:  # the node joins the sound card's JACK server, once it runs
                after = f"tutti-jack-{node.name}.service"
                unit = unit.replace(
                    "After=network-online.target\n", f"After=network-online.target {after}\nRequires={after}\n"
                )
            machine.units[f"tutti-node-{node.name}.service"] = unit
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


def _sound_card(machine: Machine, node: NodeMachine, audio: AudioSettings | None) -> list[str]:
    """A JACK server on the node's sound card (its own unit), and the node agent's options to use it."""
    own = ["--jack-server", jack_server(node.name)]  # the agent starts it (dummy driver)
    if node.sound_card is None:
        machine.runs.append(
            f"WARNING: no sound_card for {node.name}: JACK runs on the dummy driver and this node is SILENT"
            " (set deployment.sites.SITE.nodes[].sound_card, e.g. hw:1; `aplay -l` lists the cards)"
        )
        return own
    if node.sound_card == "dummy":
        machine.runs.append(f"JACK for {node.name} on the dummy driver (no sound card, as configured)")
        return own
    rate, period = (audio.sample_rate, audio.period) if audio else (48000, 128)
    server = jack_server(node.name)
    command = f"/usr/bin/jackd -R -n {server} -d alsa -d {node.sound_card} -r {rate} -p {period} -n 2"
    machine.runs.append(f"JACK server {server} on sound card {node.sound_card} ({rate} Hz, {period} frames)")
    unit = _unit(f"JACK on {node.sound_card} for {node.name}", command, "node.env")
    # No desktop session to hand the card over: JACK takes it without asking D-Bus.
    machine.units[f"tutti-jack-{node.name}.service"] = unit.replace(
        "[Service]\n", "[Service]\nEnvironment=JACK_NO_AUDIO_RESERVATION=1\n"
    )
    return [*own, "--no-jack"]


def jack_server(node: str) -> str:
    """The JACK server of a node agent: a name of its own, so that two on one machine keep apart."""
    return f"tutti-{node}"


def _hub_ports(machine: Machine, audio: AudioSettings) -> None:
    assert audio.hub is not None
    machine.ports.append(("tcp", audio.hub.port, "JackTrip hub: clients join"))
    # The hub gives each client joining the lowest UDP port free from 61002; a client that joins
    # again before its old worker timed out gets another one: room for every site to do so.
    sites = len(audio.links)
    why = f"JackTrip hub: each site's audio, on a port from {HUB_UDP_BASE} given as it joins"
    machine.ranges.append(PortRange("udp", HUB_UDP_BASE, HUB_UDP_BASE + 2 * sites - 1, sites, why))


def describe(machines: dict[str, Machine]) -> str:
    lines = []
    for host, machine in machines.items():
        lines.append(f"{host}")
        lines += [f"  runs  {what}" for what in machine.runs]
        lines += [f"  open  {proto}/{port}  {why}" for proto, port, why in machine.ports]
        lines += [f"  open  {r.proto}/{r.first}-{r.last}  {r.why}" for r in machine.ranges]
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
        (folder / "PLAN.txt").write_text(steps(concert, host, machine))
        written.append(folder / "PLAN.txt")
        if "tutti-conductor.service" in machine.units:
            written += _conductor_files(concert, folder)
    return written


def _env_names(concert: Concert, roles: tuple[str, ...]) -> list[str]:
    """The environment variables the concert file reads tokens from, for these roles."""
    names = []
    for role, spec in concert.settings.tokens.model_dump().items():
        if role in roles:
            specs = spec.values() if isinstance(spec, dict) else [spec]
            names += [s.removeprefix("env:") for s in specs if isinstance(s, str) and s.startswith("env:")]
    return names


def _certificate(host: str, ca: str) -> list[str]:
    """Commands that make the conductor's certificate with the concert's CA (where its key is kept)."""
    san = (
        f"IP:{host}"
        if host.replace(":", "").replace(".", "").isalnum() and any(c in host for c in ":.")
        else f"DNS:{host}"
    )
    return [
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        f' -keyout conductor-key.pem -subj "/CN={host}" -out conductor.csr',
        f"openssl x509 -req -in conductor.csr -CA {ca} -CAkey ca-key.pem -CAcreateserial -days 400"
        f' -out conductor.pem -extfile <(printf "subjectAltName={san}")',
        f"install -d {CONFIG}/tls && install -m 0600 conductor.pem conductor-key.pem {CONFIG}/tls/",
    ]


def steps(concert: Concert, host: str, machine: Machine) -> str:
    """PLAN.txt: what a site technician does on this machine, in order, from a fresh Debian."""
    deployment = concert.settings.deployment
    assert deployment is not None
    url = conductor_url(concert, deployment)
    conductor = "tutti-conductor.service" in machine.units
    hub = "compose.yaml" in machine.files
    lines = [f"{host}: {concert.title}", "", "What runs here:"]
    lines += [f"  {what}" for what in machine.runs]
    out: list[list[str]] = []
    out.append(
        [
            "Install Tutti (Debian, as root):",
            f"git clone TUTTI-REPOSITORY {INSTALL} && cd {INSTALL} && ./setup.sh --no-demo",
        ]
    )
    copied = [name for name in machine.files if name not in ("compose.yaml", "Dockerfile")]
    if conductor:
        copied += ["concert.yaml", "score/"]
    if copied:
        out.append(
            [
                f"Copy this folder's {', '.join(copied)} into {CONFIG}:",
                f"install -d -m 0750 {CONFIG} && cp -r {' '.join(copied)} {CONFIG}/",
            ]
        )
    if machine.units:
        out.append(["Install the systemd units:", f"cp {' '.join(machine.units)} /etc/systemd/system/"])
    if conductor:
        names = _env_names(concert, ("conductor", "performer", "audience", "node"))
        out.append(
            [f"Write the tokens into {CONFIG}/tokens.env (one NAME=token a line; never into the concert file):"]
            + [f"{name}=..." for name in names]
            + [f"chmod 600 {CONFIG}/tokens.env"]
        )
    if any("node.env" in unit for unit in machine.units.values()) or hub:
        out.append(
            [
                f"Write the node token into {CONFIG}/node.env (install -d -m 0750 {CONFIG} first):",
                "TUTTI_NODE_TOKEN=... (the concert's node token)",
                f"chmod 600 {CONFIG}/node.env",
            ]
        )
    if conductor and url.startswith("https") and not concert.settings.tls:
        why = f"Make the conductor's HTTPS certificate with the concert's CA ({deployment.ca})"
        out.append(
            [
                f"{why}, where its key ca-key.pem is kept:",
                *_certificate(deployment.conductor, Path(deployment.ca or "").name),
            ]
        )
    if machine.ports or machine.ranges:
        out.append(
            ["Open these ports in the firewall:"]
            + [f"ufw allow {port}/{proto}   # {why}" for proto, port, why in machine.ports]
            + [f"ufw allow {r.first}:{r.last}/{r.proto}   # {r.why}" for r in machine.ranges]
        )
    if machine.units:
        out.append(
            [
                "Start, and at every boot:",
                "systemctl daemon-reload",
                f"systemctl enable --now {' '.join(sorted(machine.units))}",
            ]
        )
    if hub:
        out.append(["Build and start the hub's container (from this folder):", "docker compose up -d --build"])
    if conductor:
        out.append([f"Check: open {url}/console (conductor token); `tutti status --url {url}` shows the same."])
        parts = concert.score.score.parts
        invite = "the console's Invite performers shows each link with its token as a QR code"
        out.append(
            [f"Performers open their part ({invite}):", *(f"{p.name}: {url}/perform?part={p.id}" for p in parts)]
        )
        if deployment.ca:
            where = "Settings > General > About > Certificate Trust Settings"
            out.append([f"Install the concert's CA ({deployment.ca}) on every iPad and phone ({where})."])
    else:
        names = [n for n in machine.units if n.startswith("tutti-node-")]
        if names:
            out.append(
                [f"Check: journalctl -u {names[0]} -f; the console at {url}/console lists the node with 'scsynth up'."]
            )
    if url.startswith("http:"):
        lines += ["", "WARNING: the conductor is served over http: iPads keep the screen awake only over HTTPS."]
        lines += ["  Set deployment.ca (the concert's CA) or tls in the concert file (see deploy/README.md)."]
    lines += ["", "Steps:"]
    for n, (head, *commands) in enumerate(out, 1):
        lines.append(f"{n:2}. {head}")
        lines += [f"      {command}" for command in commands]
    return "\n".join(lines) + "\n"


def _conductor_files(concert: Concert, folder: Path) -> list[Path]:
    """The concert file for /etc/tutti, with the score (and its sketches) and its certificate beside it."""
    written = []
    score = concert.score
    for name in [score.path.name, *score.files()]:
        target = folder / "score" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(score.folder / name, target)
        written.append(target)
    settings = concert.settings.model_dump(exclude_none=True, exclude={"deployment", "rehearsal"})
    settings.update(score=f"score/{score.path.name}", journal=JOURNAL)
    tls = concert.settings.tls
    if tls is not None:  # its own certificate, beside the concert file as it will be in CONFIG
        for name, source in (("cert.pem", tls.cert), ("key.pem", tls.key)):
            (folder / "tls").mkdir(exist_ok=True)
            shutil.copy(concert.path.parent / source, folder / "tls" / name)
            written.append(folder / "tls" / name)
        settings["tls"] = {"cert": "tls/cert.pem", "key": "tls/key.pem"}
    elif concert.settings.deployment and concert.settings.deployment.ca:  # made with the CA (PLAN.txt says how)
        settings["tls"] = {"cert": "tls/conductor.pem", "key": "tls/conductor-key.pem"}
    (folder / "concert.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return [*written, folder / "concert.yaml"]
