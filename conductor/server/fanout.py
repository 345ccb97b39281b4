"""Broadcasts framed once and written straight to each client's WebSocket.

python-engineio gives every client a queue and a writer task, and python-socketio sends a
broadcast to each client from a task of its own: a transport change to 2000 clients costs 4000
task switches and 2000 frame encodings before the last client sees it. Here a broadcast is
framed once and written to each client's connection in one pass of the event loop.

Order is kept: a client's message goes the direct way only when nothing older is still in its
python-engineio queue (before its WebSocket opens, or while it upgrades from polling); otherwise
it joins that queue. A client that reads nothing lets data pile up in its connection; past
``limit`` bytes it is let go, and ``on_slow`` is told, rather than the conductor holding its
backlog forever.

This works inside python-engineio, in three places: its table of sockets (``Outlets``), its
aiohttp WebSocket driver (``_WebSocket``), and each socket's ``send`` and ``poll`` (``Outlet``).
``pyproject.toml`` pins the minor versions it was tested with; ``tests/test_fanout.py``,
``tests/test_gateway.py`` and ``bench/soak.py`` are what to run on an upgrade.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.exceptions import QueueEmpty
from socketio import packet as sio_packet

CHUNK = 100  # clients written to before the event loop gets a turn


def frame(data: str | bytes) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2): text for str, binary for bytes."""
    opcode, payload = (0x81, data.encode()) if isinstance(data, str) else (0x82, data)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", opcode, 126, n)
    else:
        head = struct.pack("!BBQ", opcode, 127, n)
    return head + payload


class Outlet:
    """One client's way out: its python-engineio queue, and its WebSocket once that is open."""

    def __init__(self, socket: Any, outlets: Outlets):
        self.socket = socket
        self.outlets = outlets
        self.transport: asyncio.Transport | None = None
        self.queued = 0  # packets in the python-engineio queue that are not yet written
        self._held: list[bytes] | None = None  # after a packet of this pass: the rest, until its end
        self._poll = socket.poll
        socket.send = self.send  # every packet for this client comes through here
        socket.poll = self.poll

    async def send(self, pkt: eio_packet.Packet) -> None:
        """What python-engineio's ``AsyncSocket.send`` does, the direct way when it can. The first
        of a client's own packets in a pass of the event loop goes at once (a clock sync's answer
        is not held up); the rest of the pass's are written together at its end: a batch of changes
        on disk at once answers each of its commands in the same pass, and one write for them all
        costs a fraction of one each."""
        if await self.socket.check_ping_timeout():
            self.put(pkt, held=True)

    async def poll(self) -> list[eio_packet.Packet]:
        """python-engineio's ``AsyncSocket.poll``, which gives up when its queue idles for 15 s.

        Its WebSocket writer then closes the connection: right for a queue that carries every
        packet, pings included, but here the queue idles while packets go the direct way.
        """
        while True:
            try:
                return await self._poll()
            except QueueEmpty:  # also what python-engineio makes of a cancellation
                task = asyncio.current_task()
                gone = self.transport is None or self.transport.is_closing() or self.socket.closed
                if gone or (task and task.cancelling()):
                    raise

    def put(self, pkt: eio_packet.Packet, framed: bytes | None = None, held: bool = False) -> None:
        """Write a packet to the client (``held``: at the end of the loop's pass), or queue it for
        python-engineio's writer while the WebSocket is not open yet."""
        s, transport = self.socket, self.transport
        if s.closed:
            return
        if transport is None or self.queued or not s.upgraded or s.upgrading:
            self.queued += 1
            s.queue.put_nowait(_Queued(pkt, self))
        elif not transport.is_closing():
            data = framed or frame(pkt.encode())
            if self._held is not None and (self._held or held):  # behind held frames, a broadcast too
                self._held.append(data)
            else:
                self._write(transport, data)
                if held:  # the pass's first went at once; the rest of the pass's are held to its end
                    self._held = []
                    asyncio.get_running_loop().call_soon(self._write_held)

    def _write_held(self) -> None:
        held, self._held = self._held, None
        if held and self.transport is not None and not self.transport.is_closing():  # a closing packet too
            self._write(self.transport, b"".join(held))

    def _write(self, transport: asyncio.Transport, data: bytes) -> None:
        transport.write(data)
        if transport.get_write_buffer_size() > self.outlets.limit:
            transport.abort()  # python-engineio sees the connection end and disconnects the client
            self.outlets.on_slow(self.socket.sid)


class _Queued(eio_packet.Packet):
    """A packet in python-engineio's queue: written once the writer (or a poll) encodes it."""

    def __init__(self, pkt: eio_packet.Packet, outlet: Outlet):
        self.__dict__.update(pkt.__dict__)
        self.outlet = outlet

    def encode(self, b64: bool = False) -> Any:
        self.outlet.queued -= 1
        return super().encode(b64)


class Outlets(dict[str, Any]):
    """python-engineio's table of sockets, with an ``Outlet`` for each one."""

    def __init__(self, limit: int, on_slow: Callable[[str], None]):
        super().__init__()
        self.limit = limit
        self.on_slow = on_slow
        self.outlets: dict[str, Outlet] = {}

    def __setitem__(self, sid: str, socket: Any) -> None:
        super().__setitem__(sid, socket)
        self.outlets[sid] = Outlet(socket, self)

    def __delitem__(self, sid: str) -> None:
        super().__delitem__(sid)
        self.outlets.pop(sid, None)


class _WebSocket(eio_aiohttp.WebSocket):
    """python-engineio's aiohttp WebSocket, which also tells the client's outlet its connection."""

    def __init__(self, handler: Any, server: Any):
        async def opened(ws: eio_aiohttp.WebSocket) -> Any:
            if outlet := server.sockets.outlets.get(handler.__self__.sid):
                outlet.transport = ws.environ["aiohttp.request"].transport
            return await handler(ws)

        super().__init__(opened, server)


def install(sio: socketio.AsyncServer, limit: int, on_slow: Callable[[str], None]) -> None:
    """Give a server's clients outlets; ``on_slow`` gets the engine.io sid of each client let go."""
    sio.eio.sockets = Outlets(limit, on_slow)
    sio.eio._async = {**sio.eio._async, "websocket": _WebSocket}  # a copy: the module's dict is shared


class FanOut(socketio.AsyncManager):
    """python-socketio's manager, with a broadcast framed once and put straight into each outlet."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        outlets = getattr(self.server.eio.sockets, "outlets", None)
        participants = list(self.get_participants(namespace, to or room))
        if not participants:  # an empty room (no audience yet): nothing to encode
            return
        encoded = None
        if not callback and outlets is not None:  # an ack needs an id per client: python-socketio's way
            args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
            encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
        if encoded is None or isinstance(encoded, list):  # a list: binary attachments
            await super().emit(event, data, namespace, room, skip_sid, callback, to, **kwargs)
            return
        pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        framed = frame(pkt.encode())
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        for i, (sid, eio_sid) in enumerate(participants, start=1):
            if sid not in skip and (outlet := outlets.get(eio_sid)):
                outlet.put(pkt, framed)
            if i % CHUNK == 0 and i < len(participants):
                # A thousand writes in one go would hold up the event loop (and every cue and sync
                # behind it) for several milliseconds: give it a turn between chunks.
                await asyncio.sleep(0)


class RedisFanOut(socketio.AsyncRedisManager, FanOut):
    """A worker's manager: broadcasts arrive over Redis and leave through ``FanOut``."""
