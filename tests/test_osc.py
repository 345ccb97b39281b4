"""OSC ingress: controllers move parameters, stay in step, and garbage is counted, never fatal."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pythonosc import slip
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from conductor.client import TuttiClient
from conductor.core.osc import osc_bundle, osc_message
from conductor.server.osc import plain_numbers, well_formed
from tests.conftest import TOKENS, ConductorProcess, write_concert

ROUTES = {
    "udp_port": 0,
    "tcp_port": 0,
    "routes": [
        {"address": "/1/fader1", "param": "density"},
        {"address": "/1/rotary1", "param": "brightness", "range": [0, 127]},
    ],
}


@pytest.fixture
def osc_conductor(tmp_path: Path) -> ConductorProcess:  # type: ignore[misc]
    proc = ConductorProcess(write_concert(tmp_path, osc=ROUTES))
    yield proc  # type: ignore[misc]
    proc.stop()


def surface() -> socket.socket:
    """A TouchOSC-like controller: one UDP socket that sends and hears the conductor's echoes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


def param(conductor: ConductorProcess, name: str) -> float:
    return conductor.status()["state"]["params"][name][-1][1]


async def settle(conductor: ConductorProcess, seq: int) -> None:
    for _ in range(100):
        if conductor.status()["state"]["seq"] >= seq:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"change {seq} never came")


async def test_two_surfaces_stay_in_step(osc_conductor: ConductorProcess) -> None:
    a, b = surface(), surface()
    target = ("127.0.0.1", osc_conductor.osc_udp)
    b.sendto(osc_message("/1/rotary1", [127.0]), target)  # b speaks first, so it is registered for echoes
    await settle(osc_conductor, 1)
    assert param(osc_conductor, "brightness") == pytest.approx(1.0)
    OscMessage(b.recv(1024))  # its own echo
    a.sendto(osc_message("/1/fader1", [0.25]), target)
    await settle(osc_conductor, 2)
    assert param(osc_conductor, "density") == pytest.approx(0.25)
    echo = OscMessage(b.recv(1024))
    assert (echo.address, echo.params) == ("/1/fader1", [pytest.approx(0.25)])

    # A performer's touch control goes the same way: the surfaces follow it.
    player = TuttiClient(osc_conductor.url, "performer", TOKENS["performer"], part="drones")
    await player.connect()
    assert (await player.sio.call("control", {"id": "level", "value": 0.6}, timeout=5))["ok"]
    for sock in (a, b):
        while (echo := OscMessage(sock.recv(1024))).address != "/1/fader1" or echo.params[0] < 0.5:
            pass
        assert echo.params == [pytest.approx(0.6)]
    await player.close()
    a.close(), b.close()


