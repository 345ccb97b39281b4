"""A Python client of the conductor: joins with a role, keeps its clock in step, follows the state.

Node agents, the replay tool, tests and benchmarks use it; browsers use the same protocol from
``clients/lib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from conductor.core import protocol
from conductor.core.clock import OffsetEstimator
from conductor.core.score import Score
from conductor.core.transport import Change, Transport

log = logging.getLogger("tutti.client")
FAST_UNTIL = 32  # exchanges
FAST_INTERVAL = 0.5  # seconds
CHANGES_KEPT = 1000


class TuttiClient:
    """Connect with ``await client.connect()``; ``client.position()`` is then the score position now.

    Clock sync runs in bursts of ``burst`` exchanges every ``resync`` seconds. ``ca`` is a PEM
    file of certificate authorities to trust for ``https://`` (a concert's private CA).
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
        tls = {"ssl": ssl.create_default_context(cafile=ca)} if ca else {}
        self.sio = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.2, reconnection_delay_max=2, websocket_extra_options=tls
        )
        self.sio.on(protocol.WELCOME, self._welcome)
        self.sio.on(protocol.STATE, self._state)
        self.sio.on(protocol.TRANSPORT, self._state)  # nodes get this instead
        self.sio.on(protocol.ERROR, self._error)
        self._sync_task: asyncio.Task[None] | None = None
        self._closing = False

    async def connect(self) -> None:
        """Connect and wait for the welcome; raises ConnectionError with the conductor's reason."""
        self._joined = asyncio.get_running_loop().create_future()
        await self.sio.connect(self.url, auth=self.auth, transports=["websocket"], wait_timeout=10)
        async with asyncio.timeout(10):
            await self._joined
        await self.sync_burst()
        self._sync_task = asyncio.create_task(self._sync_loop())

    async def close(self) -> None:
        # Not only a cancellation: Python 3.11's wait_for (inside python-socketio's call) can
        # swallow one that lands as an answer arrives, and the loop would sync on for ever.
        self._closing = True
        if self._sync_task:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
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
            self._joined.set_exception(ConnectionError(f"{data.get('code')}: {data.get('message')}"))

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
