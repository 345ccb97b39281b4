"""A user-space WAN: IPv6 packets between hosts (network namespaces), each pair with its own delay.

The kernel here has no netem, so a rehearsal's distances are made in this process: each host has a
TUN device that carries its addresses and the route to the whole prefix (``netns.wan`` makes them),
and the ``Router`` reads every packet a host sends, finds the host of its destination address, and
writes it into that host's TUN once the pair's delay has passed. Everything IP crosses it: TCP,
UDP, ICMPv6. A pair's packets leave in the order they came (jitter delays them, never reorders
them, as on one real path), through a FIFO of bounded length; what does not fit, what is longer
than the MTU, what is not IPv6 and what goes to an unknown address is dropped and counted.
asyncio's timers fire up to a millisecond late, so a packet is late by that much at most.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import random
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

MTU = 1500  # bytes: what a TUN device carries, and the most a packet may be here
QUEUE = 1024  # packets in flight per (source, destination) pair: 41 ms of a 300 Mbit/s stream
READS = 64  # packets read from one device per wake-up, so one busy host cannot starve the others
HEADER = 40  # an IPv6 header's bytes; the destination address is bytes 24..40


@dataclass(frozen=True)
class Lag:
    """One direction of a pair: every packet waits ``delay`` seconds, plus up to ``jitter`` more."""

    delay: float = 0.0
    jitter: float = 0.0


@dataclass
class Counts:
    forwarded: int = 0
    full: int = 0  # the pair's queue was full
    malformed: int = 0  # not IPv6, or its length disagrees with its header, or longer than the MTU
    unknown: int = 0  # to an address no host has
    multicast: int = 0  # neighbour and router solicitations a TUN sends for nothing
    unwritable: int = 0  # the destination's device refused it


@dataclass
class _Pair:
    lag: Lag
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None


class Router:
    """Delays and forwards packets between the hosts ``attach``-ed to it; ``lags`` maps (source
    host, destination host) to that direction's delay (none for a pair it does not name)."""

    def __init__(self, lags: Mapping[tuple[str, str], Lag], queue: int = QUEUE, seed: int | None = None):
        self.lags = dict(lags)
        self.limit = queue
        self.counts = Counts()
        self.random = random.Random(seed)
        self._fds: dict[str, int] = {}
        self._owner: dict[bytes, str] = {}  # a packed address -> its host
        self._pairs: dict[tuple[str, str], _Pair] = {}

    def attach(self, host: str, fd: int, addresses: list[str]) -> None:
        """Forward what ``host`` sends on ``fd`` (a TUN device, non-blocking: one packet a read),
        and send it the packets to ``addresses``."""
        for address in addresses:
            self._owner[ipaddress.IPv6Address(address).packed] = host
        self._fds[host] = fd
        asyncio.get_running_loop().add_reader(fd, self._read, host)

    def detach(self, host: str) -> None:
        """Stop reading ``host``'s device (before it is closed); what is queued for it is dropped."""
        fd = self._fds.pop(host, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    def close(self) -> None:
        """Drop what is in flight."""
        for pair in self._pairs.values():
            if pair.timer:
                pair.timer.cancel()
            pair.queue.clear()

    def _read(self, host: str) -> None:
        fd = self._fds[host]
        for _ in range(READS):
            try:
                packet = os.read(fd, MTU + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the device is gone (its namespace is being removed)
                self.detach(host)
                return
            self.route(host, packet)

    def route(self, source: str, packet: bytes) -> None:
        """Queue a packet ``source`` sent for its destination's host, after the pair's delay."""
        if (
            len(packet) < HEADER
            or len(packet) > MTU
            or packet[0] >> 4 != 6
            or HEADER + int.from_bytes(packet[4:6]) != len(packet)
        ):
            self.counts.malformed += 1
            return
        destination = packet[24:HEADER]
        if destination[0] == 0xFF:
            self.counts.multicast += 1
            return
        target = self._owner.get(destination)
        if target is None or target not in self._fds:
            self.counts.unknown += 1
            return
        key = (source, target)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair(self.lags.get(key, Lag()))
        if len(pair.queue) >= self.limit:
            self.counts.full += 1
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + pair.lag.delay + (self.random.uniform(0, pair.lag.jitter) if pair.lag.jitter else 0.0)
        if pair.queue:
            due = max(due, pair.queue[-1][0])  # never ahead of the packet before it on this path
        pair.queue.append((due, packet))
        if pair.timer is None:
            pair.timer = loop.call_at(due, self._release, key)

    def _release(self, key: tuple[str, str]) -> None:
        pair = self._pairs[key]
        loop = asyncio.get_running_loop()
        now = loop.time()
        fd = self._fds.get(key[1])
        while pair.queue and pair.queue[0][0] <= now:
            _, packet = pair.queue.popleft()
            try:
                if fd is None:
                    raise OSError("detached")
                os.write(fd, packet)
                self.counts.forwarded += 1
            except OSError:
                self.counts.unwritable += 1
        pair.timer = loop.call_at(pair.queue[0][0], self._release, key) if pair.queue else None

    def dropped(self) -> str:
        """What was dropped, in a few words (nothing: empty)."""
        counts = {k: v for k, v in vars(self.counts).items() if k not in ("forwarded", "multicast") and v}
        return ", ".join(f"{v} {k}" for k, v in counts.items())


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name: str) -> int:
    """A TUN device named ``name`` in this thread's network namespace; its fd (non-blocking).
    The device lives as long as the fd, in the namespace it was opened in."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd
