"""OSC ingress: controllers (TouchOSC, Open Stage Control, sclang) move the performance over OSC.

The conductor listens on UDP, and on TCP with SLIP framing (OSC 1.1, as Open Stage Control
uses). A routing table in the concert file maps an incoming address to a score parameter,
scaling the controller's range to the parameter's. Every change of a routed parameter, whoever
made it (a controller, the console, a performer's touch control), is echoed to every controller
that has spoken to the conductor, so two TouchOSC surfaces stay in step. Sources outside the
allow-list, malformed packets, unknown addresses and wrong arguments are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from conductor.core.concert import OscSettings
from conductor.core.protocol import SetParam

log = logging.getLogger("tutti.osc")
MAX_PACKET = 8192  # bytes: a controller's message is tiny; larger is refused
UDP_BUFFER = 4 << 20  # bytes of OSC the kernel may hold while the conductor is busy
SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD


def slip_encode(packet: bytes) -> bytes:
    body = packet.replace(bytes([SLIP_ESC]), bytes([SLIP_ESC, SLIP_ESC_ESC]))
    body = body.replace(bytes([SLIP_END]), bytes([SLIP_ESC, SLIP_ESC_END]))
    return bytes([SLIP_END]) + body + bytes([SLIP_END])


def slip_decode(frame: bytes) -> bytes:
    return frame.replace(bytes([SLIP_ESC, SLIP_ESC_END]), bytes([SLIP_END])).replace(
        bytes([SLIP_ESC, SLIP_ESC_ESC]), bytes([SLIP_ESC])
    )


def _padded(length: int) -> int:
    """Bytes an OSC string of ``length`` characters takes: with its NUL, to a multiple of 4."""
    return (length + 4) & ~3


def well_formed(dgram: bytes) -> bool:
    """Whether an OSC message's arguments fill it exactly, as its type tags say.

    python-osc reads a message cut short as a whole one (a missing float reads as 0.0), so a
    controller's truncated packet would set a parameter to a value nobody sent.
    """
    try:
        pos = _padded(dgram.index(b"\0"))
        if pos == len(dgram):
            return True  # no type tags: no arguments
        if dgram[pos : pos + 1] != b",":
            return False
        end = dgram.index(b"\0", pos)
        tags = dgram[pos + 1 : end].decode("ascii")
        pos += _padded(end - pos)
        for tag in tags:
            if tag in "ifrmc":
                pos += 4
            elif tag in "hdt":
                pos += 8
            elif tag in "sS":
                pos += _padded(dgram.index(b"\0", pos) - pos)
            elif tag == "b":
                pos += 4 + ((int.from_bytes(dgram[pos : pos + 4], "big") + 3) & ~3)
            elif tag not in "TFNI[]":
                return False
        return pos == len(dgram)
    except (ValueError, UnicodeDecodeError):
        return False


def message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class OscIngress:
    """OSC for one conductor. ``apply`` sets a parameter (journalled and broadcast like any change);
    ``reject`` counts a refusal under a code."""

    def __init__(
        self,
        settings: OscSettings,
        params: dict[str, tuple[float, float]],
        apply: Callable[[SetParam, dict[str, Any]], Awaitable[Any]],
        reject: Callable[[str, str], None],
    ):
        self.settings = settings
        self.params = params  # name -> (min, max)
        self.routes = {r.address: r for r in settings.routes}
        self.by_param = {r.param: r for r in settings.routes}
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self._apply, self._reject = apply, reject
        self.udp_peers: set[tuple[str, int]] = set()
        self.tcp_peers: set[asyncio.StreamWriter] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.udp_port = self.tcp_port = 0

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        ingress = self

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                ingress._spawn(ingress.receive(data, (addr[0], addr[1]), None))

        self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, self.settings.udp_port))
        # A controller flings a fader in a burst; hold the burst in the kernel (Linux caps this at
        # net.core.rmem_max) rather than drop the values that arrive while earlier ones are applied.
        self._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        self.udp_port = self._udp.get_extra_info("sockname")[1]
        if self.settings.tcp_port is not None:
            self._tcp = await asyncio.start_server(self._tcp_client, host, self.settings.tcp_port)
            self.tcp_port = self._tcp.sockets[0].getsockname()[1]

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = (peer[0], peer[1])
        if not self._allowed(source):
            writer.close()
            return
        self.tcp_peers.add(writer)
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                *frames, buffer = buffer.split(bytes([SLIP_END]))
                if len(buffer) > MAX_PACKET * 2:  # an unterminated frame keeps growing: refuse it
                    self._reject("osc_too_large", f"unterminated SLIP frame from {source[0]}")
                    buffer = b""
                for frame in frames:
                    if frame:
                        await self.receive(slip_decode(frame), source, writer)
        except ConnectionError:
            pass
        finally:
            self.tcp_peers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _allowed(self, source: tuple[str, int]) -> bool:
        try:
            ip = ipaddress.ip_address(source[0].split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow):
            return True
        self._reject("osc_not_allowed", f"OSC from {source[0]}, which is not on the allow-list")
        return False

    async def receive(self, data: bytes, source: tuple[str, int], tcp: asyncio.StreamWriter | None) -> None:
        """One OSC packet from ``source``: route each message in it."""
        if tcp is None and not self._allowed(source):
            return
        if len(data) > MAX_PACKET:
            self._reject("osc_too_large", f"{len(data)}-byte OSC packet from {source[0]} (at most {MAX_PACKET})")
            return
        # OSC packets are 4-byte aligned and start with an address or "#bundle"; python-osc is lenient
        # and reads a truncated message as a valid one with a made-up value, so check first.
        if len(data) % 4 or not (data.startswith(b"/") or data.startswith(b"#bundle\x00")):
            self._reject("osc_malformed", f"not an OSC packet from {source[0]} ({len(data)} bytes)")
            return
        try:
            messages = [m.message for m in OscPacket(data).messages]
        except Exception as e:  # python-osc raises several kinds on garbage
            self._reject("osc_malformed", f"undecodable OSC from {source[0]}: {e.__class__.__name__}")
            return
        if not all(well_formed(m.dgram) for m in messages):
            self._reject("osc_malformed", f"an OSC message from {source[0]} is cut short or padded wrongly")
            return
        if tcp is None:
            self.udp_peers.add(source)
        for msg in messages:
            try:
                await self._route(msg.address, list(msg.params), source)
            except Exception as e:  # one controller's message must never stop the others
                log.exception("OSC %s", msg.address)
                self._reject("osc_refused", f"{msg.address}: {e}")

    async def _route(self, address: str, args: list[Any], source: tuple[str, int]) -> None:
        route = self.routes.get(address)
        if route is None:
            self._reject("osc_unknown_address", f"no route for {address[:64]}")
            return
        if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], int | float):
            self._reject("osc_bad_args", f"{address} takes one number")
            return
        low, high = route.range
        lo, hi = self.params[route.param]
        fraction = min(1.0, max(0.0, (float(args[0]) - low) / (high - low)))
        await self._apply(
            SetParam(cmd="param", name=route.param, value=lo + fraction * (hi - lo)),
            {"role": "osc", "name": f"{source[0]}:{source[1]}"},
        )

    def echo(self, param: str, value: float) -> None:
        """Tell every controller that ``param`` is now ``value``, in its own range."""
        route = self.by_param.get(param)
        if route is None:
            return
        lo, hi = self.params[param]
        low, high = route.range
        packet = message(route.address, low + (value - lo) / (hi - lo) * (high - low))
        if self._udp:
            for peer in self.udp_peers:
                self._udp.sendto(packet, peer)
        for writer in list(self.tcp_peers):
            writer.write(slip_encode(packet))

    def close(self) -> None:
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
        for writer in self.tcp_peers:
            writer.close()
