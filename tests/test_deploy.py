"""Deployment from one concert file: the plan, and each machine's systemd units and configuration."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conductor.concert import load_concert
from conductor.deploy import HUB_UDP_BASE, plan
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
        "2001:db8:20::2",
        "2001:db8:30::2",
        "2001:db8:40::2",
    ]
    head = machines["2001:db8:10::1"]
    assert ("tcp", 8443, "conductor: HTTP and Socket.IO") in head.ports
    assert {("udp", 9000), ("tcp", 9001)} <= {(p, n) for p, n, _ in head.ports}
    hub = machines["2001:db8:10::2"]
    assert ("tcp", 4464, "JackTrip hub: clients join") in hub.ports
    assert [n for p, n, _ in hub.ports if p == "udp"] == [HUB_UDP_BASE, HUB_UDP_BASE + 1, HUB_UDP_BASE + 2]
    assert ("udp", 4464, "JackTrip: audio from the hub") in machines["2001:db8:40::2"].ports
    assert any("node whcm-1 (site whcm)" in line for line in machines["2001:db8:40::2"].runs)


def test_render_writes_units_that_parse_and_a_concert_the_conductor_loads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "deploy", "render", str(EXAMPLE), str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**TOKENS, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    units = sorted(out.glob("*/*.service"))
    assert {u.name for u in units} == {
        "tutti-conductor.service", "tutti-node-ucas-1.service", "tutti-node-ccom-1.service",
        "tutti-node-pku-1.service", "tutti-node-whcm-1.service",
    }  # fmt: skip
    for unit in units:
        parsed = configparser.ConfigParser(strict=True, interpolation=None)
        parsed.read(unit)
        assert set(parsed.sections()) == {"Unit", "Service", "Install"}
        assert parsed["Service"]["ExecStart"].startswith("/opt/tutti/.venv/bin/tutti ")
        assert parsed["Service"]["Restart"] == "always"
    node = configparser.ConfigParser(interpolation=None)
    node.read(out / "2001_db8_40__2" / "tutti-node-whcm-1.service")
    command = node["Service"]["ExecStart"]
    assert "--url http://[2001:db8:10::1]:8443 --name whcm-1 --site whcm --part donghu" in command
    # The conductor's folder holds a concert file that loads, with its score beside it.
    concert_file = out / "2001_db8_10__1" / "concert.yaml"
    settings = yaml.safe_load(concert_file.read_text())
    assert settings["score"] == "score/four-rivers.yaml" and "deployment" not in settings
    assert settings["tokens"]["conductor"] == "env:TUTTI_CONDUCTOR_TOKEN"  # never the token itself
    assert load_concert(concert_file).score.score.title == "Four Rivers"


def test_plan_without_a_deployment_section_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conductor", "deploy", "plan", str(ROOT / "deploy" / "demo.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "no 'deployment' section" in result.stderr
