"""Deployment from one concert file: the plan, and each machine's systemd units and configuration."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conductor.core.concert import load_concert
from conductor.core.yamlcheck import InvalidFile
from conductor.tools.cli import command_line
from conductor.tools.deploy import HUB_UDP_BASE, plan, render
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "four-rivers.yaml"
TOKENS = {"TUTTI_CONDUCTOR_TOKEN": "c", "TUTTI_PERFORMER_TOKEN": "p", "TUTTI_NODE_TOKEN": "n"}


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)


def test_the_plan_says_what_runs_where_and_which_ports_to_open() -> None:
    machines = plan(load_concert(EXAMPLE))
    assert sorted(machines) == [
        "2001:db8:10::1",
        "2001:db8:10::2",
        "2001:db8:10::3",
        "2001:db8:20::2",
        "2001:db8:30::2",
        "2001:db8:40::2",
    ]
    head = machines["2001:db8:10::1"]
    assert ("tcp", 8443, "conductor: HTTP and Socket.IO") in head.ports
    assert {("udp", 9000), ("tcp", 9001)} <= {(p, n) for p, n, _ in head.ports}
    hub = machines["2001:db8:10::3"]
    assert ("tcp", 4464, "JackTrip hub: clients join") in hub.ports
    [udp] = hub.ranges  # one port per site as it joins, room for each to join again
    assert (udp.proto, udp.first, udp.last, udp.held) == ("udp", HUB_UDP_BASE, HUB_UDP_BASE + 7, 4)
    assert any("JackTrip hub (site hub) in a container" in line for line in hub.runs)
    for site in ("10", "20", "30", "40"):
        assert ("udp", 4464, "JackTrip: audio from the hub") in machines[f"2001:db8:{site}::2"].ports
    assert any("node whcm-1 (site whcm)" in line for line in machines["2001:db8:40::2"].runs)


def test_the_hub_container_runs_a_node_agent_with_options_that_take_effect(tmp_path: Path) -> None:
    concert = load_concert(EXAMPLE)
    render(concert, tmp_path)
    folder = tmp_path / "2001_db8_10__3"
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    service = compose["services"]["jacktrip-hub"]
    assert service["network_mode"] == "host"  # jacktrip's hub hands each client a UDP port of its own
    assert service["restart"] == "always" and service["ulimits"]["rtprio"] == 95
    # The container's command is one the node agent accepts: no scsynth, the hub's site and name.
    args = command_line().parse_args(service["command"])
    assert (args.command, args.no_synth, args.site, args.name) == ("node", True, "hub", "hub")
    assert args.url == "https://[2001:db8:10::1]:8443"
    # What it will run, from the concert: a hub server Tutti patches itself (-p 5), the queue and
    # bit depth of the concert, and none of the flags a hub server ignores (-n, -t, -z).
    jacktrip = service["x-jacktrip"].split()
    assert jacktrip[:5] == ["jacktrip", "-S", "-p", "5", "-B"] and jacktrip[5] == "4464"
    assert jacktrip[jacktrip.index("-q") + 1] == "4" and jacktrip[jacktrip.index("-b") + 1] == "24"
    assert not {"-n", "-t", "-z"} & set(jacktrip)
    # Its image is built from this Tutti, with JACK and jacktrip from Debian.
    dockerfile = (folder / "Dockerfile").read_text()
    assert "jackd2 jacktrip" in dockerfile and "COPY tutti /opt/tutti" in dockerfile
    assert (folder / "tutti" / "pyproject.toml").is_file()
    assert (folder / "tutti" / "conductor" / "node" / "agent.py").is_file()
    # Every port it needs is in its plan.
    plan_text = (folder / "PLAN.txt").read_text()
    assert "ufw allow 4464/tcp" in plan_text
    assert f"ufw allow {HUB_UDP_BASE}:{HUB_UDP_BASE + 7}/udp" in plan_text


def test_a_hub_machine_must_be_the_hubs_node(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("node: hub, address", "address")
    (tmp_path / "concert.yaml").write_text(text.replace("../scores/", str(ROOT / "scores") + "/"))
    with pytest.raises(InvalidFile, match=re.escape("audio.hub.node: set it to 'hub': the hub machine runs the hub")):
        load_concert(tmp_path / "concert.yaml")


def test_render_writes_units_that_parse_and_a_concert_the_conductor_loads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "deploy", "render", str(EXAMPLE), str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**TOKENS, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    units = sorted(out.glob("*/*.service"))
    assert {u.name for u in units} == {  # the hub runs in a container: no unit
        "tutti-conductor.service", "tutti-node-ucas-1.service", "tutti-node-ccom-1.service",
        "tutti-node-pku-1.service", "tutti-node-whcm-1.service", "tutti-jack-ucas-1.service",
        "tutti-jack-ccom-1.service", "tutti-jack-pku-1.service", "tutti-jack-whcm-1.service",
    }  # fmt: skip
    for unit in units:
        parsed = configparser.ConfigParser(strict=True, interpolation=None)
        parsed.read(unit)
        assert set(parsed.sections()) == {"Unit", "Service", "Install"}
        program = "/usr/bin/jackd " if unit.name.startswith("tutti-jack-") else "/opt/tutti/.venv/bin/tutti "
        assert parsed["Service"]["ExecStart"].startswith(program)
        assert parsed["Service"]["Restart"] == "always"
        assert parsed["Service"]["Nice"] == "-10"  # ahead of the machine's other programs
    node = configparser.ConfigParser(interpolation=None)
    node.read(out / "2001_db8_40__2" / "tutti-node-whcm-1.service")
    command = node["Service"]["ExecStart"]
    assert "--url https://[2001:db8:10::1]:8443 --name whcm-1 --site whcm --part donghu" in command
    # Its node plays through the site's sound card: JACK's ALSA driver, in a unit the node waits for.
    assert command.endswith("--jack-server tutti-whcm-1 --no-jack")
    assert node["Unit"]["Requires"] == "tutti-jack-whcm-1.service" and node["Unit"]["After"].endswith(
        " tutti-jack-whcm-1.service"
    )
    jack = configparser.ConfigParser(interpolation=None)
    jack.read(out / "2001_db8_40__2" / "tutti-jack-whcm-1.service")
    assert jack["Service"]["ExecStart"] == "/usr/bin/jackd -R -n tutti-whcm-1 -d alsa -d hw:0 -r 48000 -p 128 -n 2"
    # The conductor's folder holds a concert file that loads, with its score beside it.
    concert_file = out / "2001_db8_10__1" / "concert.yaml"
    settings = yaml.safe_load(concert_file.read_text())
    assert settings["score"] == "score/four-rivers.yaml" and "deployment" not in settings
    assert settings["tokens"]["conductor"] == "env:TUTTI_CONDUCTOR_TOKEN"  # never the token itself
    # HTTPS with a certificate from the concert's CA, made on the spot as PLAN.txt says.
    assert settings["tls"] == {"cert": "tls/conductor.pem", "key": "tls/conductor-key.pem"}
    (out / "2001_db8_10__1" / "tls").mkdir()
    for name in ("conductor.pem", "conductor-key.pem"):
        (out / "2001_db8_10__1" / "tls" / name).write_text("made with openssl, as PLAN.txt says\n")
    assert load_concert(concert_file).score.score.title == "Four Rivers"
    # PLAN.txt: numbered steps a technician follows, from installing to the performers' links.
    plan = (out / "2001_db8_10__1" / "PLAN.txt").read_text()
    for step in (
        " 1. Install Tutti", "./setup.sh --no-demo", "TUTTI_CONDUCTOR_TOKEN=...", "-CA four-rivers-ca.pem",
        "systemctl enable --now tutti-conductor.service", "Donghu (WHCM): https://[2001:db8:10::1]:8443/perform?part=donghu",
        "Install the concert's CA",
    ):  # fmt: skip
        assert step in plan, step
    node_plan = (out / "2001_db8_40__2" / "PLAN.txt").read_text()
    assert "TUTTI_NODE_TOKEN=..." in node_plan and "JACK server tutti-whcm-1 on sound card hw:0" in node_plan
    assert "systemctl enable --now tutti-jack-whcm-1.service tutti-node-whcm-1.service" in node_plan
    assert "WARNING" not in plan + node_plan


def test_plan_without_a_deployment_section_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "deploy", "plan", str(ROOT / "deploy" / "demo.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "no 'deployment' section" in result.stderr


def test_nodes_trust_the_concerts_own_ca(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("../scores/", str(ROOT / "scores") + "/")
    (tmp_path / "concert.yaml").write_text(text.replace("ca: four-rivers-ca.pem", "ca: concert-ca.pem"))
    (tmp_path / "concert-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nthe concert's CA\n")
    out = tmp_path / "out"
    render(load_concert(tmp_path / "concert.yaml"), out)
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(out / "2001_db8_20__2" / "tutti-node-ccom-1.service")
    assert " --ca /etc/tutti/ca.pem" in unit["Service"]["ExecStart"]
    assert (out / "2001_db8_20__2" / "ca.pem").read_text() == "-----BEGIN CERTIFICATE-----\nthe concert's CA\n"
    hub = yaml.safe_load((out / "2001_db8_10__3" / "compose.yaml").read_text())["services"]["jacktrip-hub"]
    assert hub["command"][-2:] == ["--ca", "/etc/tutti/ca.pem"]
    assert hub["volumes"] == ["/etc/tutti/ca.pem:/etc/tutti/ca.pem:ro"]
    (tmp_path / "concert-ca.pem").unlink()
    with pytest.raises(InvalidFile, match=r"deployment\.ca: no file at"):
        load_concert(tmp_path / "concert.yaml")
