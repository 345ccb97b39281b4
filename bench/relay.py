"""OSC relay: a controller's messages through the conductor to 1, 4 and 8 node agents and their scsynth.

    .venv/bin/python bench/relay.py [--messages 300] [--burst 2000] [--json out.json]

(as root: arrivals are seen on the loopback interface with a packet socket.)

A TouchOSC-style controller sends ``/seq N`` over UDP. The concert routes it to a parameter whose
``n_set`` reaches every node; each agent sends the ``/n_set`` to its own scsynth (real ones, on one
JACK server with the dummy driver). The baseline, in the same run, is the controller sending the
same ``/n_set`` straight to every scsynth with python-osc. Both are timed where they meet: the
packet arriving at a scsynth's port, read off the loopback interface, so nothing in either path is
altered to be measured.

- latency: messages paced 20 ms apart; each delivery's time from the controller's send to its
  arrival at one scsynth (p50, p99 over all deliveries);
- throughput: a burst sent as fast as the socket allows; controller messages per second until the
  last delivery arrived (each message is delivered once to every scsynth), and deliveries lost
  (none arrived for 2 s).

    .venv/bin/python bench/relay.py --cost [--values 20000] [--rounds 5]

prints what a routed value costs the conductor itself, steadier than the timings above on a
shared machine: a real conductor in this process is handed the controller's datagrams in a tight
loop (no network, no nodes), and the time per value from its datagram to its cues queued and its
journal record encoded is the median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import socket
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pythonosc.osc_packet import OscPacket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    concert_file,
    jack_server,
    node_agent,
    nodes_up,
    percentile,
    running,
    save,
    started,
)
from conductor.core.concert import load_concert  # noqa: E402
from conductor.core.osc import osc_message  # noqa: E402
from conductor.core.score import PART_GROUP_BASE  # noqa: E402
from conductor.server.conductor import local  # noqa: E402
from conductor.tools.cli import run  # noqa: E402

SCORE = """\
title: Relay bench
duration: 3600
parameters:
  - {id: seq, min: 0, max: 10000000, n_set: {control: seq}}
parts:
  - {id: all, name: Everyone}
"""
JACK = f"tutti-relay-{os.getpid()}"
TOKEN = "bench"
BASE_PORT = 57700
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
N_SET = b"/n_set\x00\x00,isf\x00\x00\x00\x00"  # then the node ID, the control and its value
RELAYED = re.compile(rb'"seq",(-?[0-9.e+]+)')


def relay_concert(osc_port: int) -> Path:
    """A concert whose OSC address ``/seq`` moves the parameter ``seq``, sounded on every node."""
    route = {"address": "/seq", "param": "seq", "range": [0, 10000000]}
    osc = {"udp_port": osc_port, "routes": [route]}
    return concert_file({"conductor": TOKEN, "node": TOKEN}, SCORE, lookahead=0.2, osc=osc)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def n_sets(packet: bytes) -> list[tuple[str, float]]:
    """The ``/n_set ID CONTROL VALUE`` messages of an OSC packet, as (control, value).

    A plain message is read without python-osc's reader: the sniffer shares the cores with what it
    measures, and reading every packet of a burst with it cost more than the node agent's hop.
    """
    if packet.startswith(N_SET):
        end = packet.index(0, len(N_SET) + 4)
        (value,) = struct.unpack_from(">f", packet, (end + 4) & ~3)
        return [(packet[len(N_SET) + 4 : end].decode(), value)]
    if packet.startswith(b"#bundle\x00") and packet[20:].startswith(N_SET):  # a node's timetagged cue
        out, at = [], 16
        while at + 4 <= len(packet):
            (size,) = struct.unpack_from(">i", packet, at)
            out += n_sets(packet[at + 4 : at + 4 + size])
            at += 4 + size
        return out
    try:
        messages = [m.message for m in OscPacket(packet).messages]
    except Exception:
        return []
    return [(m.params[1], m.params[2]) for m in messages if m.address == "/n_set" and len(m.params) == 3]


class Sniffer:
    """Arrival times of OSC packets to the scsynth ports, read off the loopback interface."""

    def __init__(self, ports: set[int], controls: set[str] | None = None):
        self.ports = ports
        self.controls = controls or {"seq"}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # Let the kernel pass only incoming UDP and TCP (loopback shows each packet twice, going out
        # and coming in): OSC to the scsynths, and the conductor's frames to the nodes.
        program = [
            (0x20, 0, 0, 0xFFFFF004),  # load the packet type
            (0x15, 4, 0, PACKET_OUTGOING),  # outgoing: drop
            (0x30, 0, 0, 9),  # load the IP protocol
            (0x15, 1, 0, socket.IPPROTO_UDP),
            (0x15, 0, 1, socket.IPPROTO_TCP),
            (0x06, 0, 0, 0xFFFF),  # keep
            (0x06, 0, 0, 0),  # drop
        ]
        self._filter = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
        fprog = struct.pack("HL", len(program), ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self.sock.bind(("lo", 0))
        self.sock.setblocking(False)
        self.arrivals: list[tuple[float, int, float]] = []  # time, scsynth port, value (of "seq")
        self.conductor_port = 0  # the conductor's frames from this port are timed too
        self.relayed: dict[float, float] = {}  # value of "seq" -> when the conductor first sent it on
        self.by_control: list[tuple[float, int, str, float]] = []  # time, port, control, value
        self.enough = asyncio.Event()
        self.expected = 0
        asyncio.get_running_loop().add_reader(self.sock, self._read)

    def _read(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            now = time.time()
            if addr[2] == PACKET_OUTGOING or data[9] not in (socket.IPPROTO_UDP, socket.IPPROTO_TCP):
                continue  # the filter is not attached yet
            header = (data[0] & 0x0F) * 4
            if data[9] == socket.IPPROTO_TCP:
                self._relayed(now, data[header:])
                continue
            (port,) = struct.unpack("!H", data[header + 2 : header + 4])
            if port not in self.ports:
                continue
            for control, value in n_sets(data[header + 8 :]):
                if control in self.controls:
                    self.arrivals.append((now, port, value))
                    self.by_control.append((now, port, control, value))
            if len(self.arrivals) >= self.expected:
                self.enough.set()

    def _relayed(self, now: float, segment: bytes) -> None:
        """The conductor's hop: a frame to a node carrying ``"seq", value`` (one per value, in JSON)."""
        if struct.unpack("!H", segment[:2])[0] != self.conductor_port:
            return
        for match in RELAYED.finditer(segment[(segment[12] >> 4) * 4 :]):
            self.relayed.setdefault(float(match[1]), now)

    async def wait_for(self, count: int, quiet: float = 2.0) -> None:
        """Until ``count`` deliveries are in, or none has come for ``quiet`` seconds (the rest are lost)."""
        self.expected = count
        self.enough.clear()
        while len(self.arrivals) < count:
            before = len(self.arrivals)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough.wait(), quiet)
            if len(self.arrivals) == before:
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


