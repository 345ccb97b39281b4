"""Controllers that speak time (OSC bundles take effect at their timetag) and TouchOSC XY pads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from conductor.core.concert import OscRoute, OscSettings
from conductor.core.osc import osc_message
from conductor.core.protocol import SetParam, SetParams
from conductor.server.osc import OscIngress
from conductor.server.osctime import SenderClocks
from tests.conftest import ConductorProcess, write_concert
from tests.test_osc import settle, surface

ROUTES = {
    "udp_port": 0,
    "tcp_port": None,
    "routes": [
        {"address": "/1/fader1", "param": "density"},
        {"address": "/1/xy1", "params": ["swell_x", "swell_y"], "range": [0, 100]},
    ],
}


def bundle(at: float, address: str, *args: float) -> bytes:
    """What sclang's ``sendBundle`` sends: a message in a bundle timetagged with the sender's wall clock."""
    builder = OscBundleBuilder(at)
    msg = OscMessageBuilder(address)
    for arg in args:
        msg.add_arg(arg)
    builder.add_content(msg.build())
    return builder.build().dgram


@pytest.fixture
def osc_conductor(tmp_path: Path) -> ConductorProcess:  # type: ignore[misc]
    proc = ConductorProcess(write_concert(tmp_path, osc=ROUTES))
    yield proc  # type: ignore[misc]
    proc.stop()


@pytest.mark.integration
async def test_a_bundle_s_timetag_is_when_its_change_takes_effect(osc_conductor: ConductorProcess) -> None:
    sock = surface()
    target = ("127.0.0.1", osc_conductor.osc_udp)
    status = osc_conductor.status()
    at = time.time() + 0.5  # sclang: s.sendBundle(0.5, ...), with the conductor on this machine
    sock.sendto(bundle(at, "/1/fader1", 0.8), target)
    await settle(osc_conductor, status["state"]["seq"] + 1)
    t, value = osc_conductor.status()["state"]["params"]["density"][-1]
    assert value == pytest.approx(0.8)
    assert t - status["clock_minus_wall"] == pytest.approx(at, abs=0.001)  # not on arrival plus the lookahead

    # "Immediately", or a time already past: at once, as any OSC value (a lookahead from now).
    for tag in (IMMEDIATELY, time.time() - 5):
        seq = osc_conductor.status()["state"]["seq"]
        sent = time.time()
        sock.sendto(bundle(tag, "/1/fader1", 0.1), target)
        await settle(osc_conductor, seq + 1)
        t, value = osc_conductor.status()["state"]["params"]["density"][-1]
        assert value == pytest.approx(0.1) and 0 < t - status["clock_minus_wall"] - sent < 0.5

    # A timetag a year ahead is refused and counted; nothing changes.
    seq = osc_conductor.status()["state"]["seq"]
    sock.sendto(bundle(time.time() + 3e7, "/1/fader1", 0.9), target)
    for _ in range(100):
        if osc_conductor.status()["rejections"].get("osc_bad_time"):
            break
        await asyncio.sleep(0.02)
    status = osc_conductor.status()
    assert status["rejections"]["osc_bad_time"] == 1 and status["state"]["seq"] == seq
    sock.close()


@pytest.mark.integration
async def test_an_xy_pad_moves_two_parameters_in_one_change_and_is_echoed_two_floats(
    osc_conductor: ConductorProcess,
) -> None:
    pad = surface()
    target = ("127.0.0.1", osc_conductor.osc_udp)
    seq = osc_conductor.status()["state"]["seq"]
    pad.sendto(osc_message("/1/xy1", [25.0, 75.0]), target)
    await settle(osc_conductor, seq + 1)
    status = osc_conductor.status()
    params = status["state"]["params"]
    assert (params["swell_x"][-1][1], params["swell_y"][-1][1]) == (pytest.approx(0.25), pytest.approx(0.75))
    assert status["state"]["seq"] == seq + 1  # one change, at one time, for both axes
    assert params["swell_x"][-1][0] == params["swell_y"][-1][0]
    echo = OscMessage(pad.recv(1024))
    assert (echo.address, echo.params) == ("/1/xy1", [pytest.approx(25.0), pytest.approx(75.0)])
    for wrong in (osc_message("/1/xy1", [0.5]), osc_message("/1/xy1", [1.0, 2.0, 3.0])):
        pad.sendto(wrong, target)
    for _ in range(100):
        if osc_conductor.status()["rejections"].get("osc_bad_args", 0) >= 2:
            break
        await asyncio.sleep(0.02)
    assert osc_conductor.status()["rejections"]["osc_bad_args"] == 2
    pad.close()


@pytest.mark.unit
def test_a_route_names_one_parameter_or_two() -> None:
    assert OscRoute(address="/1/xy1", params=("a", "b")).names == ("a", "b")
    for wrong in ({"address": "/x"}, {"address": "/x", "param": "a", "params": ["a", "b"]}):
        with pytest.raises(ValueError, match="param"):
            OscRoute.model_validate(wrong)


@pytest.mark.unit
async def test_a_node_s_bundle_is_timed_by_the_node_s_clock() -> None:
    """A node's clock is 5 s behind the conductor's (its offset says so): its sclang's timetags are
    in its own clock, and become conductor time with that offset; anyone else's with the conductor's."""
    submitted: list[Any] = []

    def submit(command: SetParam | SetParams, by: dict[str, Any], coalesced: int) -> asyncio.Future[Any]:
        submitted.append(command)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    clocks = SenderClocks(lambda: [("10.0.0.7", 5.0), ("10.0.0.7", 5.002), ("10.0.0.8", -3.0)], lambda: 0.25)
    settings = OscSettings(allow=["0.0.0.0/0"], routes=[OscRoute(address="/f", param="p")])
    osc = OscIngress(settings, {"p": (0.0, 1.0)}, submit, lambda code, why: None, clocks)
    node_wall = time.time() - 5.0 + 1.0  # a second from now, by the node's clock
    osc.receive(bundle(node_wall, "/f", 0.5), ("10.0.0.7", 57120))
    osc.receive(bundle(time.time() + 1.0, "/f", 0.5), ("::ffff:127.0.0.1", 57120))
    assert submitted[0].at == pytest.approx(node_wall + 5.001, abs=1e-3)  # the median of its nodes' offsets
    assert submitted[1].at == pytest.approx(time.time() + 1.25, abs=0.05)
    osc.receive(osc_message("/f", [0.5]), ("10.0.0.7", 57120))
    assert submitted[2].at is None  # a plain message: as soon as every site can follow
