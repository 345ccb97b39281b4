"""IPv6: a conductor on ::1, OSC over IPv6, and node agents joining it over IPv6.

(The JackTrip links in test_jacktrip.py run over ::1 as well.)
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from conductor.client import TuttiClient
from conductor.core.osc import osc_message
from tests.conftest import TOKENS, ConductorProcess, udp_ports, write_concert
from tests.test_node import node_health, start_node, stop_all, until

SCORE = """\
title: Two sites
duration: 60
parameters:
  - {id: density, min: 0, max: 1, default: 0.5}
parts:
  - {id: a, name: A, site: a}
  - {id: b, name: B, site: b}
cues:
  - {at: 0.5, target: all, address: /s_new, args: [tutti_click, -1, 0, 0]}
"""


async def test_a_conductor_and_two_nodes_on_ipv6(tmp_path: Path) -> None:
    (tmp_path / "score.yaml").write_text(SCORE)
    osc = {"udp_port": 0, "allow": ["::1/128"], "routes": [{"address": "/1/fader1", "param": "density"}]}
    conductor = ConductorProcess(write_concert(tmp_path, score=tmp_path / "score.yaml", host="::1", osc=osc))
    assert conductor.url.startswith("http://[::1]:")
    agents = []
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    try:
        ports = udp_ports(2)
        for i, site in enumerate(("a", "b")):
            port = ports[i]
            agents.append(await start_node(conductor.url, f"n{site}", site, port, f"tutti-v6-{site}-{os.getpid()}"))
            await until(lambda s=site: node_health(conductor, f"n{s}").get("up") is True, 30, f"n{site} not up")
        await boss.connect()
        assert (await boss.command("play"))["ok"]
        for site in ("a", "b"):
            await until(lambda s=site: node_health(conductor, f"n{s}").get("cues", 0) >= 1, 5, f"no cue at {site}")

        # A controller on IPv6 moves a parameter, and hears the echo.
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as surface:
            surface.bind(("::1", 0))
            surface.settimeout(2)
            surface.sendto(osc_message("/1/fader1", [0.75]), ("::1", conductor.osc_udp))
            echo = await asyncio.to_thread(surface.recv, 1024)
        assert echo.startswith(b"/1/fader1")
        assert conductor.status()["state"]["params"]["density"][-1][1] == 0.75
    finally:
        await boss.close()
        await stop_all(conductor, agents)
