"""Site-link emulation: proxies on loopback that add delay, jitter and loss between sites.

The kernel here has no netem, so conditions are made in the application. A TCP proxy delays
each burst of data it forwards by ``delay`` plus a uniform random ``jitter`` (independently in
each direction) and never reorders, as a TCP stream cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

BURST_GAP = 0.001  # seconds between reads that still count as one burst


TIMER_SLACK = 0.0015  # asyncio's timers wake in whole milliseconds (epoll); finish the wait by yielding


async def sleep_until(at: float) -> None:
    """Sleep until loop time ``at``, to a few tens of microseconds rather than a millisecond."""
    loop = asyncio.get_running_loop()
    if at - loop.time() > TIMER_SLACK:
        await asyncio.sleep(at - loop.time() - TIMER_SLACK)
    while loop.time() < at:  # noqa: ASYNC110 - a deliberate short spin, yielding to other tasks
        await asyncio.sleep(0)


class TcpDelayProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
    ):
        self.target = (target_host, target_port)
        self.delay, self.jitter = delay, jitter
        self.listen = (listen_host, listen_port)
        self.random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

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

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                    last = max(last, now + self.delay + self.random.uniform(0, self.jitter))
                arrived = now
                queue.put_nowait((last, data))
            queue.put_nowait((last, b""))
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run(listen: str, to: str, delay: float, jitter: float, seed: int | None) -> None:
    """Run one TCP link until cancelled, printing the port it listens on."""
    host, port = _address(listen)
    target = _address(to)
    proxy = TcpDelayProxy(*target, delay=delay, jitter=jitter, listen_host=host, listen_port=port, seed=seed)
    bound = await proxy.start()
    print(
        f"emulating a link {host}:{bound} -> {to}: delay {delay * 1000:g} ms + 0..{jitter * 1000:g} ms jitter",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()
