"""The state broadcaster: every page is sent the changes, once they are on disk.

A ``state`` event carries changes, not the whole state (``protocol.StateUpdate``); a client
applies them to the snapshot its ``welcome`` gave it. Parameter changes coalesce: a performer's
page draws one frame at a time, so it is sent at most one update per parameter per ``FRAME``
(the latest value always arrives, at most a frame late). The audience, hundreds of phones, is
sent parameter updates at most every ``AUDIENCE_FRAME``: each costs a write per phone, and the
performers' cues and clocks share the conductor's time with them. Transport changes go to
everyone at once, after any parameter changes still held, so every client sees changes in the
order they were accepted.
"""

from __future__ import annotations

import asyncio
import contextlib

from conductor.core import protocol
from conductor.core.performance import Accepted
from conductor.core.transport import Change
from conductor.server.gateway import Out
from conductor.server.joins import AUDIENCE_FOLLOWERS, FOLLOWERS

FRAME = 1 / 60  # seconds: a display frame
AUDIENCE_FRAME = 1 / 20  # seconds between parameter updates to the audience


class _Stream:
    """The changes for one room: parameter changes held until its frame is out."""

    def __init__(self, room: str, frame: float, send: asyncio.Queue[tuple[str, protocol.StateUpdate]]):
        self.room = room
        self.frame = frame
        self.outbox = send
        self.held: dict[str, Change] = {}  # parameter -> its latest change not yet sent
        self.timer: asyncio.TimerHandle | None = None

    def transport(self, change: Change) -> None:
        self.send([change])

    def param(self, change: Change) -> None:
        for name in change.params:
            self.held[name] = change
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.frame, self.send)

    def send(self, then: list[Change] | None = None) -> None:
        """What is held, in the order it was accepted, then ``then``, in one message."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held = {c.seq: c for c in self.held.values()}
        self.held.clear()
        changes = [held[seq] for seq in sorted(held)] + (then or [])
        if changes:
            states = [protocol.ChangeState.model_validate(c.to_json()) for c in changes]
            self.outbox.put_nowait((self.room, protocol.StateUpdate(changes=states)))

    def reset(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.held.clear()


class StateBroadcast:
    """The ``state`` events to the pages; with ``event`` TRANSPORT and the nodes' room, the same for nodes."""

    def __init__(
        self,
        out: Out,
        streams: tuple[tuple[str, float], ...] = ((FOLLOWERS, FRAME), (AUDIENCE_FOLLOWERS, AUDIENCE_FRAME)),
        event: str = protocol.STATE,
    ):
        self.out = out
        self.event = event
        self._outbox: asyncio.Queue[tuple[str, protocol.StateUpdate]] = asyncio.Queue()
        self._streams = [_Stream(room, frame, self._outbox) for room, frame in streams]
        self._sender: asyncio.Task[None] | None = None  # one at a time: messages leave in order
        self.sent = 0  # state messages sent

    def durable(self, accepted: Accepted) -> None:
        change = accepted.change
        for stream in self._streams:
            if change.segment is not None or change.rehearsal is not None:  # rehearsal: not coalesced
                stream.transport(change)
            else:
                stream.param(change)
        self._start()

    def reverted(self, snapshot: protocol.Snapshot) -> None:
        """The conductor went back to the state on disk: every page takes it whole."""
        for stream in self._streams:
            stream.reset()
            self._outbox.put_nowait((stream.room, protocol.StateUpdate(snapshot=snapshot)))
        self._start()

    def _start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while True:
            room, update = await self._outbox.get()
            self.sent += 1
            await self.out.emit(self.event, update.model_dump(exclude_none=True), room=room)

    async def stop(self) -> None:
        for stream in self._streams:
            stream.reset()
        if self._sender:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