@dataclass
class Measured:
    latencies: list[float]  # each delivery's time from the controller's send to a scsynth (s)
    rate: float  # controller messages per second, until the last delivery
    lost: int  # deliveries that never came
    conductor: list[float]  # relayed: from the controller's send to the conductor's frame to a node (s)


async def measure(sniffer: Sniffer, send: Any, ports: list[int], first: int, count: int, gap: float) -> Measured:
    """Send seq first..first+count, ``gap`` seconds apart."""
    sniffer.arrivals.clear()
    sniffer.relayed.clear()
    sent: dict[float, float] = {}
    for seq in range(first, first + count):
        sent[float(seq)] = time.time()
        send(seq)
        await asyncio.sleep(gap)
    expected = count * len(ports)
    await sniffer.wait_for(expected)
    arrivals = [(t, port, seq) for t, port, seq in sniffer.arrivals if seq in sent]
    latencies = [t - sent[seq] for t, _, seq in arrivals]
    span = max(t for t, _, _ in arrivals) - min(sent.values()) if arrivals else float("inf")
    conductor = [t - sent[seq] for seq, t in sniffer.relayed.items() if seq in sent]
    return Measured(latencies, len(arrivals) / len(ports) / span, expected - len(arrivals), conductor)


def relay(controller: socket.socket, osc_port: int) -> Callable[[int], None]:
    """Send as a controller would: to the conductor's OSC port."""

    def send(n: int) -> None:
        controller.sendto(osc_message("/seq", [float(n)]), ("127.0.0.1", osc_port))

    return send


def direct(controller: socket.socket, ports: list[int]) -> Callable[[int], None]:
    """The baseline: the same /n_set straight to every scsynth."""

    def send(n: int) -> None:
        packet = osc_message("/n_set", [PART_GROUP_BASE, "seq", float(n)])
        for port in ports:
            controller.sendto(packet, ("127.0.0.1", port))

    return send


