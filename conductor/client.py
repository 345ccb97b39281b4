"""A Python client of the conductor: joins with a role, keeps its clock in step, follows the state.

Node agents, the replay tool, tests and benchmarks use it; browsers use the same protocol from
``clients/lib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
import yarl

from conductor.core import protocol
from conductor.core.clock import OffsetEstimator
from conductor.core.score import Score
from conductor.core.transport import Change, Transport

log = logging.getLogger("tutti.client")
FAST_UNTIL = 32  # exchanges
FAST_INTERVAL = 0.5  # seconds
CHANGES_KEPT = 1000
RETRY_FIRST = 0.5  # seconds before the first retry of a join that failed ...
RETRY_MAX = 10.0  # ... doubling up to this


class TuttiClient:
    """Connect with ``await client.connect()``; ``client.position()`` is then the score position now.

    Clock sync runs in bursts of ``burst`` exchanges every ``resync`` seconds. ``ca`` is a PEM
    file of certificate authorities to trust for ``https://`` (a concert's private CA).
    With ``rejoin``, it never gives up: ``connect`` retries (with backoff) until the conductor
    lets it in, and it joins again whenever it is let go or refused, as node agents and
    ``tutti status`` must through a concert.
    """

    def __init__(
        self,
        url: str,
        role: str,
        token: str = "",
        *,
        part: str | None = None,
        site: str | None = None,
        name: str | None = None,
        parts: list[str] | None = None,
        synth: bool | None = None,
        ca: str | None = None,
        burst: int = 8,
        spacing: float = 0.02,
        resync: float = 3.0,
        estimator: OffsetEstimator | None = None,
        rejoin: bool = False,
    ):
        self.url = url
        self.auth = {
            k: v
            for k, v in {
                "role": role,
                "token": token,
                "part": part,
                "site": site,
                "name": name,
                "parts": parts,
                "synth": synth,
            }.items()
            if v is not None
        }
        self.burst, self.spacing, self.resync = burst, spacing, resync
        self.clock = estimator or OffsetEstimator()
        self.transport: Transport | None = None
        self.you: dict[str, Any] = {}
        self.welcome: dict[str, Any] = {}  # the latest welcome, as received
        self.on_welcome: Callable[[], Awaitable[None]] | None = None  # after each (re)join
        self.on_state: Callable[[], None] | None = None  # after each state or transport update
        self.errors: list[dict[str, Any]] = []
        self.sync_timeouts = 0  # exchanges that got no answer in time
        # The latest state changes received, each with its local receipt time (bounded: a client
        # may follow a fader at 100 values a second for hours).
        self.changes: deque[dict[str, Any]] = deque(maxlen=CHANGES_KEPT)
        self._joined: asyncio.Future[None] | None = None
        self._ssl = ssl.create_default_context(cafile=ca) if ca else None
        tls = {"ssl": self._ssl} if self._ssl else {}
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.2, reconnection_delay_max=2, websocket_extra_options=tls
        )
        self.sio.on(protocol.WELCOME, self._welcome)
        self.sio.on(protocol.STATE, self._state)
        self.sio.on(protocol.TRANSPORT, self._state)  # nodes get this instead
        self.sio.on(protocol.ERROR, self._error)
        self.sio.on("disconnect", self._disconnected)
        self.rejoin = rejoin
        self.retries = 0  # joins that failed and were tried again
        self._sync_task: asyncio.Task[None] | None = None
        self._rejoin_task: asyncio.Task[None] | None = None
        self._closing = False

    async def connect(self) -> None:
        """Connect and wait for the welcome; raises ConnectionError with the conductor's reason
        (unless ``rejoin``: then it tries again, with backoff, until it is in)."""
        await self._join()
        await self.sync_burst()
        self._sync_task = asyncio.create_task(self._sync_loop())

    async def _join(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                return await self._join_once()
            except ConnectionError as e:
                if not self.rejoin or self._closing:
                    await self._let_go()
                    raise
                self.retries += 1
                log.warning("%s; trying again in %.1f s", e, delay)
            with contextlib.suppress(Exception):
                await self.sio.disconnect()
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # spread a crowd's retries out
            delay = min(delay * 2, RETRY_MAX)

    async def _join_once(self) -> None:
        self._joined = asyncio.get_running_loop().create_future()
        try:
            await self.sio.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError as e:
            raise ConnectionError(await why_unreachable(self.url, self._ssl)) from e
        try:
            async with asyncio.timeout(10):
                await self._joined
        except TimeoutError:
            raise ConnectionError(f"{self.url}: no welcome within 10 s") from None

    async def _let_go(self) -> None:
        """Close what a failed join left open, so that nothing is left for a closed event loop."""
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
        if self.sio.eio.http and not self.sio.eio.external_http:
            await self.sio.eio.http.close()

    async def _disconnected(self, reason: Any = None) -> None:
        # python-socketio reconnects by itself after a lost connection, but not after the
        # conductor let this client go or refused it (a restart, overload): that is done here.
        if not self.rejoin or self._closing or reason != self.sio.reason.SERVER_DISCONNECT:
            return
        if self._rejoin_task is None or self._rejoin_task.done():
            self._rejoin_task = asyncio.create_task(self._join_again())

    async def _join_again(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()  # let python-socketio finish closing the refused connection
        await asyncio.sleep(RETRY_FIRST * random.uniform(0.8, 1.2))
        if not self._closing:
            await self._join()

    async def close(self) -> None:
        # Not only a cancellation: Python 3.11's wait_for (inside python-socketio's call) can
        # swallow one that lands as an answer arrives, and the loop would sync on for ever.
        self._closing = True
        for task in (self._sync_task, self._rejoin_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.sio.disconnect()

    async def _welcome(self, data: dict[str, Any]) -> None:
        self.you = data["you"]
        self.welcome = data
        self.transport = Transport(Score.model_validate(data["score"]))
        self.transport.restore(data["state"])
        if self.on_welcome:
            await self.on_welcome()
        if self._joined and not self._joined.done():
            self._joined.set_result(None)

    async def _state(self, data: dict[str, Any]) -> None:
        received = time.time()
        if self.transport is None:
            return
        if data.get("snapshot"):
            self.transport.restore(data["snapshot"])
        for change in data.get("changes", []):
            self.changes.append({**change, "received": received})
            if change["seq"] > self.transport.seq:  # the welcome's snapshot may hold it already
                self.transport.apply(Change.from_json(change))
        if self.on_state:
            self.on_state()

    async def _error(self, data: dict[str, Any]) -> None:
        log.warning("conductor refused %s: %s", data.get("event"), data.get("message"))
        self.errors.append(data)
        if data.get("event") == "connect" and self._joined and not self._joined.done():
            self._joined.set_exception(
                ConnectionError(f"{self.url} refused the join: {data.get('code')}: {data.get('message')}")
            )

    async def sync_once(self) -> bool:
        t0 = self.clock.local()
        reply = await self.sio.call(protocol.SYNC, t0, timeout=5)
        t3 = self.clock.local()
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == t0):
            return False
        return self.clock.add(t0, reply[1], reply[2], t3)

    async def sync_burst(self, n: int | None = None) -> None:
        for _ in range(n or self.burst):
            if self._closing:
                return
            try:
                await self.sync_once()
            except socketio.exceptions.TimeoutError:
                self.sync_timeouts += 1
            except socketio.exceptions.BadNamespaceError:
                pass  # reconnecting: the next burst will sync
            await asyncio.sleep(self.spacing)

    async def _sync_loop(self) -> None:
        while not self._closing:
            # Often until the estimate rests on enough exchanges, then every `resync` seconds.
            await asyncio.sleep(FAST_INTERVAL if self.clock.samples < FAST_UNTIL else self.resync)
            if not self.sio.connected:
                continue
            await self.sync_burst()
            with contextlib.suppress(socketio.exceptions.BadNamespaceError):
                await self.sio.emit(
                    protocol.REPORT,
                    {
                        "rtt": min(self.clock.rtt, 60.0),
                        "offset": self.clock.offset,
                        "error": min(self.clock.error, 60.0),
                        "delay": min(self.clock.delay, 60.0),
                    },
                )

    async def command(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send a transport command; returns the conductor's answer ({"ok": ...})."""
        return await self.sio.call(protocol.COMMAND, {"cmd": cmd, **fields}, timeout=5)

    async def sound(self, address: str, args: list[Any], **fields: Any) -> dict[str, Any]:
        """Play a sound outside the score (conductor role): the conductor's answer, with its time ``t``."""
        return await self.sio.call(protocol.SOUND, {"address": address, "args": args, **fields}, timeout=5)

    def now(self) -> float:
        """Conductor time now, by this client's clock estimate."""
        return self.clock.now()

    def position(self, conductor_t: float | None = None) -> float:
        assert self.transport is not None, "not joined"
        return self.transport.position(self.now() if conductor_t is None else conductor_t)


