"""The node agent: one per performer machine or site, between the conductor and a local scsynth.

It joins the conductor as role ``node``, keeps its clock in step like every client, supervises a
scsynth (and, when no audio device is configured, a JACK server with the dummy driver), and turns
each ``cue`` (a conductor time and an OSC message) into an OSC bundle timetagged in this machine's
clock, which scsynth plays sample-accurately. It follows the transport (``transport`` events)
and drives its network's Ableton Link session and its sclang from it (``link.py``, ``face.py``).
It reports its health every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jack
import pydantic

from conductor.client import TuttiClient
from conductor.core import protocol
from conductor.core.osc import osc_bundle, osc_message
from conductor.core.preflight import CLOCK_FAR, CLOCK_SAMPLES
from conductor.core.transport import Transport
from conductor.node.archive import ArchiveRecorder, link_tracks, scsynth_track
from conductor.node.face import SclangFace
from conductor.node.jacktrip import AudioSettings, SiteAudio
from conductor.node.link import LinkPeer
from conductor.node.placement import Placement
from conductor.node.scsynth import Health, Scsynth, _end, jack_env, start_jack

log = logging.getLogger("tutti.node")
T = TypeVar("T")
SCLANG_PORT = 57120
REMEMBER_CUES = 10_000  # score cues remembered, to play each once
SEND_AHEAD = 0.2  # seconds before its time a cue goes to scsynth, at the latest
REPORT_EVERY = 1.0  # seconds between health reports ...
LOOK_EVERY = 0.1  # ... and between looks at what the go / no-go table reads, reported at once when it changes


class NodeAgent:
    """A site's or performer's machine: its scsynth (None for a machine that only runs audio links,
    such as a hub), the JACK server both use (started here unless ``start_jack`` is false), and
    its site's JackTrip ends, as the conductor's welcome says."""

    def __init__(
        self,
        url: str,
        token: str,
        site: str | None,
        name: str,
        parts: list[str],
        scsynth: Scsynth | None,
        *,
        jack_server: str,
        start_jack: bool = True,
        sclang_port: int = SCLANG_PORT,
        ca: str | None = None,
        jacktrip: str = "jacktrip",
        link: bool = True,
        link_lead: float = 0.2,
        click_out: int = 0,
        archive: Path | None = None,
    ):
        self.scsynth = scsynth
        # Where scsynth places a timetag, allowed for in every cue it is sent
        self.placement = Placement(scsynth, jack_server, f"tutti-mark-{name}") if scsynth else None
        self.click_out = click_out  # the output bus of the click track and count-in (headphones)
        self.archive_folder = archive  # where this node records its sound and its links' (None: nowhere)
        self.archive: ArchiveRecorder | None = None
        self.jacktrip = jacktrip
        self.jack_server = jack_server
        self.start_jack = start_jack
        self._jack: asyncio.subprocess.Process | None = None
        self.sclang_port = sclang_port
        synth = None if scsynth else False  # a node without synths gets no cues
        self.client = TuttiClient(
            url, "node", token, site=site, name=name, parts=parts, synth=synth, ca=ca, rejoin=True
        )
        self.client.sio.on(protocol.CUES, self._cues)
        self.client.sio.on(protocol.HUB, self._hub_started)
        self.client.on_welcome = self._welcome
        self.audio: SiteAudio | None = None  # this site's JackTrip end, if the concert gives it one
        self.site = ""  # as the conductor's welcome gives it
        self.cues_played = 0
        self.cues_late = 0  # cues that arrived after their time ...
        self.cues_skipped = 0  # ... of which the score's rule skipped these
        self.cues_moved = 0  # ... and moved these to the next beat
        self.cues_repeated = 0  # cues received again (a rejoining node is sent the lookahead again): dropped
        self._played: dict[tuple[int, float], None] = {}  # (score cue, conductor time), oldest first
        self._http: aiohttp.ClientSession | None = None
        self._ssl = ssl.create_default_context(cafile=ca) if ca else None
        self._channel: asyncio.Task[None] | None = None
        self._held: dict[int, asyncio.TimerHandle] = {}  # cues waiting to go to scsynth
        self._holding = itertools.count()
        # This machine's Link session and its sclang follow the transport (not on a hub).
        self.link = LinkPeer(self._transport, self.client.now, self._propose, link_lead) if link and scsynth else None
        self.face = SclangFace(self.link, sclang_port) if self.link else None
        self.client.on_state = self._followed

    def _transport(self) -> Transport | None:
        return self.client.transport

    def _followed(self) -> None:
        if self.link and self.face:
            self.link.changed()
            self.face.changed()

    async def _propose(self, bpm: float) -> bool:
        """A Link peer's tempo, to the conductor, if the concert lets peers set it."""
        if not (self.client.welcome.get("link") or {}).get("peers_set_tempo"):
            return False
        with contextlib.suppress(Exception):
            return bool((await self.client.command("tempo", bpm=round(bpm, 3))).get("ok"))
        return False

    async def _welcome(self) -> None:
        self._followed()
        try:
            welcome = protocol.Welcome.model_validate(self.client.welcome)
        except pydantic.ValidationError as e:  # a conductor of another version: say what does not fit
            log.error("welcome not understood: %s", e)
            return
        self.site = welcome.you.site or ""
        if self.scsynth:
            self.scsynth.make_groups(list((welcome.groups or {}).values()))
        if welcome.cue_channel:
            await self._close_channel()
            self._channel = asyncio.create_task(self._read_channel(self.client.url.rstrip("/") + welcome.cue_channel))
        if welcome.audio is not None and self.audio is None and self.site:
            self.audio = SiteAudio(
                AudioSettings.model_validate(welcome.audio),
                self.site,
                self.jack_server,
                self.scsynth.client_name if self.scsynth else "",
                jack_env(self.jack_server),
                self.jacktrip,
                lambda: self.client.clock.offset,
                welcome.hub_joined,
            )
            await self.audio.start()
        if self.archive_folder is not None and self.archive is None:
            await self._record(welcome)

    async def _record(self, welcome: protocol.Welcome) -> None:
        """Record this node's scsynth and what its links receive, for the concert archive."""
        assert self.archive_folder is not None
        tracks = [scsynth_track(self.scsynth.client_name)] if self.scsynth else []
        if welcome.audio is not None and self.site:
            tracks += link_tracks(AudioSettings.model_validate(welcome.audio), self.site)
        name, folder = f"tutti-archive-{self.client.auth['name']}", self.archive_folder
        try:
            self.archive = await asyncio.to_thread(  # it opens a JACK client: off the event loop
                ArchiveRecorder, self.jack_server, name, folder, tracks, self.client.clock.offset_at
            )
            await self.archive.start()
        except (jack.JackError, OSError) as e:
            log.error("cannot record the archive in %s: %s", self.archive_folder, e)
            self.archive = None

    async def _hub_started(self, data: Any) -> None:
        started = _understood(protocol.HubStarted.model_validate, data, "hub event")
        if started and self.audio:
            self.audio.hub_started(self.client.clock.to_local(started.at))

    async def _cues(self, data: Any) -> None:
        batch = _understood(protocol.cues_adapter.validate_python, data, "cues")
        for cue in batch.cues if batch else []:
            self.play(cue)

    async def _read_channel(self, url: str) -> None:
        """Cues from the conductor's cue channel, a plain WebSocket: the lightest way here."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.ws_connect(url, ssl=self._ssl or True, heartbeat=10) as ws:
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    batch = _understood(protocol.cues_adapter.validate_json, message.data, "cues")
                    for cue in batch.cues if batch else []:
                        self.play(cue)
        except (aiohttp.ClientError, OSError) as e:  # the events still bring every cue
            log.warning("no cue channel at %s (%s): cues come as Socket.IO events", url, e)

    async def _close_channel(self) -> None:
        if self._channel:
            self._channel.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._channel
            self._channel = None

    def play(self, cue: protocol.NodeCue) -> None:
        """Hand one cue to scsynth (or sclang), timetagged in this machine's clock."""
        if self.scsynth is None or self._repeated(cue):
            return
        address, args = cue.address, list(cue.args)
        port = self.sclang_port if cue.to == "sclang" else None
        if cue.id == protocol.CLICK_ID and self.click_out:
            args += ["out", self.click_out]
        if port is None and address == "/n_set" and len(args) >= 3:
            self.scsynth.controls[(args[0], args[1])] = args
        elif port is None and address == "/s_new" and len(args) >= 4 and args[2] in (0, 1):
            # A synth started in a part's group starts with the part's current parameter values.
            args += [
                x
                for (group, control), setting in self.scsynth.controls.items()
                if group == args[3]
                for x in (control, setting[2])
            ]
        if cue.t is None:  # now: a setting, or a cue scheduled "immediate"
            self.scsynth.send(osc_message(address, args), port)
            self.cues_played += address != "/n_set"
            return
        # Aligned cues play early by the audio's way from this site to the one they are aligned at.
        early = (cue.align or {}).get(self.site, 0.0)
        local = self.client.clock.to_local(cue.t) - early
        now = time.time()
        if local < now:  # it came too late: the score says what to do
            self.cues_late += 1
            if cue.late == "skip":
                self.cues_skipped += 1
                return
            if cue.late == "next_beat" and cue.beat > 0:
                local += math.ceil((now - local) / cue.beat) * cue.beat
                self.cues_moved += 1
        if port is None and self.placement and local - now > SEND_AHEAD:
            # Held until shortly before its time: the correction for where scsynth places it is
            # then the latest (scsynth's clock starts again at every xrun).
            key = next(self._holding)
            delay = local - now - SEND_AHEAD
            self._held[key] = asyncio.get_running_loop().call_later(delay, self._send_held, key, local, address, args)
        else:
            self._send(local, address, args, port)
        self.cues_played += 1

    def _send_held(self, key: int, local: float, address: str, args: list[Any]) -> None:
        del self._held[key]
        self._send(local, address, args)

    def _send(self, local: float, address: str, args: list[Any], port: int | None = None) -> None:
        """A bundle for ``local`` (this machine's wall clock) to scsynth, allowing for where it places
        timetags, or to sclang."""
        assert self.scsynth is not None
        if port is None and self.placement:
            local += self.placement.correction(local)
        self.scsynth.send(osc_bundle(local, address, args), port)

    def _repeated(self, cue: protocol.NodeCue) -> bool:
        """Whether this score cue, at this time, was played already: a cue sounds once."""
        if cue.id is None or cue.t is None:
            return False
        key = (cue.id, cue.t)
        if key in self._played:
            self.cues_repeated += 1
            return True
        if len(self._played) > REMEMBER_CUES:  # forget the oldest half
            for old in list(self._played)[: REMEMBER_CUES // 2]:
                del self._played[old]
        self._played[key] = None
        return False

    async def run(self) -> None:
        if self.start_jack:
            self._jack = await start_jack(self.jack_server, channels=self.scsynth.channels if self.scsynth else 2)
        # scsynth first: joined at once, every site's jacktrip could call a hub that is still starting,
        # and jacktrip 1.7's hub then may never take them (the dress rehearsal failed so in CI).
        if self.scsynth:
            await self.scsynth.start()
        if self.placement:
            await self.placement.start()
        await self.client.connect()
        if self.link and self.face:
            self.link.start()
            self.face.start()
        # A node back after a restart is all green again as soon as the conductor hears so.
        reported, last = None, 0.0
        while True:
            if self.client.sio.connected:
                now = time.monotonic()
                if (looks := self._looks()) != reported or now - last >= REPORT_EVERY:
                    reported, last = looks, now
                    await self._report()
            await asyncio.sleep(LOOK_EVERY)

    def _looks(self) -> tuple[Any, ...]:
        """What the console's go / no-go rows for this node are read from."""
        links = tuple((s.state, s.latency_ms is None, s.peers) for s in self.audio.states) if self.audio else ()
        up = self.scsynth.health.answering and self.scsynth.health.synthdefs > 0 if self.scsynth else True
        clock = self.client.clock
        return up, links, clock.samples >= CLOCK_SAMPLES and clock.error <= CLOCK_FAR

    async def _report(self) -> None:
        try:
            health = self.health().model_dump()
        except pydantic.ValidationError as e:  # a report the conductor would refuse: say why here
            log.error("health not reported: %s", e)
            return
        with contextlib.suppress(Exception):  # a disconnect in between: the next report goes
            await self.client.sio.emit(protocol.HEALTH, health)

    def health(self) -> protocol.Health:
        h = self.scsynth.health if self.scsynth else Health(up=True)
        clock = self.client.clock
        return protocol.Health(
            up=h.answering, synth=self.scsynth is not None, restarts=h.restarts, late=h.late, failures=h.failures,
            ugens=h.ugens, synths=h.synths, synthdefs=h.synthdefs, cpu_avg=h.cpu_avg, cpu_peak=h.cpu_peak,
            last_error=h.last_error[-500:],
            cues=self.cues_played, cues_late=self.cues_late, cues_skipped=self.cues_skipped,
            cues_moved=self.cues_moved, cues_repeated=self.cues_repeated,
            offset=clock.offset, samples=clock.samples, error=min(clock.error, 60.0),
            links=[state.report() for state in self.audio.states]  # type: ignore[misc]
            if self.audio
            else [],
            link=protocol.LinkHealth.model_validate(self.link.report()) if self.link else None,
            placement_ms=round(self.placement.correction(time.time()) * 1000, 3) if self.placement else None,
        )  # fmt: skip

    async def close(self) -> None:
        if self.link and self.face:
            await self.face.close()
            await self.link.close()
        await self._close_channel()
        if self._http:
            await self._http.close()
        await self.client.close()
        if self.archive:
            await self.archive.close()
        if self.audio:
            await self.audio.close()
        for handle in self._held.values():
            handle.cancel()
        if self.placement:
            await self.placement.close()
        if self.scsynth:
            await self.scsynth.close()
        await _end(self._jack)


def _understood(validate: Callable[[Any], T], data: Any, what: str) -> T | None:
    """``data`` as ``validate`` reads it; None (and a warning) if it does not fit."""
    try:
        return validate(data)
    except pydantic.ValidationError as e:
        log.warning("%s not understood: %s", what, e)
        return None
