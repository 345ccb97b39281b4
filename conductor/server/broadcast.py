"""The state broadcaster: every page is sent the changes, once they are on disk.

A ``state`` event carries changes, not the whole state (``protocol.StateUpdate``); a client
applies them to the snapshot its ``welcome`` gave it. Parameter changes coalesce: a page draws
one frame at a time, so it is sent at most one update per parameter per ``FRAME`` (the latest
value always arrives, at most a frame late). Transport changes go at once, after any parameter
changes still held, so every client sees changes in the order they were accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from conductor.core import protocol
from conductor.core.performance import Accepted
from conductor.core.transport import Change
from conductor.server.gateway import Out
from conductor.server.joins import FOLLOWERS

FRAME = 1 / 60  # seconds: a display frame


class StateBroadcast:
    def __init__(self, out: Out):
        self.out = out
        self._held: dict[str, Change] = {}  # parameter -> its latest change not yet sent
        self._pending: list[Change] = []  # in order, for the next message
        self._timer: asyncio.TimerHandle | None = None
        self._outbox: deque[protocol.StateUpdate] = deque()
        self._sender: asyncio.Task[None] | None = None  # one at a time: messages leave in order
        self.sent = 0  # state messages sent

    def durable(self, accepted: Accepted) -> None:
        change = accepted.change
        if change.segment is not None:
            self._release()
            self._pending.append(change)
            self._send()
        else:
            for name in change.params:
                self._held[name] = change
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(FRAME, self._send)

    def reverted(self, snapshot: protocol.Snapshot) -> None:
        """The conductor went back to the state on disk: every page takes it whole."""
        self._held.clear()
        self._pending.clear()
        self._emit(protocol.StateUpdate(snapshot=snapshot))

    def _release(self) -> None:
        """Held parameter changes join the next message, in the order they were accepted."""
        changes = {c.seq: c for c in self._held.values()}
        self._held.clear()
        self._pending.extend(changes[seq] for seq in sorted(changes))

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        changes, self._pending = self._pending, []
        if changes:
            self._emit(
                protocol.StateUpdate(changes=[protocol.ChangeState.model_validate(c.to_json()) for c in changes])
            )

    def _emit(self, update: protocol.StateUpdate) -> None:
        self._outbox.append(update)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._outbox:
            update = self._outbox.popleft()
            self.sent += 1
            await self.out.emit(protocol.STATE, update.model_dump(exclude_none=True), room=FOLLOWERS)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sender:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
