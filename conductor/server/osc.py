"""OSC ingress: controllers (TouchOSC, Open Stage Control, sclang) move the performance over OSC.

The conductor listens on UDP, and on TCP with SLIP framing (OSC 1.1, as Open Stage Control
uses). A routing table in the concert file maps an incoming address to a score parameter,
scaling the controller's range to the parameter's. Every change of a routed parameter, whoever
made it (a controller, the console, a performer's touch control), is echoed to the controllers
that moved a routed parameter lately, so two TouchOSC surfaces stay in step. Sources outside the
allow-list, malformed packets, unknown addresses and wrong arguments are dropped and counted.

UDP is read in bursts: every datagram waiting is read in one pass, so a flung fader costs one
wake-up, not one per value. If the conductor falls behind (the oldest datagram of a burst waited
longer than ``BEHIND`` in the kernel), each parameter's values in the burst coalesce to the
latest, and the journal says how many were passed over: the conductor never falls seconds
behind a burst. Echoes coalesce to one per parameter per display frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from pythonosc import slip
from pythonosc.osc_message import OscMessage
from pythonosc.osc_packet import OscPacket

from conductor.core.concert import OscRoute, OscSettings
from conductor.core.osc import osc_message
from conductor.core.performance import Accepted
from conductor.core.protocol import Command, Rejected, SetParam, SetParams, command_adapter
from conductor.server.joins import summary
from conductor.server.osctime import SenderClocks, timetag, when

log = logging.getLogger("tutti.osc")
MAX_PACKET = 8192  # bytes: a controller's message is tiny; larger is refused
UDP_BUFFER = 4 << 20  # bytes of OSC the kernel may hold while the conductor is busy
READ_AT_ONCE = 128  # datagrams read in one pass before the event loop gets a turn (a clock sync waits)
BEHIND = 0.25  # seconds a datagram may wait in the kernel before a burst's values coalesce
FRAME = 1 / 60  # seconds: echoes of one parameter are sent at most this often
ECHO_FOR = 60.0  # seconds a controller is echoed to after it last moved a routed parameter
ECHO_PEERS = 64  # controllers echoed to at most (UDP sources are easy to spoof)
TCP_IDLE = 300.0  # seconds an OSC TCP connection may stay silent
TCP_PER_ADDRESS = 8  # OSC TCP connections one address may hold
TCP_TOTAL = 128  # ... and all addresses together
TCP_READ = 4096  # bytes of a TCP stream handled before the event loop gets a turn (dozens of messages)
ALLOWED_CACHE = 4096  # source addresses whose allow-list answer is remembered
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@ll")

Submit = Callable[[Command, dict[str, Any], int], "asyncio.Future[Any]"]

# Rehearsal from a controller: fixed addresses, each a command with its arguments in this order.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "/tutti/play": ("play", ("count_in",)),
    "/tutti/pause": ("pause", ()),
    "/tutti/section": ("section", ("id",)),
    "/tutti/bar": ("bar", ("bar", "preroll")),
    "/tutti/loop": ("loop", ("from", "to", "times")),  # bars, both played
    "/tutti/loop/section": ("loop", ("section", "times")),
    "/tutti/unloop": ("unloop", ()),
    "/tutti/repeat": ("repeat", ()),
    "/tutti/click": ("click", ("on",)),
    "/tutti/click/site": ("click", ("site", "on")),
    "/tutti/click/part": ("click", ("part", "on")),
}


def osc_command(address: str, args: list[Any]) -> Command:
    """The command a rehearsal address makes; raises Rejected (saying what it takes) if it cannot."""
    cmd, names = COMMANDS[address]
    takes = f"{address} takes {' '.join(names) or 'nothing'}"
    if len(args) > len(names):
        raise Rejected("osc_bad_args", takes)
    # Controllers send whole numbers as floats (TouchOSC) and switches as numbers or T/F.
    plain = [int(a) if isinstance(a, float) and a.is_integer() else a for a in args]
    fields: dict[str, Any] = {"cmd": cmd, **dict(zip(names, plain, strict=False))}
    if "on" in fields:
        fields["on"] = bool(fields["on"])
    if "from" in fields or "to" in fields:
        fields["bars"] = [fields.pop("from", None), fields.pop("to", None)]
    try:
        return command_adapter.validate_python(fields)
    except pydantic.ValidationError as e:
        raise Rejected("osc_bad_args", f"{takes} ({summary(e)})") from None


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


@functools.lru_cache(maxsize=64)
def _numbers_layout(tags: bytes) -> struct.Struct | None:
    """The layout of arguments that are all numbers (``i``, ``f``, ``h``, ``d``); None for any other."""
    if not tags or tags.strip(b"ifhd"):
        return None
    return struct.Struct(">" + tags.decode().replace("h", "q"))


def plain_numbers(dgram: bytes) -> tuple[str, tuple[float, ...]] | None:
    """A message whose arguments are all numbers, as a controller sends it: its address and
    arguments, read as python-osc reads them (it checks as ``well_formed`` does). None for anything
    else, which then takes python-osc's reader: this is the path every fader value takes."""
    end = dgram.find(b"\0")
    tags_at = _padded(end)
    if end <= 0 or dgram[tags_at : tags_at + 1] != b",":
        return None
    tags_end = dgram.find(b"\0", tags_at)
    layout = _numbers_layout(dgram[tags_at + 1 : tags_end]) if tags_end > 0 else None
    args_at = tags_at + _padded(tags_end - tags_at)
    if layout is None or args_at + layout.size != len(dgram):
        return None
    try:
        address = dgram[:end].decode()
    except UnicodeDecodeError:
        return None
    return address, layout.unpack_from(dgram, args_at)


