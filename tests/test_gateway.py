"""The conductor's network face: what every connection gets, whatever the client offers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web

from conductor.client import TuttiClient
from conductor.core import protocol
from conductor.core.concert import load_concert
from conductor.server.cluster import free_port
from conductor.server.conductor import local
from tests.conftest import TOKENS, ConductorProcess, write_concert
from tests.test_node import until

ENGINEIO = "/socket.io/?EIO=4&transport=websocket"  # a raw Engine.IO WebSocket, as Socket.IO clients open


async def test_websocket_compression_is_declined(conductor: ConductorProcess) -> None:
    # Browsers offer permessage-deflate; accepted, every broadcast would be deflated again for
    # each client (bench/fanout.py: most of a fan-out's cost, and 100 KiB per connection).
    url = conductor.url.replace("http", "ws") + ENGINEIO
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
        assert ws.compress == 0  # the server answered without the extension
        opening = await ws.receive_str()
        assert opening.startswith("0{")  # engine.io's open packet: the connection works


async def test_an_overloaded_conductor_lets_the_audience_go_first(tmp_path: Path) -> None:
    # A low limit, and a console asking for invitations over and over overloads it on purpose: each
    # makes a QR code per part, and for the longest origin allowed each takes some 10 ms on this
    # machine (3 ms for a short one, which a fast machine ran without falling 5 ms behind).
    conductor = ConductorProcess(write_concert(tmp_path, overload_lag=0.005))
    performer = TuttiClient(conductor.url, "performer", TOKENS["performer"], part="drones")
    node = TuttiClient(conductor.url, "node", TOKENS["node"], name="n1")
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    audience = [TuttiClient(conductor.url, "audience", resync=60) for _ in range(30)]
    feeds: list[dict[str, Any]] = []
    boss.sio.on(protocol.CLIENTS, feeds.append)
    try:
        for client in [performer, node, boss]:
            await client.connect()
        for client in audience:  # a busy machine may be running late already: audiences come back
            await _join_when_let_in(client)

        invite = {"base": "http://" + "a" * 187 + ".local"}
        shed: list[TuttiClient] = []
        for _ in range(60):  # until some are let go for it (a quieter machine takes more rounds)
            await asyncio.gather(*(boss.sio.call(protocol.INVITE, invite, timeout=10) for _ in range(20)))
            shed = [a for a in audience if any(e["code"] == "overloaded" for e in a.errors)]
            if len(shed) >= 5:
                break
        assert shed, "nobody was let go"
        assert all(not a.sio.connected for a in shed)
        # The performer, the node and the conductor stayed, and were never refused.
        for client in (performer, node, boss):
            assert client.sio.connected and not client.errors
        assert conductor.status()["rejections"]["overloaded"] >= len(shed)
        # The console says so.
        await until(lambda: any(r["code"] == "overloaded" for f in feeds for r in f["recent"]), 3, "not on the console")
    finally:
        for client in [performer, node, boss, *audience]:
            await client.close()
        conductor.stop()


async def _join_when_let_in(client: TuttiClient) -> None:
    """Join as an audience page does: refused as overloaded, it tries again."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await client.connect()
        except ConnectionError as e:
            if "overloaded" not in str(e) or time.monotonic() > deadline:
                raise
        client.errors.clear()  # refused at the door is not being let go later
        if client.sio.connected:
            await client.sio.disconnect()
        await asyncio.sleep(0.5)