async def forward(listen: int, to: list[int]) -> None:
    """A process that does nothing but pass each datagram on: what two hops cost with no work at all."""
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    class Forward(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            for port in to:
                out.sendto(data, ("127.0.0.1", port))

    await asyncio.get_running_loop().create_datagram_endpoint(Forward, local_addr=("127.0.0.1", listen))
    print("forwarding", flush=True)
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def two_hops(controller: socket.socket, ports: list[int]) -> AsyncIterator[Callable[[int], None]]:
    """The floor: the same /n_set through two forwarding processes (on the loop Tutti runs on) to every scsynth."""
    first, second = free_udp_port(), free_udp_port()
    procs = []
    for listen, to in ((second, ports), (first, [second])):
        command = (sys.executable, __file__, "--forward", str(listen), ",".join(map(str, to)))
        procs.append((await started(*command, pattern=r"(forwarding)"))[0])
    try:
        yield direct(controller, [first])
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()


async def cost(values: int, rounds: int) -> None:
    conductor, _gateway = local(load_concert(relay_concert(0)))
    await conductor.start("127.0.0.1")
    packets = [osc_message("/seq", [float(n)]) for n in range(values)]
    per_value = []
    try:
        for _ in range(rounds + 1):  # the first warms up
            start = time.perf_counter()
            for n, packet in enumerate(packets, start=1):
                conductor.osc.receive(packet, ("127.0.0.1", 9))
                if n % 64 == 0:  # the journal's writer and the outputs take their turns, as under a burst
                    await asyncio.sleep(0)
            await asyncio.sleep(0)
            per_value.append((time.perf_counter() - start) / values * 1e6)
    finally:
        await conductor.stop()
    rounds_us = ", ".join(f"{us:.1f}" for us in per_value[1:])
    print(f"a routed value costs the conductor {statistics.median(per_value[1:]):.1f} us (rounds: {rounds_us})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="paced messages per case, for latency")
    parser.add_argument("--burst", type=int, default=2000, help="messages per case, for throughput")
    parser.add_argument("--nodes", default="1,4,8")
    parser.add_argument("--json")
    parser.add_argument("--cost", action="store_true", help="what a value costs the conductor, in one process")
    parser.add_argument("--values", type=int, default=20000, help="values per round, with --cost")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, with --cost")
    parser.add_argument("--forward", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost:
        await cost(args.values, args.rounds)
        return
    if args.forward:
        await forward(int(args.forward[0]), [int(port) for port in args.forward[1].split(",")])
        return

    osc_port = free_udp_port()
    concert = relay_concert(osc_port)
    controller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    controller.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    agents: list[asyncio.subprocess.Process] = []
    results: dict[str, Any] = {}
    seq = 1
    print(f"{'nodes':>5} {'path':<8}{'p50 ms':>9}{'p99 ms':>9}{'msg/s':>10}{'lost':>7}", end="")
    print(f"{'p50 ratio':>11}{'msg/s ratio':>13}{'conductor':>9}{'node':>9}  (hops: p50 ms)")
    try:
        async with jack_server(JACK), running("serve", str(concert)) as url:
            sniffer = Sniffer(set())
            sniffer.conductor_port = int(url.rsplit(":", 1)[1])
            for count in (int(n) for n in args.nodes.split(",")):
                while len(agents) < count:
                    n = len(agents)
                    agents.append(await node_agent(url, TOKEN, f"n{n}", BASE_PORT + n, JACK))
                await nodes_up(url, count)
                ports = [BASE_PORT + i for i in range(count)]
                sniffer.ports = set(ports)

                row = {}
                async with two_hops(controller, ports) as floor:
                    paths = {
                        "direct": direct(controller, ports),
                        "two hops": floor,
                        "relay": relay(controller, osc_port),
                    }
                    for name, send in paths.items():
                        paced = await measure(sniffer, send, ports, seq, args.messages, 0.02)
                        seq += args.messages
                        burst = await measure(sniffer, send, ports, seq, args.burst, 0)
                        seq += args.burst
                        row[name] = {
                            "p50_ms": statistics.median(paced.latencies) * 1000,
                            "p99_ms": percentile(paced.latencies, 0.99) * 1000,
                            "msgs_per_s": burst.rate,
                            "lost": burst.lost,
                        }
                        if paced.conductor:  # the two hops a direct send does not take
                            hop = statistics.median(paced.conductor) * 1000
                            row[name]["conductor_p50_ms"] = hop
                            row[name]["node_p50_ms"] = row[name]["p50_ms"] - hop
                for name, r in row.items():
                    ratio = r["p50_ms"] / row["direct"]["p50_ms"]
                    rate_ratio = r["msgs_per_s"] / row["direct"]["msgs_per_s"]
                    hops = f"{r['conductor_p50_ms']:9.3f}{r['node_p50_ms']:9.3f}" if "conductor_p50_ms" in r else ""
                    print(
                        f"{count:>5} {name:<8}{r['p50_ms']:9.3f}{r['p99_ms']:9.3f}{r['msgs_per_s']:10.0f}"
                        f"{r['lost']:7d}{ratio:10.1f}x{rate_ratio:12.3f}x{hops}"
                    )
                results[str(count)] = row
            sniffer.close()
            for agent in agents:
                agent.terminate()
            await asyncio.gather(*(a.wait() for a in agents))
    finally:
        for agent in agents:
            if agent.returncode is None:
                agent.kill()
    save(args.json, results)


if __name__ == "__main__":
    run(main())  # the forwarders on the loop that tutti serve and tutti node run on
