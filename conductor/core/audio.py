"""JackTrip topology in the concert file: hub, hub clients and pairs, their checks and command lines."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Port = Annotated[int, Field(ge=1, le=65535)]
Channels = Annotated[int, Field(ge=1, le=64)]
SiteName = Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _End(_Strict):
    site: SiteName
    node: StrictStr | None = None  # the node that runs this end (default: the site's node)
    queue: Annotated[int, Field(ge=2, le=128)] = 4  # -q: receive queue, in packets (periods)
    # --bufstrategy: -1 the classic ring buffer; 0-2 jitter buffers; 3-4 (jacktrip 2.x) with -q in ms
    buffer_strategy: Literal[-1, 0, 1, 2, 3, 4] = 1
    sample_rate: StrictInt | None = None  # this end's JACK rate, if it differs from the concert's
    bit_depth: Literal[16, 24, 32] | None = None  # this end's -b, if it differs from the concert's
    receive_to_scsynth: Annotated[int, Field(ge=1)] | None = None  # receive_1.. → scsynth in_N..
    scsynth_to_send: Annotated[int, Field(ge=1)] | None = None  # scsynth out_N.. → send_1..
    channels: Channels | None = None  # -n
    timeout: StrictBool = False  # -t: quit after 10 s without network activity


class HubSettings(_End):
    address: StrictStr  # where clients reach the hub: an IPv6 or IPv4 literal, or a name
    port: Port = 4464  # the hub's bind port (-B): clients' peer port
    patch: Literal["fan", "mix", "loopback", "server"] = "fan"


class LinkSettings(_End):
    host: StrictStr = "::"  # this site's own address; two clients on one host need their own bind ports
    bind_port: Port = 4464  # -B
    measure: StrictBool = True  # one more channel, looped back at the hub, to measure the round trip


class PairServer(_End):
    address: StrictStr  # where the other end reaches this one
    port: Port = 4464  # -B here, -P there
    # -P there when the other end reaches this one at another port: a port forward, or in a
    # rehearsal ``tutti emulate --udp`` in between (this end answers wherever the packets come from)
    public_port: Port | None = None


class PairClient(_End):
    host: StrictStr = "::"
    bind_port: Port = 4464  # -B


class PairSettings(_Strict):
    """Two sites linked directly (jacktrip -s and -c), without the hub."""

    server: PairServer
    client: PairClient
    channels: Channels = 2
    measure: StrictBool = True  # one more channel, looped back at the server, to measure the round trip


class AudioSettings(_Strict):
    sample_rate: StrictInt = 48000
    bit_depth: Literal[16, 24, 32] = 24
    period: Annotated[int, Field(ge=16, le=4096)] = 128  # JACK frames per period at every site
    hub: HubSettings | None = None
    links: list[LinkSettings] = []  # hub clients
    pairs: list[PairSettings] = []

    def channels(self, link: LinkSettings | PairSettings) -> int:
        """Channels jacktrip carries: the audio, plus the measuring channel."""
        return (link.channels or 2) + (1 if link.measure else 0)

    def ends(self) -> list[_End]:
        """Every end of every link: each is run by a node at its site."""
        hub = [self.hub] if self.hub else []
        return [*hub, *self.links, *(end for pair in self.pairs for end in (pair.server, pair.client))]

    def rate(self, end: _End) -> int:
        return end.sample_rate or self.sample_rate

    def bits(self, end: _End) -> int:
        return end.bit_depth or self.bit_depth


Loc = tuple[str | int, ...]


def check_audio(audio: AudioSettings) -> tuple[list[tuple[Loc, str]], list[tuple[Loc, str]]]:
    """Errors (the links cannot work) and warnings (an option with no effect) in an audio topology."""
    errors: list[tuple[Loc, str]] = []
    warnings: list[tuple[Loc, str]] = []
    hub = audio.hub
    if hub is None and audio.links:
        errors.append((("audio", "hub"), "links join a hub: say which site runs it"))
    if hub is not None and hub.channels is not None:
        message = "-n has no effect on a hub server: each client brings its own channel count"
        warnings.append((("audio", "hub", "channels"), message))
    if hub is not None and hub.timeout:
        warnings.append((("audio", "hub", "timeout"), "-t has no effect on a hub server"))

    def agree(loc: Loc, end: _End, other: _End, where: str) -> None:
        here, there = audio.rate(end), audio.rate(other)
        if here != there:
            errors.append(((*loc, "sample_rate"), f"{here} Hz at {end.site} but {there} Hz at {where}: no resampling"))
        here, there = audio.bits(end), audio.bits(other)
        if here != there:
            message = f"{here}-bit at {end.site} but {there}-bit at {where}: ends must agree"
            errors.append(((*loc, "bit_depth"), message))

    bound: dict[tuple[str, int], str] = {}  # (host, port) -> which end binds it

    def bind(loc: Loc, field: str, host: str, port: int, what: str) -> None:
        if (host, port) in bound:
            errors.append(((*loc, field), f"{what} and {bound[host, port]} share port {port} on host {host}"))
        bound.setdefault((host, port), what)

    if hub is not None:
        bind(("audio", "hub"), "port", hub.address, hub.port, "the hub")
    for i, link in enumerate(audio.links):
        loc: Loc = ("audio", "links", i)
        if hub is not None:
            if link.site == hub.site:
                errors.append(((*loc, "site"), f"'{link.site}' runs the hub; it needs no link to itself"))
            agree(loc, link, hub, "the hub")
        bind(loc, "bind_port", link.host, link.bind_port, f"link {i}")
        if link.timeout:
            message = "-t makes a client quit after 10 s of silence; Tutti restarts it anyway"
            warnings.append(((*loc, "timeout"), message))
        if link.site in [other.site for other in audio.links[:i]]:
            errors.append(((*loc, "site"), f"'{link.site}' has two links"))
    for i, pair in enumerate(audio.pairs):
        loc = ("audio", "pairs", i)
        if pair.server.site == pair.client.site:
            errors.append(((*loc, "client", "site"), "a pair links two different sites"))
        agree((*loc, "client"), pair.client, pair.server, pair.server.site)
        bind((*loc, "server"), "port", pair.server.address, pair.server.port, f"pair {i}'s server")
        bind((*loc, "client"), "bind_port", pair.client.host, pair.client.bind_port, f"pair {i}'s client")
    return errors, warnings


def parse_version(text: str) -> tuple[int, ...]:
    """``jacktrip -v`` output → (major, minor, patch); (0,) if it says no version."""
    m = re.search(r"VERSION:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x or 0) for x in m.groups()) if m else (0,)


def _common(audio: AudioSettings, end: _End) -> list[str]:
    return [
        "-q", str(end.queue), "--bufstrategy", str(end.buffer_strategy), "-b", str(audio.bits(end)), "-I", "1",
    ]  # fmt: skip


def hub_command(audio: AudioSettings, hub: HubSettings) -> list[str]:
    return ["jacktrip", "-S", "-p", "5", "-B", str(hub.port), *_common(audio, hub)]


def client_command(audio: AudioSettings, hub: HubSettings, link: LinkSettings) -> list[str]:
    command = [
        "jacktrip", "-C", hub.address, "-P", str(hub.port), "-B", str(link.bind_port), "-K", link.site,
        "-J", client_name(link), "-n", str(audio.channels(link)), "-D", *_common(audio, link),
    ]  # fmt: skip
    return command + (["-t"] if link.timeout else [])


def pair_commands(audio: AudioSettings, pair: PairSettings) -> tuple[list[str], list[str]]:
    """The server's and the client's command lines; each end's JACK client is named after the other."""
    n = str(audio.channels(pair))
    server, client = pair.server, pair.client
    return (
        [
            "jacktrip", "-s", "-B", str(server.port), "-J", f"jacktrip-{client.site}", "-n", n, "-D",
            *_common(audio, server),
        ],
        [
            "jacktrip", "-c", server.address, "-P", str(server.public_port or server.port), "-B", str(client.bind_port),
            "-J", f"jacktrip-{server.site}", "-n", n, "-D", *_common(audio, client),
        ],
    )  # fmt: skip


def client_name(link: LinkSettings) -> str:
    """The JACK client name of a hub client's jacktrip at its own site (never a JACK server's name)."""
    return f"jacktrip-{link.site}"
