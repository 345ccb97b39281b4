"""Limits on the HTTP connections a peer can hold: a header timeout, caps per address and in all.

On a venue network anyone can open connections to the conductor. One that never finishes its
request headers (sending them a byte at a time: "slowloris") would hold a file descriptor for as
long as it likes, and a thousand of them would leave none for the performers' joins. So every
connection must send its first request's headers within ``HEADER_TIMEOUT``; while it has not,
it is *pending*, and an address may have only ``PENDING_PER_ADDRESS`` pending connections (the
whole server ``PENDING_TOTAL``): past that the oldest pending one is closed, never the new one,
so a real client that sends its headers at once always gets in. An address may hold at most
``PER_ADDRESS`` connections in all (a venue's NAT puts many phones behind one).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("tutti.connections")
HEADER_TIMEOUT = 10.0  # seconds a new connection has to send its first request's headers
PENDING_PER_ADDRESS = 64  # connections one address may have waiting for their headers
PENDING_TOTAL = 1024  # ... and all addresses together
PER_ADDRESS = 4096  # connections one address may hold in all
FD_WANTED = 65536  # file descriptors the conductor asks for (up to the hard limit)


def raise_fd_limit() -> int:
    """Raise this process's open-file limit as far as allowed; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_WANTED if hard == resource.RLIM_INFINITY else min(hard, FD_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d: %s", soft, e)
    return soft


class ConnectionGuard:
    """Watches a web server's connections; ``refuse(code, message)`` counts each one closed."""

    def __init__(self, refuse: Callable[[str, str], None]):
        self.refuse = refuse
        self.pending: OrderedDict[RequestHandler, tuple[str, asyncio.TimerHandle]] = OrderedDict()
        self.pending_from: dict[str, OrderedDict[RequestHandler, None]] = {}
        self.held: dict[str, int] = {}  # address -> connections open
        self.address: dict[RequestHandler, str] = {}
        # Leave room for the journal, OSC and the nodes' cue channels whatever the limit.
        self.pending_total = max(16, min(PENDING_TOTAL, raise_fd_limit() // 4))

    def install(self, server: web.Server) -> None:
        """Hook into an aiohttp server before it accepts its first connection."""
        opened, lost, make_request = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            opened(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None) -> None:
            self._closed(handler)
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: RequestHandler, *args: Any) -> web.BaseRequest:
            self._started(protocol)
            return make_request(message, payload, protocol, *args)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory  # type: ignore[assignment]

    def _opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if self.held.get(address, 0) >= PER_ADDRESS:
            self.refuse("too_many_connections", f"{address} holds {PER_ADDRESS} connections (at most)")
            transport.abort()
            return
        self.held[address] = self.held.get(address, 0) + 1
        self.address[handler] = address
        mine = self.pending_from.setdefault(address, OrderedDict())
        if len(mine) >= PENDING_PER_ADDRESS:
            self._drop(next(iter(mine)), f"{address} has {PENDING_PER_ADDRESS} connections waiting for headers")
        if len(self.pending) >= self.pending_total:
            self._drop(next(iter(self.pending)), f"{self.pending_total} connections waiting for headers")
        timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT, self._expire, handler)
        self.pending[handler] = (address, timer)
        mine[handler] = None

    def _started(self, handler: RequestHandler) -> None:
        if handler in self.pending:
            self._forget(handler)

    def _closed(self, handler: RequestHandler) -> None:
        self._forget(handler)
        if (address := self.address.pop(handler, None)) is not None:
            self.held[address] -= 1
            if not self.held[address]:
                del self.held[address]

    def _forget(self, handler: RequestHandler) -> None:
        entry = self.pending.pop(handler, None)
        if entry is None:
            return
        address, timer = entry
        timer.cancel()
        mine = self.pending_from.get(address)
        if mine is not None:
            mine.pop(handler, None)
            if not mine:
                del self.pending_from[address]

    def _expire(self, handler: RequestHandler) -> None:
        self._drop(handler, f"sent no request headers within {HEADER_TIMEOUT:g} s")

    def _drop(self, handler: RequestHandler, why: str) -> None:
        address = self.pending[handler][0]
        self._forget(handler)
        self.refuse("slow_headers", f"connection from {address} closed: {why}")
        if handler.transport is not None:
            handler.transport.abort()
