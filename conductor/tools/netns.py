"""Network namespaces as separate hosts on one machine (as root): for rehearsals, tests and benches.

Namespaces share the filesystem, so JACK servers in them need distinct names; they do not share
networks: a namespace sees only its own interfaces. ``connect_in`` opens a connection from this
process into a namespace, and ``Forward`` offers one of its TCP services on this machine's loopback
(a browser here can then open a rehearsal's console). Hosts are joined on one bridge (``lan``), or
through a router in this process that gives each pair of hosts its own delay (``wan``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from conductor.tools.emulate import TcpDelayProxy
from conductor.tools.wan import MTU, Router, open_tun

CLONE_NEWNET = 0x40000000
CONNECT_WITHIN = 5.0  # seconds


async def ip(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {err.decode().strip()}")
    return out.decode()


def exec_in(netns: str, *command: str) -> list[str]:
    """A command line that runs ``command`` in the namespace."""
    return ["ip", "netns", "exec", netns, *command]


@contextlib.asynccontextmanager
async def namespace(name: str) -> AsyncIterator[str]:
    """A network namespace with its loopback up; at the end every process left in it is killed and
    it is deleted."""
    await ip("netns", "add", name)
    try:
        await ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        await kill_all(name)
        await ip("netns", "del", name)


async def kill_all(netns: str) -> None:
    with contextlib.suppress(RuntimeError):
        for pid in (await ip("netns", "pids", netns)).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


async def veth(netns: str, name: str, peer_netns: str | None, peer: str) -> None:
    """A veth pair, ``name`` in ``netns`` and ``peer`` in ``peer_netns`` (None: this one), both up."""
    if peer_netns is None:  # made here, one end moved into the namespace
        await ip("link", "add", peer, "type", "veth", "peer", "name", name, "netns", netns)
    else:
        await ip("-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_netns)
    await ip("-n", netns, "link", "set", name, "up")
    await ip(*(["-n", peer_netns] if peer_netns else []), "link", "set", peer, "up")


async def address(netns: str | None, device: str, cidr: str) -> None:
    """An IPv6 address, usable at once (no duplicate address detection)."""
    await ip(*(["-n", netns] if netns else []), "-6", "addr", "add", cidr, "dev", device, "nodad")


@dataclass
class Host:
    """A host made of a network namespace and a mount namespace with its own ``/dev/shm``."""

    netns: str
    holder: int  # the pid of the process that keeps its mount namespace

    def command(self, *argv: str) -> list[str]:
        """A command line that runs ``argv`` on this host."""
        return ["nsenter", "-t", str(self.holder), "-m", "-n", "--", *argv]


@contextlib.asynccontextmanager
async def host(netns: str) -> AsyncIterator[Host]:
    """A host in ``netns`` with a ``/dev/shm`` of its own: there JACK keeps its registry of servers
    (eight at most per registry, and a killed server's entry stays) and its sockets, and scsynth its
    shared memory (named by port: sites on one port would share it), as on separate machines."""
    proc = await asyncio.create_subprocess_exec(
        *exec_in(netns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                 "mount -t tmpfs -o size=256m tutti-shm /dev/shm && echo ready && exec sleep infinity"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        if await proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"cannot give {netns} a /dev/shm of its own (unshare, mount: needs root)")
        yield Host(netns, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already (killed with its namespace's processes)
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def lan(prefix: str, hosts: dict[str, list[str]], length: int = 32) -> AsyncIterator[dict[str, Host]]:
    """One host per name (namespace ``prefix-NAME``) with its addresses, all on one bridge (in a
    namespace of its own, ``prefix-lan``); yields name -> host."""
    async with contextlib.AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(namespace(f"{prefix}-lan"))
        await ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        await ip("-n", bridge, "link", "set", "br0", "up")
        made = {}
        for i, (name, addresses) in enumerate(hosts.items()):
            netns = await stack.enter_async_context(namespace(f"{prefix}-{name}"))
            await veth(bridge, f"h{i}", netns, "eth0")
            await ip("-n", bridge, "link", "set", f"h{i}", "master", "br0")
            for a in addresses:
                await address(netns, "eth0", f"{a}/{length}")
            made[name] = await stack.enter_async_context(host(netns))
        yield made


@contextlib.asynccontextmanager
async def wan(
    prefix: str, hosts: dict[str, list[str]], router: Router, route: str = "2001:db8::/32"
) -> AsyncIterator[dict[str, Host]]:
    """One host per name (namespace ``prefix-NAME``) with its addresses on a TUN device ``wan0``
    that leads to ``router`` (in this process) for the whole ``route``: the router delays each
    pair's packets as it is told (``conductor/tools/wan.py``). Yields name -> host."""
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(router.close)
        made = {}
        for name, addresses in hosts.items():
            netns = await stack.enter_async_context(namespace(f"{prefix}-{name}"))
            fd = await asyncio.to_thread(_tun_in, netns, "wan0")
            stack.callback(os.close, fd)
            # No link-local address: nothing to solicit on a link with no neighbours.
            await ip("-n", netns, "link", "set", "wan0", "mtu", str(MTU), "addrgenmode", "none", "up")
            for a in addresses:
                await address(netns, "wan0", f"{a}/128")
            await ip("-n", netns, "-6", "route", "add", route, "dev", "wan0")
            router.attach(name, fd, addresses)
            stack.callback(router.detach, name)
            made[name] = await stack.enter_async_context(host(netns))
        yield made


@contextlib.contextmanager
def _inside(netns: str) -> Iterator[None]:
    """This thread in ``netns`` for a while (what it opens there stays there), then back home."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # never leave a pool thread in another network
                os.abort()
    finally:
        os.close(home)
        os.close(there)


def _socket_in(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket connected from inside ``netns``."""
    with _inside(netns):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
    sock.setblocking(False)
    return sock


def _open_in(netns: str, kind: int, proto: int) -> socket.socket:
    with _inside(netns):
        return socket.socket(socket.AF_INET6, kind, proto)


async def socket_in(netns: str, kind: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    """An IPv6 socket of ``netns`` (non-blocking), for this process's event loop."""
    sock = await asyncio.to_thread(_open_in, netns, kind, proto)
    sock.setblocking(False)
    return sock


def _tun_in(netns: str, name: str) -> int:
    with _inside(netns):
        return open_tun(name)


async def connect_in(netns: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = await asyncio.to_thread(_socket_in, netns, host, port, CONNECT_WITHIN)
    return await asyncio.open_connection(sock=sock)


class Forward(TcpDelayProxy):
    """A TCP service inside a namespace, offered on 127.0.0.1 here (``port`` once started)."""

    def __init__(self, netns: str, host: str, port: int):
        super().__init__(host, port)
        self.netns = netns

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await connect_in(self.netns, *self.target)
