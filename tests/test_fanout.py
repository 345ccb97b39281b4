"""Broadcast fan-out (``conductor/server/fanout.py``): frames a real WebSocket client reads, and per-client order."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from engineio import packet as eio_packet

from conductor.server.fanout import Outlet, Outlets, frame

SIZES = [0, 125, 126, 65535, 65536, 70000]  # each length encoding, on both sides of its edges


async def test_frames_are_read_by_aiohttps_websocket_client() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.transport is not None
        for n in SIZES:
            request.transport.write(frame("é" * (n // 2) + "x" * (n % 2)))
        request.transport.write(frame(bytes(range(256)) * 300))
        await ws.receive()  # until the client closes
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/") as ws:
            for n in SIZES:
                text = await ws.receive_str(timeout=5)
                assert text == "é" * (n // 2) + "x" * (n % 2)
            assert await ws.receive_bytes(timeout=5) == bytes(range(256)) * 300
    finally:
        await runner.cleanup()


class FakeSocket:
    """What an outlet uses of python-engineio's AsyncSocket."""

    def __init__(self) -> None:
        self.sid = "s1"
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.upgraded, self.upgrading, self.closed = True, False, False

    async def check_ping_timeout(self) -> bool:
        return True

    async def poll(self) -> list[Any]:
        return []


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.backlog = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def abort(self) -> None:
        self.aborted = True


def message(text: str) -> eio_packet.Packet:
    return eio_packet.Packet(eio_packet.MESSAGE, text)


def write_queued(socket: FakeSocket, transport: FakeTransport) -> None:
    """What python-engineio's writer task does: take what is queued, encode it, write it."""
    while not socket.queue.empty():
        transport.write(frame(socket.queue.get_nowait().encode()))


async def test_a_client_gets_its_messages_in_order_whichever_way_they_go() -> None:
    slow: list[str] = []
    socket, transport = FakeSocket(), FakeTransport()
    outlet = Outlet(socket, Outlets(1 << 20, slow.append))
    await socket.send(message("open"))  # before its WebSocket opens: queued
    outlet.transport = transport  # type: ignore[assignment]
    outlet.put(message("a"))  # "open" is still queued: so is this
    assert transport.written == [] and socket.queue.qsize() == 2
    write_queued(socket, transport)
    outlet.put(message("b"), frame("4b"))  # nothing is waiting: straight to the connection
    socket.upgrading = True
    outlet.put(message("c"))  # while upgrading: queued
    socket.upgrading = False
    outlet.put(message("d"))  # "c" is not written yet: queued behind it
    write_queued(socket, transport)
    outlet.put(message("e"))
    assert transport.written == [frame(f"4{x}") for x in ("open", "a", "b", "c", "d", "e")]
    assert socket.queue.empty() and not slow


async def test_a_client_that_leaves_too_much_unread_is_let_go_once() -> None:
    slow: list[str] = []
    socket, transport = FakeSocket(), FakeTransport()
    outlet = Outlet(socket, Outlets(1000, slow.append))
    outlet.transport = transport  # type: ignore[assignment]
    outlet.put(message("a"))
    transport.backlog = 1001
    outlet.put(message("b"))
    outlet.put(message("c"))  # the connection is closing: dropped, not queued for ever
    assert transport.aborted and slow == ["s1"]
    assert len(transport.written) == 2 and socket.queue.empty()


async def test_a_client_s_own_packets_of_one_pass_after_the_first_are_written_together_in_order() -> None:
    socket, transport = FakeSocket(), FakeTransport()
    outlet = Outlet(socket, Outlets(1 << 20, lambda sid: None))
    outlet.transport = transport  # type: ignore[assignment]
    for x in ("ack1", "ack2", "ack3"):  # acknowledgements of one batch of changes, as python-engineio sends them
        await outlet.send(message(x))
    outlet.put(message("state"), frame("4state"))  # a broadcast behind them waits its turn
    assert transport.written == [frame("4ack1")]  # the first at once: a lone answer is not held up
    await asyncio.sleep(0)  # the end of the loop's pass
    assert transport.written[1:] == [b"".join(frame(f"4{x}") for x in ("ack2", "ack3", "state"))]
    outlet.put(message("next"), frame("4next"))  # nothing held: a broadcast goes at once
    await outlet.send(message("sync"))  # a new pass: its first packet goes at once
    assert transport.written[2:] == [frame("4next"), frame("4sync")]
