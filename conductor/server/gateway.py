"""The conductor's face to the network: its pages, the browser code, and the Socket.IO events.

A gateway answers clock sync itself, from its own copy of the conductor's clock, and hands every
other event to the performance (``server.Conductor``): in the same process, or from a web worker
over Redis (``cluster.py``). The performance answers through an emitter, ``Out``: the gateway's
own Socket.IO server, or a write-only Redis manager that reaches every worker's clients.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import socketio
from aiohttp import hdrs, web

from conductor.core import protocol
from conductor.core.clock import ConductorClock
from conductor.core.concert import Concert
from conductor.core.protocol import Rejected
from conductor.files import CLIENTS, VENDOR
from conductor.server import fanout
from conductor.server.allowance import Allowance
from conductor.server.connections import ConnectionGuard
from conductor.server.joins import JOINED

log = logging.getLogger("tutti.gateway")
LAG_EVERY = 0.05  # seconds between looks at how late the event loop runs
LAG_KEPT = 1200  # looks kept for /api/status: the last minute
SCHEDSTAT = "/proc/thread-self/schedstat"  # Linux: its second field is the time spent runnable, not running
SHED_SHARE = 0.1  # of the audience let go each second while overloaded (the latest to join first)
RESERVED = frozenset({"*", "connect", "disconnect"})  # names python-socketio routes to handlers of its own
REFUSALS_PER_SECOND = 20.0  # refused events a client may send, on average ...
REFUSALS_BURST = 100.0  # ... and at once; beyond that it is let go (it may join again)
POLLING_REFUSED = (
    "this conductor serves clients from several web workers, which cannot share a long-polling "
    "session: connect with the WebSocket transport (socket.io-client: transports: ['websocket'])"
)


@dataclass(frozen=True)
class Source:
    """Where a join comes from, and through which worker ("" in a single process)."""

    address: str
    worker: str = ""


class Performance(Protocol):
    """What a gateway needs from the conductor: ``server.Conductor`` or ``cluster.RemotePerformance``."""

    async def join(self, sid: str, auth: Any, source: Source) -> None: ...  # raises Rejected

    async def leave(self, sid: str) -> None: ...

    async def handle(self, sid: str, event: str, args: list[Any]) -> Any: ...  # an ack, or a refusal

    async def count(self, rejected: Rejected, event: str, client: str) -> None: ...  # never raises

    async def status(self) -> dict[str, Any]: ...


class Out(Protocol):
    """Where the performance sends: rooms and single clients (``to`` a sid), wherever they are connected."""

    async def emit(
        self, event: str, data: Any, to: str | None = None, room: str | None = None, skip_sid: list[str] | None = None
    ) -> None: ...

    async def enter_room(self, sid: str, room: str) -> None: ...


class _Server(socketio.AsyncServer):
    """python-socketio logs a traceback for a packet it cannot decode; count and answer it instead."""

    def __init__(self, on_malformed: Callable[[str, Exception], Awaitable[None]], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_malformed = on_malformed

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            await self._on_malformed(eio_sid, e)

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        # Every event a client names goes to the catch-all, which refuses (and counts) what the
        # protocol does not know. Names python-socketio would route elsewhere ("*", "connect",
        # "disconnect", or not a string at all) are renamed so that they cannot reach a handler.
        event = data[0] if isinstance(data, list) and data else None
        if not isinstance(event, str) or event in RESERVED:
            data = [f"(reserved) {str(event)[:50]}", *(data[1:] if isinstance(data, list) else [])]
        await super()._handle_event(eio_sid, namespace, id, data)


@web.middleware
async def _uncompressed(request: web.Request, handler: Any) -> web.StreamResponse:
    """Decline WebSocket compression (permessage-deflate), which browsers offer and aiohttp accepts.

    A broadcast is encoded once but would be deflated again for every client: most of the cost
    of a fan-out, for messages of a few hundred bytes (``bench/fanout.py``). Node's socket.io
    does not compress either.
    """
    if hdrs.SEC_WEBSOCKET_EXTENSIONS in request.headers:
        headers = request.headers.copy()
        del headers[hdrs.SEC_WEBSOCKET_EXTENSIONS]
        request = request.clone(headers=headers)
    return await handler(request)


class Gateway:
    def __init__(
        self,
        concert: Concert,
        clock: ConductorClock,
        client_manager: socketio.AsyncManager | None = None,
        worker: str = "",
    ):
        self.concert = concert
        self.clock = clock
        self.worker = worker
        self.performance: Performance | None = None  # set by ``serve``
        self.lag = 0.0  # how late the event loop runs (90th percentile over the last second)
        self.lags: deque[float] = deque(maxlen=LAG_KEPT)
        self.waits: deque[tuple[float, float]] = deque(maxlen=LAG_KEPT)  # (seconds, of them waiting for a CPU)
        self.overloaded = False
        self._slow: set[str] = set()  # sids let go for reading nothing, counted when they leave
        self._refusals = Allowance(REFUSALS_PER_SECOND, REFUSALS_BURST)  # refused events each client may send
        self._origins = set(concert.settings.cors_origins)
        self._background: set[asyncio.Task[None]] = set()  # counting refusals, letting flooders go
        self.sio = _Server(
            self._malformed,
            async_mode="aiohttp",
            client_manager=client_manager or fanout.FanOut(),
            always_connect=True,  # so the welcome (or the reason for refusal) follows the CONNECT packet
            max_http_buffer_size=1_000_000,  # engine.io drops a client beyond this; we refuse far smaller
            cors_allowed_origins=self._origin_allowed,  # checked on WebSocket and polling alike
            json=protocol.FiniteJson,  # no NaN or infinity in or out
            ping_interval=5,
            ping_timeout=10,
            # Web workers share a port and the kernel picks one for each new connection, so a
            # long-polling session's next request may reach another worker: WebSocket only.
            transports=["websocket"] if worker else ["polling", "websocket"],
        )
        fanout.install(self.sio, concert.settings.unread_limit, self._let_go)
        self.app = web.Application(middlewares=[_uncompressed, *([self._no_polling] if worker else [])])
        self.sio.attach(self.app)
        self.app.on_response_prepare.append(_shared_code)
        self._routes()
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on(protocol.SYNC, self._sync)
        self.sio.on("*", self._forward)

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any]) -> bool:
        """The conductor's own origin (the address the page was served from) and ``cors_origins``.

        Browsers send ``Origin`` and cannot forge it; programs send none and are let in (their
        token is what admits them). A page from anywhere else is refused, and counted.
        """
        if not origin or "*" in self._origins or origin in self._origins:
            return True
        request = environ.get("aiohttp.request")  # its scheme is https under TLS (python-engineio says http)
        own = f"{request.scheme}://{request.host}" if request is not None else ""
        if origin == own:
            return True
        if not environ.get("tutti.counted"):  # python-engineio asks again for the refusal's headers
            environ["tutti.counted"] = True
            self._count_later("bad_origin", f"{origin[:100]} is not this conductor's origin nor in cors_origins")
        return False

    def _count_later(self, code: str, message: str) -> None:
        """Count a refusal from code that cannot wait (the performance may be in another process)."""
        if self.performance is not None:
            task = asyncio.ensure_future(self.performance.count(Rejected(code, message), "connect", ""))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @web.middleware
    async def _no_polling(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With web workers, refuse long-polling with the reason (and what to do), not "Invalid session"."""
        if request.path.startswith("/socket.io") and request.query.get("transport") == "polling":
            return web.Response(status=400, text=POLLING_REFUSED)
        return await handler(request)

    def serve(self, performance: Performance) -> None:
        self.performance = performance

    def _members(self, room: str) -> Collection[str]:
        """The sids in a room of this process, in the order they joined (O(1) to test one)."""
        return self.sio.manager.rooms.get("/", {}).get(room, {})

    @property
    def _performance(self) -> Performance:
        assert self.performance is not None, "Gateway.serve(performance) first"
        return self.performance

    # --- HTTP ---------------------------------------------------------------------------------

    def _routes(self) -> None:
        self.app.router.add_get("/api/status", self._status)
        self.app.router.add_get("/api/score", self._score)
        self.app.router.add_get("/", self._page("index.html"))
        self.app.router.add_get("/perform", self._page("perform.html"))
        self.app.router.add_get("/console", self._page("console.html"))
        self.app.router.add_get("/compose", self._page("compose.html"))
        self.app.router.add_get("/audience", self._page("audience.html"))
        self.app.router.add_get("/score-files/{name:.+}", self._score_file)
        self.app.router.add_static("/clients/", CLIENTS / "lib")
        self.app.router.add_static("/examples/", CLIENTS / "examples")
        # Browser libraries installed from npm at set-up, served from here: a concert needs no internet.
        for name, folder in VENDOR.items():
            if folder.is_dir():
                self.app.router.add_static(f"/vendor/{name}/", folder)

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(CLIENTS / name, headers={"Cache-Control": "no-cache"})

        return page

    async def _score_file(self, request: web.Request) -> web.StreamResponse:
        # Only files the score names (its sketches) are served from the score's folder.
        score = self.concert.score
        name = request.match_info["name"]
        if name not in score.sources:
            raise web.HTTPNotFound(text=f"the score names no file '{name}'")
        # no-cache: with `tutti serve --watch`, a sketch may change between two loads
        return web.Response(
            body=score.sources[name], content_type="text/javascript", headers={"Cache-Control": "no-cache"}
        )

    async def _score(self, request: web.Request) -> web.Response:
        return web.json_response(self.concert.score.to_json())

    async def _status(self, request: web.Request) -> web.Response:
        try:
            status = await self._performance.status()
            # over the last minute, or the last ?lag_seconds= (a bench times its own run)
            seconds = _bounded(request.query.get("lag_seconds"), 1.0, LAG_KEPT * LAG_EVERY)
            looks = round(seconds / LAG_EVERY)
            lags = sorted(list(self.lags)[-looks:]) or [0.0]
            status["loop_lag_ms"] = {  # how late this process's event loop ran
                q: lags[round(f * (len(lags) - 1))] * 1000 for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            }
            if self.waits:
                status["loop_lag_ms"]["cpu_wait_share"] = self._waiting_share(looks)
            return web.json_response(status)
        except Rejected as r:
            return web.json_response(r.payload("status"), status=503)

    # --- Socket.IO ----------------------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        request = environ.get("aiohttp.request")  # python-engineio's REMOTE_ADDR is always 127.0.0.1
        address = str(getattr(request, "remote", None) or environ.get("REMOTE_ADDR", ""))
        try:
            if self.overloaded and isinstance(auth, dict) and auth.get("role") == "audience":
                refused = self._overload()
                await self._performance.count(refused, "connect", sid)
                raise refused
            # The performance puts the client in its rooms and sends its welcome, in that order.
            await self._performance.join(sid, auth, Source(address, self.worker))
            if not self.sio.manager.is_connected(sid, "/"):  # it left while its join was checked
                await self._performance.leave(sid)
        except Rejected as r:
            await self.sio.emit(protocol.ERROR, r.payload("connect"), to=sid)
            return False
        except Exception:  # a fault of the conductor's, not a malformed packet: say so, and refuse
            log.exception("joining %s", sid)
            refused = Rejected("internal", "the conductor could not let you in")
            await self._performance.count(refused, "connect", sid)
            await self.sio.emit(protocol.ERROR, refused.payload("connect"), to=sid)
            return False
        return True

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        self._refusals.forget(sid)
        if sid in self._slow:
            self._slow.discard(sid)
            unread = self.concert.settings.unread_limit
            slow = Rejected("slow", f"left more than {unread} bytes unread (unread_limit): let go")
            await self._performance.count(slow, "broadcast", sid)
        try:
            await self._performance.leave(sid)
        except Rejected as r:
            log.warning("could not report that %s left: %s", sid, r.message)

    async def _sync(self, sid: str, *args: Any) -> Any:
        """The hottest path: answered here, from the same clock as the performance's."""
        t1 = self.clock.now()
        if sid in self._members(JOINED) and len(args) == 1 and protocol.is_number(args[0]):
            return [args[0], t1, self.clock.now()]
        return await self._forward(protocol.SYNC, sid, *args)  # the performance explains the refusal

    async def _forward(self, event: str, sid: str, *args: Any) -> Any:
        try:
            ack = await self._performance.handle(sid, str(event)[:64], list(args))
        except Rejected as r:
            ack = {"ok": False, **r.payload(event)}
        if refusal := protocol.refusal(ack):
            await self.sio.emit(protocol.ERROR, refusal, to=sid)
            await self._refused(sid)
        return ack

    async def _refused(self, sid: str) -> None:
        """A client that keeps sending what is refused is let go: a flood of garbage from one
        connection would otherwise take the event loop from everyone else."""
        if not self._refusals.spend(sid, asyncio.get_running_loop().time()):
            self._refusals.forget(sid)  # let go once: what it still sends is not read
            # After the refusal's acknowledgement has gone out: the client learns why.
            task = asyncio.ensure_future(self._let_flooder_go(sid))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _let_flooder_go(self, sid: str) -> None:
        flooding = Rejected("flooding", f"more than {REFUSALS_PER_SECOND:g} refused events a second: let go")
        await self._performance.count(flooding, "(events)", sid)
        await self.sio.emit(protocol.ERROR, flooding.payload("(events)"), to=sid)
        # The whole connection, not only the namespace: what it still sends is not read.
        if eio_sid := self.sio.manager.eio_sid_from_sid(sid, "/"):
            outlet = self.sio.eio.sockets.outlets.get(eio_sid)
            await self.sio.eio.disconnect(eio_sid)
            if outlet is not None and outlet.transport is not None:
                outlet.transport.close()  # once the close packet is written

    def _let_go(self, eio_sid: str) -> None:
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        log.warning("client %s reads nothing: let go", sid or eio_sid)
        self._slow.add(sid or eio_sid)

    async def _malformed(self, eio_sid: str, error: Exception) -> None:
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        rejected = Rejected("malformed", f"undecodable packet: {error}")
        log.info("malformed packet from %s: %s", sid or eio_sid, error)
        await self._performance.count(rejected, "(packet)", sid or eio_sid)
        if sid:
            await self.sio.emit(protocol.ERROR, rejected.payload("(packet)"), to=sid)
            await self._refused(sid)

    # --- overload: the audience makes way for the performers ---------------------------------------

    def _overload(self) -> Rejected:
        return Rejected(
            "overloaded",
            f"the conductor is overloaded (running {self.lag * 1000:.0f} ms late): "
            "audience places are freed for the performers; try again in a minute",
        )

    async def _watch_load(self) -> None:
        """Measure how late the event loop runs; while it is too late, let audience clients go.

        A timer set ``LAG_EVERY`` from now fires when the loop gets to it: how much later than its
        time is how late everything else runs. Its time is taken from ``loop.time()`` (uvloop's
        is read once a turn, in whole milliseconds, so up to a millisecond early), and when it
        fired from ``time.monotonic``, the same clock to the nanosecond.
        """
        loop = asyncio.get_running_loop()
        lags: deque[float] = deque(maxlen=round(1 / LAG_EVERY))
        shed_at = 0.0
        since, waited = time.monotonic(), _waited()
        while True:
            due = loop.time() + LAG_EVERY
            await asyncio.sleep(LAG_EVERY)
            lags.append(max(0.0, time.monotonic() - due))
            self.lags.append(lags[-1])
            if waited is not None and (now_waited := _waited()) is not None:
                self.waits.append((time.monotonic() - since, now_waited - waited))
                since, waited = time.monotonic(), now_waited
            self.lag = sorted(lags)[int(0.9 * (len(lags) - 1))]
            self.overloaded = len(lags) == lags.maxlen and self.lag > self.concert.settings.overload_lag
            if self.overloaded and time.monotonic() - shed_at >= 1.0:
                shed_at = time.monotonic()
                await self._shed()

    def _waiting_share(self, looks: int = round(1 / LAG_EVERY)) -> float:
        """Of the last ``looks`` (a second), the share the event loop was ready to run while other
        programs had the CPUs."""
        recent = list(self.waits)[-looks:]
        return sum(w for _, w in recent) / sum(t for t, _ in recent) if recent else 0.0

    async def _shed(self) -> None:
        audience = list(self._members("role:audience"))
        refused = self._overload()
        for sid in audience[-math.ceil(len(audience) * SHED_SHARE) :] if audience else []:
            log.warning(
                "overloaded (%.0f ms late, waiting for a CPU %.0f%% of the last second): letting audience client %s go",
                self.lag * 1000, self._waiting_share() * 100, sid,
            )  # fmt: skip
            await self._performance.count(refused, "overload", sid)
            await self.sio.emit(protocol.ERROR, refused.payload("overload"), to=sid)
            await self.sio.disconnect(sid)

    # --- running ------------------------------------------------------------------------------

    async def start(self, hosts: list[str], port: int, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
        """Listen on every host; ``reuse_port`` lets several workers share one port (the kernel spreads joins)."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        assert runner.server is not None
        ConnectionGuard(self._count_later).install(runner.server)
        self._load = asyncio.create_task(self._watch_load())
        bound = port
        for host in hosts:
            site = web.TCPSite(runner, host, bound, ssl_context=self.concert.tls_context(), reuse_port=reuse_port)
            await site.start()
            if bound == 0:  # an ephemeral port: every host shares the first one picked
                server = site._server
                bound = server.sockets[0].getsockname()[1] if server and server.sockets else 0
        return runner, bound

    async def stop(self, runner: web.AppRunner) -> None:
        """Say goodbye to this gateway's clients, then stop serving."""
        self._load.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        welcomed = list(self._members(JOINED))
        # python-socketio's shutdown leaves connections open, and aiohttp would wait on each.
        for sid in welcomed:
            await self.sio.disconnect(sid)
        await self.sio.shutdown()
        await runner.cleanup()


SHARED_CODE = ("/clients/", "/vendor/", "/score-files/")


async def _shared_code(request: web.Request, response: web.StreamResponse) -> None:
    """Browser code may be loaded from any origin: a global-mode sketch's sandboxed frame has an
    opaque one, and loads its modules (which need CORS) from here. The code holds no secret."""
    if request.path.startswith(SHARED_CODE):
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"


def _waited() -> float | None:
    """Seconds this thread has been ready to run while others had the CPUs (None where not told)."""
    try:
        with open(SCHEDSTAT, "rb") as f:  # procfs: read from the kernel's memory, at once
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _bounded(text: str | None, low: float, high: float) -> float:
    """A number from a query string, within [low, high]; ``high`` when absent or not a finite number."""
    try:
        value = float(text) if text is not None else high
    except ValueError:
        return high
    return min(max(value, low), high) if math.isfinite(value) else high