async def _stalled_audience(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An audience client that joins over a raw WebSocket with a tiny receive buffer, then reads nothing."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {ENGINEIO} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    head = await reader.readexactly(2)
    assert (await reader.readexactly(head[1])).startswith(b"0{")  # engine.io's open packet
    writer.write(_masked(b'40{"role": "audience"}'))
    await writer.drain()
    return reader, writer


def _masked(text: bytes) -> bytes:
    """A short client-to-server WebSocket text frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


async def _pong_blindly(writer: asyncio.StreamWriter) -> None:
    """Answer the conductor's pings without reading them: an engine.io pong ("3") every second.

    Without it the stalled client is dropped by the ping timeout (5 + 10 s) instead; on a busy
    machine the changes come slower, and that timeout won the race against ``unread_limit``.
    A pong with no ping outstanding is ignored (python-engineio's ``schedule_ping``).
    """
    while True:
        writer.write(_masked(b"3"))
        await asyncio.sleep(1.0)


async def test_the_status_tells_lateness_that_other_programs_cause(tmp_path: Path) -> None:
    """A conductor that runs late because other programs have its CPU says so: the share of the
    time its event loop was ready to run and waiting, read from the kernel."""
    conductor = ConductorProcess(write_concert(tmp_path))
    assert conductor.proc is not None
    hog = await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
    try:
        await until(lambda: "cpu_wait_share" in conductor.status()["loop_lag_ms"], 10, "no share told")
        assert 0.0 <= conductor.status()["loop_lag_ms"]["cpu_wait_share"] <= 1.0
        # The hog and the conductor's loop on one CPU, the conductor at the lowest priority.
        cpu = min(os.sched_getaffinity(0))
        for pid in (conductor.proc.pid, hog.pid):
            os.sched_setaffinity(pid, {cpu})
        os.setpriority(os.PRIO_PROCESS, conductor.proc.pid, 19)

        def waiting() -> bool:
            return conductor.status()["loop_lag_ms"]["cpu_wait_share"] > 0.3  # since it started: seconds

        await until(waiting, 30, "the conductor's wait for a CPU was not told")
    finally:
        hog.kill()
        await hog.wait()
        conductor.stop()


async def test_a_client_that_reads_nothing_is_let_go_and_the_others_keep_up(tmp_path: Path) -> None:
    # Overload shedding off (overload_lag at its maximum): on a busy machine this flood makes the
    # loop lag past the default 0.1 s, and the audience (the listener too) would be let go for that.
    conductor = ConductorProcess(write_concert(tmp_path, unread_limit=65536, overload_lag=10))
    boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
    listener = TuttiClient(conductor.url, "audience")
    feeds: list[dict[str, Any]] = []
    boss.sio.on(protocol.CLIENTS, feeds.append)

    def audience() -> int:
        return sum(c["role"] == "audience" for c in conductor.status()["clients"])

    ponging: asyncio.Task[None] | None = None
    try:
        await boss.connect()
        await listener.connect()
        stalled, writer = await _stalled_audience(conductor.url)
        ponging = asyncio.create_task(_pong_blindly(writer))
        await until(lambda: audience() == 2, 30, "the stalled client never joined")

        sent = 0
        while not conductor.status()["rejections"].get("slow"):
            # A change is small: the kernel's socket buffers take many before the connection backs up.
            assert sent < 50_000, "the stalled client was never let go"
            await asyncio.gather(*(boss.command("tempo", bpm=60 + (sent + i) % 500) for i in range(50)))
            sent += 50
        # The one that reads on got every change, in order, and stays.
        await until(lambda: listener.transport and listener.transport.seq == sent, 30, "the listener fell behind")
        seqs = [c["seq"] for c in listener.changes]
        assert seqs == list(range(sent - len(seqs) + 1, sent + 1))
        assert listener.sio.connected and not listener.errors
        assert await listener.sync_once()
        # Counted as slow as it leaves; the roster lets it go just after.
        await until(lambda: audience() == 1, 15, "the stalled client is still on the roster")
        # The stalled one was disconnected: what it had not read ends, and then its connection does.
        ponging.cancel()
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(stalled.read(1 << 16), 30):
                pass
        # The console says so, and why.
        slow = lambda: [r for f in feeds for r in f["recent"] if r["code"] == "slow"]  # noqa: E731
        await until(slow, 15, "not on the console")
        assert "unread_limit" in slow()[0]["message"]
    finally:
        if ponging:
            ponging.cancel()
        await listener.close()
        await boss.close()
        conductor.stop()


async def test_a_client_that_only_listens_stays_connected(conductor: ConductorProcess) -> None:
    # Broadcasts and pings go straight to the connection, not through python-engineio's queue,
    # which by itself would close a WebSocket whose queue idled for 15 s (ping interval + timeout).
    url = conductor.url.replace("http", "ws") + ENGINEIO
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert (await ws.receive_str()).startswith("0{")
        await ws.send_str('40{"role": "audience"}')
        pings = 0
        deadline = asyncio.get_running_loop().time() + 17
        while asyncio.get_running_loop().time() < deadline:
            message = await ws.receive(timeout=6)
            assert message.type == aiohttp.WSMsgType.TEXT, f"the connection ended: {message}"
            if message.data == "2":  # engine.io's ping
                pings += 1
                await ws.send_str("3")
        assert pings >= 3
        boss = TuttiClient(conductor.url, "conductor", TOKENS["conductor"])
        await boss.connect()
        try:
            await boss.command("tempo", bpm=77)
            while '"bpm":77' not in (data := await ws.receive_str(timeout=5)) or not data.startswith('42["state"'):
                pass
        finally:
            await boss.close()


async def test_a_fault_while_joining_is_reported_as_the_conductors_own(tmp_path: Path) -> None:
    """A bug met while letting a client in is refused as ``internal`` (and logged), not as the
    client's ``malformed`` packet, and the conductor goes on serving."""
    conductor, gateway = local(load_concert(write_concert(tmp_path)))
    join = conductor.join

    async def faulty(sid: str, auth: Any, source: Any) -> None:
        if isinstance(auth, dict) and auth.get("name") == "unlucky":
            raise RuntimeError("a bug")
        await join(sid, auth, source)

    conductor.join = faulty  # type: ignore[method-assign]
    runner = web.AppRunner(gateway.app)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    unlucky = socketio.AsyncClient(reconnection=False)
    errors: list[dict[str, Any]] = []
    unlucky.on(protocol.ERROR, lambda data: errors.append(data))
    try:
        with contextlib.suppress(socketio.exceptions.ConnectionError):
            await unlucky.connect(url, auth={"role": "audience", "name": "unlucky"}, transports=["websocket"])
        await until(lambda: errors, 5, "no error event")
        assert errors[0]["code"] == "internal" and errors[0]["event"] == "connect", errors
        assert conductor.refusals.counts == {"internal": 1}
        other = TuttiClient(url, "audience")
        await other.connect()
        assert other.welcome["state"]["seq"] == 0
        await other.close()
    finally:
        await unlucky.disconnect()
        await runner.cleanup()
        await conductor.journal.close()