async def why_unreachable(url: str, context: ssl.SSLContext | None = None) -> str:
    """One line that says why a conductor cannot be reached: refused, TLS (which part), or HTTP."""
    address = yarl.URL(url)
    host, port, secure = address.host or "", address.port or 80, address.scheme in ("https", "wss")
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=(context or ssl.create_default_context()) if secure else None
            )
            if not secure:  # does it answer plain HTTP? A TLS server answers garbage or nothing
                writer.write(f"GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                first = await reader.readline()
                if not first.startswith(b"HTTP/"):
                    writer.close()
                    return f"{url}: the conductor speaks HTTPS here: use https://"
            writer.close()
    except ssl.SSLCertVerificationError as e:
        if e.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return f"{url}: the certificate is not for {host} (name mismatch): {e.verify_message}"
        return f"{url}: certificate from an unknown authority ({e.verify_message}): give the concert's CA with --ca"
    except ssl.SSLError as e:
        if "WRONG_VERSION_NUMBER" in str(e) or "record layer" in str(e) or "packet length" in str(e):
            return f"{url}: the conductor speaks plain HTTP here: use http://"
        return f"{url}: TLS failed: {e.reason or e}"
    except (TimeoutError, ConnectionError) as e:
        if secure and isinstance(e, ConnectionResetError | TimeoutError):
            return f"{url}: the TLS handshake got no answer (is it plain HTTP? use http://)"
        return (
            f"{url}: cannot reach the conductor: {e.strerror or e.__class__.__name__}"
            if isinstance(e, OSError)
            else f"{url}: no answer within 5 s"
        )
    except OSError as e:
        return f"{url}: cannot reach the conductor: {e.strerror or e}"
    return f"{url}: the conductor did not accept the Socket.IO connection"
