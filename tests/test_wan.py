"""The user-space WAN (``conductor/tools/wan.py``, ``netns.wan``): each pair of hosts its own delay.

The unit tests drive the router through datagram socket pairs (one packet a read, as a TUN device
gives); the integration test makes three network namespaces joined through it (as root) and times
ICMPv6 echoes, a TCP handshake and UDP datagrams each way on the one clock they share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import time

import pytest

from conductor.tools import netns
from conductor.tools.wan import MTU, Lag, Router

A, B, C = "2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"
SLACK = 0.003  # seconds above a configured delay, for the quickest of several on a busy machine


def ipv6(source: str, destination: str, payload: bytes = b"x" * 8) -> bytes:
    """An IPv6 packet (UDP next header; the router reads only the fixed header)."""
    header = struct.pack("!IHBB", 6 << 28, len(payload), 17, 64)
    return header + ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed + payload


async def received(sock: socket.socket, within: float = 2.0) -> tuple[bytes, float]:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, MTU + 100), within)
    return data, time.monotonic()


@pytest.mark.unit
async def test_the_router_delays_each_pair_in_order_and_drops_what_it_cannot_carry() -> None:
    lags = {("a", "b"): Lag(0.030, jitter=0.020), ("b", "a"): Lag(0.005)}
    router = Router(lags, queue=8, seed=1)
    ends = {}
    for name, address in (("a", A), ("b", B)):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mine.setblocking(False)
        theirs.setblocking(False)
        router.attach(name, mine.fileno(), [address])
        ends[name] = (mine, theirs)
    try:
        a, b = ends["a"][1], ends["b"][1]
        sent = time.monotonic()
        for i in range(8):  # jittered by up to 20 ms, yet they arrive in the order they left
            a.send(ipv6(A, B, struct.pack("!Q", i)))
        a.send(ipv6(A, B))  # a ninth: the pair's queue holds eight
        got = [await received(b) for _ in range(8)]
        assert [struct.unpack("!Q", data[40:])[0] for data, _ in got] == list(range(8))
        assert all(0.030 <= at - sent < 0.050 + 0.1 for _, at in got), [at - sent for _, at in got]
        b.send(ipv6(B, A))
        assert (await received(a))[0] == ipv6(B, A)
        for bad in (b"\x45" + bytes(59), ipv6(A, B)[:-1], ipv6(A, B, b"x" * MTU), ipv6(A, C), ipv6(A, "ff02::2")):
            a.send(bad)
        deadline = time.monotonic() + 2
        while router.counts.unknown + router.counts.malformed + router.counts.multicast < 5:
            assert time.monotonic() < deadline, router.counts
            await asyncio.sleep(0.01)
        c = router.counts
        assert (c.forwarded, c.full, c.malformed, c.unknown, c.multicast) == (9, 1, 3, 1, 1), c
        assert router.dropped() == "1 full, 3 malformed, 1 unknown"
    finally:
        for name, (mine, theirs) in ends.items():
            router.detach(name)
            mine.close()
            theirs.close()
        router.close()


async def _echo(sock: socket.socket, peer: str, ident: int, seq: int) -> float:
    """The round trip of one ICMPv6 echo (the kernel of the peer's namespace answers it)."""
    loop = asyncio.get_running_loop()
    sent = time.monotonic()
    await loop.sock_sendto(sock, struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"tutti", (peer, 0))
    while True:
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2.0)
        if data[0] == 129 and struct.unpack("!HH", data[4:8]) == (ident, seq):
            return time.monotonic() - sent


async def _one_way(source: socket.socket, sink: socket.socket, to: str, port: int, n: int) -> list[float]:
    """Each of ``n`` datagrams' seconds from ``source`` to ``sink`` (one process: one clock)."""
    loop = asyncio.get_running_loop()
    ways = []
    for _ in range(n):
        await loop.sock_sendto(source, struct.pack("!d", time.monotonic()), (to, port))
        data, at = await received(sink)
        ways.append(at - struct.unpack("!d", data)[0])
    return ways


@pytest.mark.integration
async def test_namespaces_through_the_router_see_each_pairs_delay_each_way() -> None:
    lags = {
        ("a", "b"): Lag(0.012),
        ("b", "a"): Lag(0.004),
        ("a", "c"): Lag(0.020, jitter=0.004),
        ("c", "a"): Lag(0.020),
    }
    router = Router(lags)
    async with netns.wan(f"t20b-{os.getpid()}", {"a": [A], "b": [B], "c": [C]}, router) as hosts:
        ping = await netns.socket_in(hosts["a"].netns, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        udp = {}
        for name, address in (("a", A), ("b", B), ("c", C)):
            udp[name] = await netns.socket_in(hosts[name].netns)
            udp[name].bind((address, 9999))
        listener = await netns.socket_in(hosts["b"].netns, socket.SOCK_STREAM)
        listener.bind((B, 9998))
        listener.listen()
        callers: list[socket.socket] = []
        try:
            loop = asyncio.get_running_loop()
            # ICMPv6: a round trip is the two ways' delays.
            trips = [await _echo(ping, B, os.getpid() & 0xFFFF, i) for i in range(5)]
            assert 0.016 <= min(trips) < 0.016 + SLACK, trips
            trips = [await _echo(ping, C, os.getpid() & 0xFFFF, 10 + i) for i in range(5)]
            assert 0.040 <= min(trips) < 0.044 + SLACK, trips
            # TCP: a handshake is a round trip too (the quickest of three, on a busy machine).
            handshakes = []
            for _ in range(3):
                caller = await netns.socket_in(hosts["a"].netns, socket.SOCK_STREAM)
                callers.append(caller)
                started = time.monotonic()
                await asyncio.wait_for(loop.sock_connect(caller, (B, 9998)), 5)
                handshakes.append(time.monotonic() - started)
            assert 0.016 <= min(handshakes) < 0.016 + SLACK, handshakes
            # UDP, each way on its own: the asymmetry is there.
            there = await _one_way(udp["a"], udp["b"], B, 9999, 10)
            back = await _one_way(udp["b"], udp["a"], A, 9999, 10)
            assert 0.012 <= min(there) < 0.012 + SLACK, there
            assert 0.004 <= min(back) < 0.004 + SLACK, back
            # b and c: no delay named, none made.
            assert min(await _one_way(udp["b"], udp["c"], C, 9999, 10)) < SLACK
            # Jitter on a -> c: 20 to 24 ms, and a burst arrives in the order it was sent.
            for i in range(30):
                await loop.sock_sendto(udp["a"], struct.pack("!d", i), (C, 9999))
            order = [struct.unpack("!d", (await received(udp["c"]))[0])[0] for _ in range(30)]
            assert order == list(range(30))
            assert router.dropped() == "", router.counts
        finally:
            for sock in (ping, listener, *callers, *udp.values()):
                sock.close()
