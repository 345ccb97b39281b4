"""Site-link emulation: proxies on loopback that add delay, jitter and loss between sites.

The kernel here has no netem, so conditions are made in the application. Both proxies delay what
they forward by ``delay`` plus a uniform random ``jitter``, independently in each direction; the
answers (from ``target`` back) may have a delay and jitter of their own (``delay_back``,
``jitter_back``), as a route often has.

- TCP (Socket.IO to browsers and nodes): each burst of data is delayed and never reordered, as a
  TCP stream cannot be. A lost segment is what TCP makes of it: it arrives a retransmission
  timeout late, and everything behind it waits.
- UDP (OSC, JackTrip): each datagram is delayed on its own, so jitter may reorder them, and a
  lost one is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from typing import Any

BURST_GAP = 0.001  # seconds between reads that still count as one burst
MIN_RTO = 0.2  # seconds: Linux's least TCP retransmission timeout


TIMER_SLACK = 0.0015  # asyncio's timers wake in whole milliseconds (epoll); finish the wait by yielding


async def sleep_until(at: float) -> None:
    """Sleep until loop time ``at``, to a few tens of microseconds rather than a millisecond."""
    loop = asyncio.get_running_loop()
    if at - loop.time() > TIMER_SLACK:
        await asyncio.sleep(at - loop.time() - TIMER_SLACK)
    while loop.time() < at:  # noqa: ASYNC110 - a deliberate short spin, yielding to other tasks
        await asyncio.sleep(0)


class _Proxy:
    """A link's conditions; ``port`` is where it listens once started."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        delay_back: float | None = None,
        jitter_back: float | None = None,
    ):
        self.target = (target_host, target_port)
        self.delay, self.jitter, self.loss = delay, jitter, loss
        self.delay_back, self.jitter_back = delay_back, jitter_back  # None: as the way there, whatever it is now
        self.listen = (listen_host, listen_port)
        self.random = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def back(self) -> tuple[float, float]:
        """The delay and jitter of the answers."""
        return (
            self.delay if self.delay_back is None else self.delay_back,
            self.jitter if self.jitter_back is None else self.jitter_back,
        )

    def lag(self, back: bool = False) -> float:
        delay, jitter = self.back if back else (self.delay, self.jitter)
        return delay + self.random.uniform(0, jitter)


class TcpDelayProxy(_Proxy):
    _server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.target)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await self._connect()
        except OSError:
            client_w.close()
            return
        for reader, writer, back in ((client_r, server_w, False), (server_r, client_w, True)):
            task = asyncio.create_task(self._pipe(reader, writer, back))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, back: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                at, data = await queue.get()
                await sleep_until(at)
                if not data:
                    break
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(release())
        last = arrived = 0.0
        try:
            while data := await reader.read(65536):
                now = loop.time()
                # Reads that follow one another closely are one burst (a message in several reads):
                # they travel together, as packets sent back to back do.
                if now - arrived > BURST_GAP:
                    lag = self.lag(back)
                    if self.random.random() < self.loss:  # lost once: resent after a timeout
                        lag += max(MIN_RTO, self.delay + self.jitter + sum(self.back))
                    last = max(last, now + lag)
                arrived = now
                queue.put_nowait((last, data))
            queue.put_nowait((last, b""))
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class UdpDelayProxy(_Proxy):
    """Forwards datagrams to ``target`` and its answers back, each delayed, maybe lost."""

    lost = 0
    _front: asyncio.DatagramTransport | None = None

    def __init__(self, target_host: str, target_port: int, **conditions: Any):
        super().__init__(target_host, target_port, **conditions)
        self._backs: dict[tuple[str, int], asyncio.DatagramTransport] = {}  # one upstream socket per sender

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        proxy = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                proxy._spawn(proxy._forward(data, addr))

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=self.listen)
        self.port = self._front.get_extra_info("sockname")[1]
        return self.port

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _later(self, back: bool = False) -> bool:
        """Wait out one datagram's delay; False if it is lost."""
        if self.random.random() < self.loss:
            self.lost += 1
            return False
        await sleep_until(asyncio.get_running_loop().time() + self.lag(back))
        return True

    async def _forward(self, data: bytes, sender: tuple[str, int]) -> None:
        back = self._backs.get(sender)
        if back is None:
            loop = asyncio.get_running_loop()
            proxy = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, answer: bytes, addr: tuple[str, int]) -> None:
                    proxy._spawn(proxy._answer(answer, sender))

            back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
            self._backs[sender] = back
        if await self._later():
            back.sendto(data)

    async def _answer(self, data: bytes, sender: tuple[str, int]) -> None:
        if await self._later(back=True) and self._front:
            self._front.sendto(data, sender)

    async def close(self) -> None:
        for transport in [self._front, *self._backs.values()]:
            if transport:
                transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run(
    listen: str,
    to: str,
    delay: float,
    jitter: float,
    loss: float,
    udp: bool,
    seed: int | None,
    delay_back: float | None = None,
    jitter_back: float | None = None,
) -> None:
    """Run one link (TCP, or UDP) until cancelled, printing the port it listens on."""
    host, port = _address(listen)
    target = _address(to)
    kind = UdpDelayProxy if udp else TcpDelayProxy
    proxy = kind(
        *target, delay=delay, jitter=jitter, loss=loss, listen_host=host, listen_port=port, seed=seed,
        delay_back=delay_back, jitter_back=jitter_back,
    )  # fmt: skip
    bound = await proxy.start()
    back = proxy.back
    print(
        f"emulating a link {host}:{bound} -> {to} ({'UDP' if udp else 'TCP'}): delay {delay * 1000:g} ms"
        f" + 0..{jitter * 1000:g} ms jitter there, {back[0] * 1000:g} ms + 0..{back[1] * 1000:g} ms back,"
        f" {loss * 100:g} % loss",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()