@dataclass
class _Value:
    route: OscRoute
    values: tuple[float, ...]  # one per parameter of the route (an XY pad's two)
    source: tuple[str, int]
    at: float | None = None  # conductor time from the bundle's timetag; None: as soon as it can


class OscIngress:
    """OSC for one conductor. ``submit`` hands a parameter change to the pipeline (it may raise
    Rejected); ``reject`` counts a refusal under a code."""

    def __init__(
        self,
        settings: OscSettings,
        params: dict[str, tuple[float, float]],
        submit: Submit,
        reject: Callable[[str, str], None],
        clocks: SenderClocks | None = None,
    ):
        self.settings = settings
        self.params = params  # name -> (min, max)
        self.routes = {r.address: r for r in settings.routes}
        self.by_param = {name: r for r in settings.routes for name in r.names}
        self.clocks = clocks or SenderClocks(list, lambda: 0.0)  # how timetags become conductor time
        self._known: dict[str, float] = {}  # routed parameter -> its latest value, for an XY pad's echo
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow]
        self._submit, self._reject = submit, reject
        self.udp_peers: dict[tuple[str, int], float] = {}  # controller -> when it last moved a parameter
        self.tcp_peers: dict[asyncio.StreamWriter, str] = {}  # connection -> its address
        self.coalesced = 0  # values passed over because the conductor was behind
        self._allowed_cache: dict[str, bool] = {}
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._echoes: set[str] = set()  # routes (addresses) to echo at the next frame
        self._echo_timer: asyncio.TimerHandle | None = None
        self.udp_port = self.tcp_port = 0
        self._buffer = bytearray(MAX_PACKET + 1)  # one datagram at a time, read in place
        self._view = memoryview(self._buffer)

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        info = socket.getaddrinfo(host, self.settings.udp_port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        # A controller flings a fader in a burst; hold the burst in the kernel (Linux caps this at
        # net.core.rmem_max) rather than drop the values that arrive while earlier ones are applied.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # when each datagram arrived
        sock.bind(info[4])
        sock.setblocking(False)
        self._udp = sock
        self.udp_port = sock.getsockname()[1]
        loop.add_reader(sock, self._read_udp)
        if self.settings.tcp_port is not None:
            self._tcp = await asyncio.start_server(self._tcp_client, host, self.settings.tcp_port)
            self.tcp_port = self._tcp.sockets[0].getsockname()[1]

    # --- UDP ------------------------------------------------------------------------------------

    def _read_udp(self) -> None:
        assert self._udp is not None
        values: list[_Value] = []
        oldest = None
        buffer, view = self._buffer, self._view
        for i in range(READ_AT_ONCE):
            try:
                # Into one buffer: a fresh 8 KiB for each datagram of a burst cost more than the rest.
                if i == 0:  # the first with its arrival time: how long the burst has waited
                    size, ancillary, _flags, addr = self._udp.recvmsg_into([buffer], 64)
                    oldest = _arrival(ancillary)
                else:
                    size, addr = self._udp.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # e.g. an ICMP error from an echo: not this datagram's fault
                log.debug("OSC UDP: %s", e)
                continue
            self._receive(bytes(view[:size]), (addr[0], addr[1]), None, values)
        behind = oldest is not None and time.time() - oldest > BEHIND
        self._apply(values, coalesce=behind)

    def receive(self, data: bytes, source: tuple[str, int]) -> None:
        """One OSC packet from a UDP ``source``, applied at once."""
        values: list[_Value] = []
        self._receive(data, source, None, values)
        self._apply(values, coalesce=False)

    def _receive(
        self, data: bytes, source: tuple[str, int], tcp: asyncio.StreamWriter | None, values: list[_Value]
    ) -> None:
        """One OSC packet from ``source``: its routed values join ``values``; the rest is refused."""
        if tcp is None and not self._allowed(source[0]):
            return
        if len(data) > MAX_PACKET:
            self._reject("osc_too_large", f"{len(data)}-byte OSC packet from {source[0]} (at most {MAX_PACKET})")
            return
        # OSC packets are 4-byte aligned and start with an address or "#bundle"; python-osc is lenient
        # and reads a truncated message as a valid one with a made-up value, so check first.
        if len(data) % 4 or not (data.startswith(b"/") or data.startswith(b"#bundle\x00")):
            self._reject("osc_malformed", f"not an OSC packet from {source[0]} ({len(data)} bytes)")
            return
        plain = plain_numbers(data) if data[0] == 47 else None
        if plain is not None:
            messages: list[tuple[str, tuple[Any, ...]]] = [plain]
        else:
            try:
                # A controller sends a message at a time; python-osc's packet reader is for bundles.
                read = [OscMessage(data)] if data[0] == 47 else [m.message for m in OscPacket(data).messages]
            except Exception as e:  # python-osc raises several kinds on garbage
                self._reject("osc_malformed", f"undecodable OSC from {source[0]}: {e.__class__.__name__}")
                return
            if not all(well_formed(m.dgram) for m in read):
                self._reject("osc_malformed", f"an OSC message from {source[0]} is cut short or padded wrongly")
                return
            messages = [(m.address, tuple(m.params)) for m in read]
        tag = timetag(data)
        for address, args in messages:
            if address in COMMANDS:
                self._command(address, list(args), source, tag)
                continue
            route = self.routes.get(address)
            if route is None:
                self._reject("osc_unknown_address", f"no route for {address[:64]}")
                continue
            wanted = len(route.names)
            kind = "one number" if wanted == 1 else f"{wanted} numbers"
            if len(args) != wanted or any(isinstance(a, bool) or not isinstance(a, int | float) for a in args):
                self._reject("osc_bad_args", f"{address} takes {kind}")
                continue
            if not all(math.isfinite(a) for a in args):
                self._reject("osc_bad_args", f"{address} takes finite numbers")
                continue
            at = None
            if tag is not None:
                try:
                    asked = self.clocks.conductor_time(source[0], tag)
                    at = when(asked, time.time() + self.clocks.own())
                except ValueError as e:
                    self._reject("osc_bad_time", f"{address} from {source[0]}: {e}")
                    continue
            values.append(_Value(route, tuple(float(a) for a in args), source, at))

    def _command(self, address: str, args: list[Any], source: tuple[str, int], tag: float | None) -> None:
        try:
            command = osc_command(address, args)
            if tag is not None:
                at = when(self.clocks.conductor_time(source[0], tag), time.time() + self.clocks.own())
                command = command.model_copy(update={"at": at})
            done = self._submit(command, {"role": "osc", "name": f"{source[0]}:{source[1]}"}, 0)
        except Rejected as r:
            self._reject(r.code, f"{address}: {r.message}")
            return
        except ValueError as e:  # a timetag that cannot be a conductor time
            self._reject("osc_bad_time", f"{address} from {source[0]}: {e}")
            return
        done.add_done_callback(_retrieved)

    def _apply(self, values: list[_Value], coalesce: bool) -> None:
        passed_over: dict[str, int] = {}
        if coalesce and len(values) > 1:  # behind: each parameter's latest value only
            latest: dict[str, _Value] = {}
            for v in values:
                if v.route.address in latest:
                    passed_over[v.route.address] = passed_over.get(v.route.address, 0) + 1
                latest[v.route.address] = v
            values = sorted(latest.values(), key=values.index)
            self.coalesced += sum(passed_over.values())
        now = time.monotonic()
        for v in values:
            pairs = zip(v.route.names, v.values, strict=True)
            scaled = {name: self._scaled(name, v.route, value) for name, value in pairs}
            command: SetParam | SetParams = (
                SetParam(cmd="param", name=v.route.names[0], value=scaled[v.route.names[0]], at=v.at)
                if v.route.param is not None
                else SetParams(cmd="params", values=scaled, at=v.at)
            )
            try:
                done = self._submit(command, {"role": "osc", "name": f"{v.source[0]}:{v.source[1]}"},
                                    passed_over.get(v.route.address, 0))  # fmt: skip
            except Rejected as r:
                self._reject(r.code, f"{v.route.address}: {r.message}")
                continue
            except Exception as e:  # one controller's message must never stop the others
                log.exception("OSC %s", v.route.address)
                self._reject("osc_refused", f"{v.route.address}: {e}")
                continue
            done.add_done_callback(_retrieved)
            if v.source not in self.udp_peers and len(self.udp_peers) >= ECHO_PEERS:
                self._forget_peers(now)
            if v.source in self.udp_peers or len(self.udp_peers) < ECHO_PEERS:
                self.udp_peers[v.source] = now

    def _scaled(self, name: str, route: OscRoute, value: float) -> float:
        """A controller's value (in the route's range) as the parameter's."""
        low, high = route.range
        lo, hi = self.params[name]
        return lo + min(1.0, max(0.0, (value - low) / (high - low))) * (hi - lo)

    def _forget_peers(self, now: float) -> None:
        for peer, seen in list(self.udp_peers.items()):
            if now - seen > ECHO_FOR:
                del self.udp_peers[peer]

    def _allowed(self, host: str) -> bool:
        allowed = self._allowed_cache.get(host)
        if allowed is None:
            allowed = self._allowed_address(host)
            if len(self._allowed_cache) >= ALLOWED_CACHE:
                self._allowed_cache.clear()
            self._allowed_cache[host] = allowed
        if not allowed:
            self._reject("osc_not_allowed", f"OSC from {host}, which is not on the allow-list")
        return allowed

    def _allowed_address(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    # --- TCP (SLIP) -----------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = (peer[0], peer[1])
        held = sum(1 for address in self.tcp_peers.values() if address == source[0])
        full = held >= TCP_PER_ADDRESS or len(self.tcp_peers) >= TCP_TOTAL
        if not self._allowed(source[0]) or full:
            if full:
                self._reject("osc_too_many", f"{source[0]} holds {held} OSC connections, all {len(self.tcp_peers)}")
            writer.close()
            return
        self.tcp_peers[writer] = source[0]
        buffer = b""
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    data = await reader.read(TCP_READ)
                if not data:
                    break
                buffer += data
                *frames, buffer = buffer.split(slip.END)
                if len(buffer) > MAX_PACKET * 2:  # an unterminated frame keeps growing: refuse it
                    self._reject("osc_too_large", f"unterminated SLIP frame from {source[0]}")
                    buffer = b""
                values: list[_Value] = []
                for frame in frames:
                    if frame:
                        try:
                            packet = slip.decode(slip.END + frame + slip.END)
                        except slip.ProtocolError:
                            self._reject("osc_malformed", f"a SLIP frame from {source[0]} is not well escaped")
                            continue
                        self._receive(packet, source, writer, values)
                self._apply(values, coalesce=False)
                await asyncio.sleep(0)  # a read that was already buffered does not yield: let others in
        except TimeoutError:
            log.info("OSC TCP connection from %s idle for %g s: closed", source[0], TCP_IDLE)
        except ConnectionError:
            pass
        finally:
            self.tcp_peers.pop(writer, None)
            with contextlib.suppress(Exception):
                writer.close()

    # --- echo -----------------------------------------------------------------------------------

    def echo(self, accepted: Accepted) -> None:
        """An output of the pipeline: tell the controllers the new values, once per frame."""
        for name, value in accepted.change.params.items():
            if name in self.by_param:
                self._known[name] = value
                self._echoes.add(self.by_param[name].address)
                if self._echo_timer is None:
                    self._echo_timer = asyncio.get_running_loop().call_later(FRAME, self._send_echoes)

    def _send_echoes(self) -> None:
        self._echo_timer = None
        echoes, self._echoes = self._echoes, set()
        now = time.monotonic()
        self._forget_peers(now)
        for address in echoes:
            route = self.routes[address]
            low, high = route.range
            sent = []
            for name in route.names:  # an XY pad is echoed both its values
                lo, hi = self.params[name]
                sent.append(low + (self._known.get(name, lo) - lo) / (hi - lo) * (high - low))
            packet = osc_message(route.address, sent)
            if self._udp:
                for peer in self.udp_peers:
                    with contextlib.suppress(OSError):
                        self._udp.sendto(packet, peer)
            framed = slip.encode(packet)
            for writer in list(self.tcp_peers):
                writer.write(framed)

    def close(self) -> None:
        if self._echo_timer:
            self._echo_timer.cancel()
        if self._udp:
            asyncio.get_running_loop().remove_reader(self._udp)
            self._udp.close()
        if self._tcp:
            self._tcp.close()
        for writer in self.tcp_peers:
            writer.close()


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """When the kernel received a datagram (epoch seconds), from its SO_TIMESTAMPNS."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(data)
            return seconds + nanoseconds / 1e9
    return None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A controller's change that could not be kept was refused and counted where it failed."""
    if not future.cancelled():
        future.exception()