async def test_slip_over_tcp(osc_conductor: ConductorProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", osc_conductor.osc_tcp)
    writer.write(slip.encode(osc_message("/1/rotary1", [63.5])))
    await writer.drain()
    echo = await asyncio.wait_for(reader.read(1024), 5)
    frames = [f for f in echo.split(b"\xc0") if f]
    reply = OscMessage(slip.decode(slip.END + frames[0] + slip.END))
    assert reply.address == "/1/rotary1" and reply.params == [pytest.approx(63.5)]
    assert param(osc_conductor, "brightness") == pytest.approx(0.5)
    writer.close()


def harmless(packet: bytes) -> bool:
    """Valid OSC that carries no message (an empty bundle): nothing to route, nothing to refuse."""
    if len(packet) % 4:
        return False
    try:
        return OscPacket(packet).messages == []
    except Exception:
        return False


def test_well_formed_catches_what_python_osc_lets_through() -> None:
    good = osc_message("/1/fader1", [0.5])
    assert well_formed(good) and well_formed(osc_message("/a", ["text", 3, 2.5])) and well_formed(osc_message("/ping"))
    assert not well_formed(good[:16])  # the float is missing, python-osc would read 0.0
    assert OscMessage(good[:16]).params == [0.0]
    assert not well_formed(good + b"\0\0\0\0")


async def test_garbage_is_counted_and_the_conductor_keeps_serving(osc_conductor: ConductorProcess) -> None:
    sock = surface()
    target = ("127.0.0.1", osc_conductor.osc_udp)
    rng = random.Random(5)
    good = osc_message("/1/fader1", [0.5])
    sent = []
    for i in range(600):
        kind = i % 4
        if kind == 0:
            packet = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind == 1:
            packet = good[: rng.randrange(1, len(good))]  # truncated
        elif kind == 2:
            packet = osc_message(rng.choice(["/nope", "/1/fader1"]), ["text"])  # unknown address or wrong type
        else:
            packet = b"#bundle\x00" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        sent.append(packet)
        sock.sendto(packet, target)
        if i % 5 == 0:
            await asyncio.sleep(0.002)  # paced: a burst would overflow the socket buffer, and UDP drops it
    sock.sendto(b"\x00" * 9000, target)  # oversize
    expected = sum(not harmless(p) for p in sent) + 1
    for _ in range(50):
        if sum(osc_conductor.status()["rejections"].values()) >= expected:
            break
        await asyncio.sleep(0.05)
    counts = osc_conductor.status()["rejections"]
    assert sum(counts.values()) == expected, counts  # every bad packet refused and counted, once
    assert osc_conductor.status()["state"]["seq"] == 0  # and none of them changed anything
    assert counts["osc_too_large"] == 1 and counts["osc_unknown_address"] > 0 and counts["osc_bad_args"] > 0

    _, writer = await asyncio.open_connection("127.0.0.1", osc_conductor.osc_tcp)
    writer.write(b"\xc0" + bytes(rng.randrange(1, 192) for _ in range(300)) + b"\xc0" + b"x" * 20000)
    await writer.drain()
    writer.close()
    sock.sendto(osc_message("/1/fader1", [0.75]), target)  # and a good one still works
    for _ in range(50):
        if param(osc_conductor, "density") == pytest.approx(0.75):
            break
        await asyncio.sleep(0.05)
    assert param(osc_conductor, "density") == pytest.approx(0.75)
    after = osc_conductor.status()["rejections"]
    assert after["osc_malformed"] == counts["osc_malformed"] + 1  # the garbage SLIP frame
    assert after["osc_too_large"] == 2  # and the frame that never ends
    sock.close()


async def test_sources_off_the_allow_list_are_dropped(tmp_path: Path) -> None:
    proc = ConductorProcess(write_concert(tmp_path, osc={**ROUTES, "allow": ["10.9.9.0/24"]}))
    try:
        sock = surface()
        sock.sendto(osc_message("/1/fader1", [0.9]), ("127.0.0.1", proc.osc_udp))
        await asyncio.sleep(0.3)
        status = proc.status()
        assert status["state"]["seq"] == 0
        assert status["rejections"] == {"osc_not_allowed": 1}
        sock.close()
    finally:
        proc.stop()


cue_args = st.lists(
    st.integers(-(2**40), 2**40)
    | st.floats(width=32, allow_nan=False)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    max_size=6,
)


@given(address=st.sampled_from(["/n_set", "/s_new", "/tutti/beat"]), args=cue_args, at=st.floats(1e9, 2e9))
def test_a_node_encodes_cues_as_python_osc_builds_them(address: str, args: list[Any], at: float) -> None:
    """The node's own encoding of a cue (its hot path) is byte for byte what python-osc's builders make."""
    built, doubles = OscMessageBuilder(address), OscMessageBuilder(address)
    for arg in args:
        built.add_arg(arg)
        doubles.add_arg(arg, OscMessageBuilder.ARG_TYPE_DOUBLE if isinstance(arg, float) else None)
    assert osc_message(address, args) == built.build().dgram
    assert osc_message(address, args, doubles=True) == doubles.build().dgram
    bundle = OscBundleBuilder(at)
    bundle.add_content(built.build())
    assert osc_bundle(at, address, args) == bundle.build().dgram


numbers = st.lists(
    st.tuples(st.just("i"), st.integers(-(2**31), 2**31 - 1))
    | st.tuples(st.just("h"), st.integers(-(2**63), 2**63 - 1))
    | st.tuples(st.just("f"), st.floats(width=32))
    | st.tuples(st.just("d"), st.floats()),
    max_size=4,
)


def _built(address: str, args: list[tuple[str, Any]]) -> bytes:
    builder = OscMessageBuilder(address)
    for kind, value in args:
        builder.add_arg(value, kind)
    return builder.build().dgram


@given(address=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20), args=numbers)
def test_a_controller_s_numbers_are_read_as_python_osc_reads_them(address: str, args: list[tuple[str, Any]]) -> None:
    """The conductor's own reader of a fader's value (its hot path) agrees with python-osc."""
    dgram = _built("/" + address, args)
    read = OscMessage(dgram)
    if args:  # (by repr: a NaN is not equal to itself)
        assert repr(plain_numbers(dgram)) == repr((read.address, tuple(read.params)))
    else:
        assert plain_numbers(dgram) is None  # no arguments: python-osc's reader says what is wrong


@given(args=numbers.filter(bool), cut=st.integers(1, 12), extra=st.binary(min_size=1, max_size=8))
def test_a_cut_or_padded_message_is_left_to_the_careful_reader(
    args: list[tuple[str, Any]], cut: int, extra: bytes
) -> None:
    dgram = _built("/fader", args)
    for broken in (dgram[:-cut], dgram + extra, dgram.replace(b",", b";", 1)):
        assert plain_numbers(broken) is None
    assert plain_numbers(osc_message("/fader", ["text", 1.0])) is None  # a string: not a controller's numbers
    assert plain_numbers(osc_message("/fader", [True])) is None  # python-osc reads T as a bool, which routes refuse
