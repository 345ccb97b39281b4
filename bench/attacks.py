"""Attacks from an open venue network on a playing conductor, and what a well-behaved performer sees.

While the piece plays, a performer syncs its clock every 20 ms and a conductor-role client sends a
parameter change every 100 ms. Each attack then runs in turn:

- 10,000 malformed Socket.IO events, from clients of every role;
- 2,000 garbage WebSocket frames;
- 10,000 random OSC packets, half on UDP and half on TCP (SLIP);
- 1,100 idle OSC TCP connections, held 5 s;
- 1,100 slow HTTP connections (headers a byte at a time), held 5 s;
- 20,000 spoofed one-packet OSC sources (each its own source port and 127.x address, all on the
  allow-list, so each packet is a routed change), about 2,000 a second.

Per attack it prints the performer's sync round trip p50/p99 (ms), whether new joins succeeded,
the conductor's resident memory before and after, and the refusals counted. At the end: changes
sent, acknowledged and found in the conductor's state (nothing lost).

    .venv/bin/python bench/attacks.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from pythonosc import slip

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import rss_kib  # noqa: E402
from bench.harness import concert_file, percentile  # noqa: E402
from conductor.client import TuttiClient  # noqa: E402
from conductor.core.osc import osc_message  # noqa: E402
from tests.test_venue import Raw  # noqa: E402

TOKENS = {"conductor": "c", "performer": "p", "node": "n"}
ROUTES = [{"address": "/fader", "param": "brightness"}]


class Conductor:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, udp: int, tcp: int):
        self.proc, self.url, self.udp, self.tcp = proc, url, udp, tcp
        self.host, self.port = "127.0.0.1", int(url.rsplit(":", 1)[1])

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/api/status") as r:
            return await r.json()  # type: ignore[no-any-return]


async def start() -> Conductor:
    # The whole loopback network is allowed, so spoofed sources reach the routes and the echo list.
    osc = {"udp_port": 0, "tcp_port": 0, "routes": ROUTES, "allow": ["127.0.0.0/8"]}
    concert = concert_file(TOKENS, osc=osc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conductor", "serve", str(concert), "--play",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    udp = tcp = 0
    while line := (await proc.stdout.readline()).decode():
        if m := re.search(r"OSC on UDP (\d+), TCP \(SLIP\) (\d+)", line):
            udp, tcp = int(m[1]), int(m[2])
        if m := re.search(r"listening on (\S+)", line):
            drain = asyncio.create_task(proc.stdout.read())  # keep reading, or a full pipe would stall it
            conductor = Conductor(proc, m[1], udp, tcp)
            conductor.drain = drain  # type: ignore[attr-defined]
            return conductor
    raise RuntimeError("the conductor did not start")


class WellBehaved:
    """A performer syncing every 20 ms, and a console changing a parameter every 100 ms.

    It runs in a process of its own (``--probe URL``), so that the attackers' work in this one
    never delays its exchanges: it prints ``rtt WALL MS`` and ``ack SEQ`` lines, read here.
    """

    def __init__(self, url: str):
        self.url = url
        self.rtts: list[tuple[float, float]] = []  # (wall time, round trip ms)
        self.sent = self.acked = 0
        self.seqs: list[int] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", self.url, stdout=asyncio.subprocess.PIPE
        )
        self.reader = asyncio.create_task(self._read())
        deadline = time.monotonic() + 30
        while not self.rtts and time.monotonic() < deadline:  # noqa: ASYNC110 (lines from another process)
            await asyncio.sleep(0.1)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            kind, *values = line.split()
            if kind == "rtt":
                self.rtts.append((float(values[0]), float(values[1])))
            elif kind == "sent":
                self.sent += 1
            elif kind == "ack":
                self.acked += 1
                self.seqs.append(int(values[0]))

    def between(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.rtts if start <= t <= end]

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()
        await self.reader


async def probe(url: str) -> None:
    player = TuttiClient(url, "performer", TOKENS["performer"], part="drones", name="player")
    console = TuttiClient(url, "conductor", TOKENS["conductor"], name="console")
    await player.connect()
    await console.connect()

    async def changes() -> None:
        while True:
            try:
                answer = await console.command("param", name="density", value=random.random())
            except Exception:
                answer = {}
            print("sent", flush=True)  # once answered (or not): a change in flight at the end is not counted
            if answer.get("ok"):
                print("ack", answer["seq"], flush=True)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(changes())
    try:
        while True:
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                await player.sio.call("sync", time.time(), timeout=5)
                print("rtt", time.time(), (time.perf_counter() - t0) * 1000, flush=True)
            await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - t0)))
    finally:
        task.cancel()


async def joins_succeed(url: str) -> bool:
    try:
        for role, extra in (("audience", {}), ("performer", {"part": "pulses"})):
            client = TuttiClient(url, role, TOKENS.get(role, ""), **extra)
            await asyncio.wait_for(client.connect(), 10)
            await client.close()
        return True
    except Exception:
        return False


# --- the attacks ----------------------------------------------------------------------------------

GARBAGE_EVENTS = [
    '42["command",{"cmd":"play","at":1e999}]', '42["*",{"a":1}]', '42["connect",{}]', '42[{}]', "42[",
    '42["report",{"rtt":0,"offset":0,"error":0,"delay":60}]', '42["health",{"up":true,"cpu":NaN}]',
    '42["control",{"id":"level","value":"loud"}]', '42["sync","x"]', '42["nope",1]', "4garbage",
    '42["command",{"cmd":"seek","position":-1}]', '42["sound",{"address":"/s_new","args":[[1]]}]',
]  # fmt: skip


async def malformed_events(c: Conductor) -> None:
    auths = [
        {"role": "conductor", "token": TOKENS["conductor"]},
        {"role": "performer", "token": TOKENS["performer"], "part": "sketch"},
        {"role": "audience"},
        {"role": "node", "token": TOKENS["node"], "name": "rogue", "synth": False},
    ]
    raws = [await Raw.join(c.url, auth) for auth in auths]
    for i in range(10_000):
        raw = raws[i % len(raws)]
        if raw.ws.closed:  # undecodable packets may close it: join again
            await raw.close()
            raw = raws[i % len(raws)] = await Raw.join(c.url, auths[i % len(auths)])
            ATTACKERS["rejoined"] += 1
        with contextlib.suppress(ConnectionError):
            await raw.send(random.choice(GARBAGE_EVENTS))
        await asyncio.sleep(0)  # let the reader see a close
    for raw in raws:
        await raw.close()


ATTACKERS = {"rejoined": 0}  # attackers' connections the conductor let go, and they opened again


async def garbage_frames(c: Conductor) -> None:
    sent = 0
    async with aiohttp.ClientSession() as session:
        while sent < 2000:
            ws = await session.ws_connect(f"{c.url}/socket.io/?EIO=4&transport=websocket")
            for _ in range(100):
                if ws.closed:
                    break
                try:
                    if random.random() < 0.5:
                        await ws.send_bytes(random.randbytes(random.randint(1, 512)))
                    else:
                        text = "".join(chr(random.randint(32, 0x2FF)) for _ in range(random.randint(1, 200)))
                        await ws.send_str(text)
                except aiohttp.ClientConnectionResetError:
                    break  # the conductor closed it: open another
                sent += 1
                await asyncio.sleep(0)  # let the reader see a close
            await ws.close()


def _random_osc() -> bytes:
    kind = random.random()
    if kind < 0.4:
        return random.randbytes(random.randint(1, 300))
    if kind < 0.7:
        return osc_message(random.choice(["/fader", "/nope", "/x/y"]), [random.choice([1, "s", 0.5, float("nan")])])
    packet = bytearray(osc_message("/fader", [0.5]))
    packet[random.randrange(len(packet))] = random.randrange(256)  # one byte flipped
    return bytes(packet)


async def random_osc_udp(c: Conductor) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(10_000):
        udp.sendto(_random_osc(), (c.host, c.udp))
        if i % 100 == 0:
            await asyncio.sleep(0.001)
    udp.close()


async def random_osc_tcp(c: Conductor) -> None:
    sent = 0
    while sent < 10_000:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(c.host, c.tcp)
            for _ in range(500):
                writer.write(slip.encode(_random_osc()) if random.random() < 0.7 else random.randbytes(64))
                sent += 1
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()


async def _hold(connections: int, connect: Callable[[int], Awaitable[socket.socket | None]], seconds: float) -> None:
    held = [s for s in await asyncio.gather(*(connect(i) for i in range(connections))) if s is not None]
    await asyncio.sleep(seconds)
    for s in held:
        s.close()


async def _tcp(host: str, port: int, first: bytes, local: str = "127.0.0.1") -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.bind((local, 0))
        await asyncio.get_running_loop().sock_connect(s, (host, port))
        if first:
            await asyncio.get_running_loop().sock_sendall(s, first)
        return s
    except OSError:
        s.close()
        return None


async def idle_osc(c: Conductor) -> None:
    await _hold(1100, lambda i: _tcp(c.host, c.tcp, b"", f"127.0.{i // 250}.{2 + i % 250}"), 5.0)


async def slow_http(c: Conductor) -> None:
    await _hold(1100, lambda i: _tcp(c.host, c.port, b"G", f"127.0.{i // 250}.{2 + i % 250}"), 5.0)


async def spoofed_sources(c: Conductor) -> None:
    packet = osc_message("/fader", [0.25])
    for i in range(20_000):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.{1 + i // 65000}.{(i // 250) % 250}.{2 + i % 250}", 0))
        s.sendto(packet, (c.host, c.udp))
        s.close()
        if i % 20 == 0:
            await asyncio.sleep(0.01)  # about 2,000 sources a second: each packet is a routed change


ATTACKS: list[tuple[str, Callable[[Conductor], Awaitable[None]]]] = [
    ("10,000 malformed Socket.IO events", malformed_events),
    ("2,000 garbage WebSocket frames", garbage_frames),
    ("10,000 random OSC packets on UDP", random_osc_udp),
    ("10,000 random OSC packets on TCP (SLIP)", random_osc_tcp),
    ("1,100 idle OSC TCP connections", idle_osc),
    ("1,100 slow HTTP connections", slow_http),
    ("20,000 spoofed OSC sources", spoofed_sources),
]


async def main() -> None:
    logging.getLogger("tutti.client").setLevel(logging.ERROR)  # the attackers' refusals are counted, not shown
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacks hold thousands of sockets
    c = await start()
    good = WellBehaved(c.url)
    await good.start()
    await asyncio.sleep(2.0)
    print(f"{'attack':<40} {'sync p50':>9} {'sync p99':>9} {'joins':>6} {'RSS before':>11} {'RSS after':>10}  refused")
    rows = []
    try:
        for name, attack in ATTACKS:
            before = (await c.status())["rejections"]
            rss = rss_kib(c.proc.pid)
            began = time.time()
            joining = asyncio.create_task(_joins_during(c.url))
            await attack(c)
            joined = await joining
            await _settled(c)
            rtts = good.between(began, time.time())
            state = await c.status()
            after = state["rejections"]
            refused = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            if attack is spoofed_sources:
                refused["(controllers echoed to)"] = state["osc_echo_peers"]
            if ATTACKERS["rejoined"]:
                refused["(attackers joined again)"], ATTACKERS["rejoined"] = ATTACKERS["rejoined"], 0
            row = {
                "attack": name, "p50": percentile(rtts, 0.5), "p99": percentile(rtts, 0.99), "joins": joined,
                "rss_before": rss / 1024, "rss_after": rss_kib(c.proc.pid) / 1024, "refused": refused,
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name:<40} {row['p50']:>7.2f}ms {row['p99']:>7.2f}ms {'yes' if joined else 'NO':>6} "
                f"{row['rss_before']:>8.1f}MiB {row['rss_after']:>7.1f}MiB  "
                + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())),
                flush=True,
            )
    finally:
        await good.stop()
        final = await c.status()
        missing = [s for s in good.seqs if s > final["state"]["seq"]]
        print(
            f"changes: {good.sent} sent, {good.acked} acknowledged, {len(missing)} acknowledged but not in the state; "
            f"final seq {final['state']['seq']}; conductor alive: {c.proc.returncode is None}"
        )
        c.proc.terminate()
        await c.proc.wait()
    print(json.dumps(rows))


async def _settled(c: Conductor) -> None:
    """Until the conductor has worked through what the attack left queued (its counts stop moving)."""
    last: dict[str, int] = {}
    while (now := (await c.status())["rejections"]) != last:
        last = now
        await asyncio.sleep(0.5)


async def _joins_during(url: str) -> bool:
    await asyncio.sleep(0.5)  # once the attack is under way
    return await joins_succeed(url)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(probe(sys.argv[2]))
    else:
        asyncio.run(main())
