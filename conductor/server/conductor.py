"""The conductor: one performance, and what its clients may ask of it.

It wires the parts together: the core (``core/performance.py``) behind the change pipeline
(``pipeline.py``), whose outputs are the journal, the node-cue sender (``cues.py``), the OSC echo
(``osc.py``), the state broadcaster (``broadcast.py``) and the console feed (``console.py``);
and the roster of clients (``joins.py``). Clients reach it through a gateway (``gateway.py``):
in one process (``local``), or from web workers over Redis (``cluster.py``). Only the conductor
role may send commands; anything malformed, oversized, unknown or forbidden is answered with an
``error`` event and counted, and the conductor goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pydantic
import segno

from conductor.core import journal, protocol
from conductor.core.clock import ConductorClock
from conductor.core.concert import Concert
from conductor.core.performance import Performance
from conductor.core.preflight import concert_rows
from conductor.core.protocol import ControlInput, Health, Invite, PageProblem, Rejected, Repeat, Report, SetTempo
from conductor.core.scheduler import Lookahead
from conductor.core.score import LoadedScore
from conductor.core.transport import Transport
from conductor.server.allowance import Allowance
from conductor.server.broadcast import FRAME, StateBroadcast
from conductor.server.console import ConsoleFeed, Refusals
from conductor.server.cues import CHANNEL, NodeCues
from conductor.server.gateway import Gateway, Out, Source
from conductor.server.joins import (
    AUDIENCE_FOLLOWERS,
    BARRED_DELAY,
    FOLLOWERS,
    JOIN_COOLDOWN,
    NODES,
    Client,
    Roster,
    summary,
)
from conductor.server.linkmetrics import LinkMetrics, metrics_path
from conductor.server.osc import OscIngress
from conductor.server.osctime import SenderClocks
from conductor.server.pipeline import Pipeline
from conductor.server.sketches import SketchLog, SketchRelay
from conductor.server.watch import ScoreWatch

log = logging.getLogger("tutti.conductor")
HEALTH_RATE = 20.0  # health reports a node may send a second (it sends about one, and one on each change) ...
HEALTH_BURST = 40.0  # ... and at once
HUB_EVERY = 2.0  # seconds: the sites are told a hub started at most this often (a real one takes seconds)
HUB_SAME = 1.0  # seconds: a hub start this close to the last one told is the same jacktrip


class Conductor:
    """The performance. It sends through ``out``: a gateway's Socket.IO server, or Redis to the workers'."""

    def __init__(
        self,
        concert: Concert,
        out: Out,
        clock: ConductorClock | None = None,
        fresh: bool = False,
        skip_bad_journal_lines: bool = False,
        cue_channel: bool = False,
    ):
        self.concert = concert
        self.cue_channel = cue_channel  # nodes may open a cue channel to this process (not with workers)
        self.score = concert.score
        self.out = out
        self.clock = clock or ConductorClock()
        self.started = time.time()
        self.reachable: list[str] = []  # addresses of this machine other devices can open (set once listening)
        self.roster = Roster(concert)
        self.refusals = Refusals(self.clock.now)
        self.controls: dict[str, Any] = {}  # "part/control" -> latest value from a performer
        self.lookahead = Lookahead(floor=concert.settings.lookahead, ceiling=concert.settings.max_lookahead)

        resumed = journal.resume(
            concert.journal_path, self.score.score, self.score.sha256, fresh=fresh, skip_bad=skip_bad_journal_lines
        )
        for problem in resumed.skipped:
            log.warning(problem)
        self.core = Performance(self.score.score, resumed.transport)
        durable = Transport(self.score.score)
        durable.restore(resumed.transport.snapshot(self.clock.now()))
        header = {"score": str(self.score.path), "score_sha256": self.score.sha256, "started": self.clock.now()}
        self.journal = journal.Journal(concert.journal_path, header, durable)
        log.info(
            "resumed %d changes from %s%s; position %.3f s",
            resumed.records,
            concert.journal_path,
            f" after the checkpoint at change {resumed.checkpoint_seq}" if resumed.checkpoint_seq else "",
            self.transport.position(self.clock.now()),
        )

        self.nodes = NodeCues(self.core, self.roster, out, self.lookahead, self.clock.now)
        self.broadcast = StateBroadcast(out)
        # Nodes follow the transport (for their Link session and sclang) as soon as a change is
        # accepted, like their cues: a tempo change must reach them within the lookahead.
        self.node_state = StateBroadcast(out, ((NODES, FRAME),), protocol.TRANSPORT)
        self.pipeline = Pipeline(self.core, self.journal, self.nodes.timing, lambda: self.score.version)
        self.pipeline.on_accepted += [self.nodes.accepted, self.node_state.durable]
        self.pipeline.on_durable.append(self.broadcast.durable)
        self.pipeline.on_reverted += [self.nodes.reverted, self._reverted]
        audio = concert.settings.audio
        self.link_metrics: LinkMetrics | None = None  # each audio link's figures, once a second
        if audio and (audio.links or audio.pairs):
            period_ms = audio.period / audio.sample_rate * 1000
            path = metrics_path(concert.journal_path)
            self.link_metrics = LinkMetrics(self._node_links, path, self.clock.now, period_ms)
        self.nodes.repeat = self._repeat
        parts = [(p.id, p.site) for p in self.score.score.parts]
        self.console = ConsoleFeed(
            self.roster, self.refusals, self.controls, self.lookahead, lambda: self.journal.unavailable, out,
            self.link_metrics.feed if self.link_metrics else lambda: None,
            lambda nodes: concert_rows(nodes, parts, concert.settings.audio),
        )  # fmt: skip
        self.journal.on_availability = self._journal_availability
        self.osc: OscIngress | None = None
        if concert.settings.osc is not None:
            ranges = {p.id: (p.min, p.max) for p in self.score.score.parameters}
            clocks = SenderClocks(self._node_clocks, self.clock.minus_wall)
            self.osc = OscIngress(concert.settings.osc, ranges, self.pipeline.submit, self.refusals.count, clocks)
            self.pipeline.on_accepted.append(self.osc.echo)
        self.watch: ScoreWatch | None = None  # tutti serve --watch
        self.sketch_log = SketchLog(journal.sketch_log(concert.journal_path))
        self.sketches = SketchRelay(
            lambda: self.score.score,
            lambda: self.transport,
            out,
            self.clock.now,
            self.sketch_log,
            lambda: self.score.version,
        )
        self.health_allowance = Allowance(HEALTH_RATE, HEALTH_BURST)
        self._hub_at = -math.inf  # when the hub's jacktrip started (conductor time), as last told to the nodes
        self._hub_told = -math.inf  # ... and when they were told (monotonic)
        self._handlers: dict[str, Callable[[Client, Any], Awaitable[Any]]] = {
            protocol.SYNC: self._sync,
            protocol.COMMAND: self._command,
            protocol.REPORT: self._report,
            protocol.CONTROL: self._control,
            protocol.HEALTH: self._health,
            protocol.INVITE: self._invite,
            protocol.SOUND: self._sound,
            protocol.PROBLEM: self._problem,
            protocol.SKETCH: self._sketch,
        }

    @property
    def transport(self) -> Transport:
        return self.core.transport

    @property
    def clients(self) -> dict[str, Client]:
        return self.roster.clients

    def _node_clocks(self) -> list[tuple[str, float]]:
        """Each node's address and clock offset (conductor minus its wall clock), as it last reported."""
        return [
            (c.address, c.health["offset"])
            for c in self.clients.values()
            if c.role == "node" and c.health and protocol.is_number(c.health.get("offset"))
        ]

    def _node_links(self) -> list[tuple[float | None, list[dict[str, Any]]]]:
        """Each node's clock error (s) and link reports, as it last reported."""
        return [
            (c.health.get("error"), c.health.get("links") or [])
            for c in self.clients.values()
            if c.role == "node" and c.health
        ]

    def _reverted(self) -> None:
        snapshot = protocol.Snapshot.model_validate(self.transport.snapshot(self.clock.now()))
        self.broadcast.reverted(snapshot)
        self.node_state.reverted(snapshot)

    def _journal_availability(self, reason: str | None) -> None:
        if reason:
            log.error("changes are refused until the journal can be written: %s", reason)
        else:
            log.warning("the journal can be written again: changes are accepted")

    def snapshot(self) -> dict[str, Any]:
        """What ``/api/status`` shows."""
        now = self.clock.now()
        return {
            "title": self.concert.title,
            "now": now,
            "clock_minus_wall": self.clock.minus_wall(),
            "position": self.transport.position(now),
            "state": self.transport.snapshot(now),
            # Open to anyone: no sids (with one, a client could be sent events in another's name).
            "clients": [c.info().model_dump(exclude={"sid"}) for c in self.clients.values()],
            "rejections": dict(self.refusals.counts),
            "journal": str(self.journal.path),
            "journal_unavailable": self.journal.unavailable,
            "osc_coalesced": self.osc.coalesced if self.osc else 0,
            "osc_echo_peers": len(self.osc.udp_peers) if self.osc else 0,
            "lookahead": self.lookahead.to_json(),
            "preflight": [row.model_dump() for row in self.console.feed().preflight],
        }

    # --- what gateways ask of it (``gateway.Performance``) ----------------------------------------

    async def count(self, rejected: Rejected, event: str, client: str) -> None:
        self.refusals.count(rejected.code, rejected.message, event, client)

    def _refuse(self, sid: str, event: str, rejected: Rejected) -> dict[str, Any]:
        client = self.clients.get(sid)
        self.refusals.count(rejected.code, rejected.message, event, client.name if client else sid)
        return {"ok": False, **rejected.payload(event)}

    async def handle(self, sid: str, event: str, args: list[Any]) -> Any:
        """One event from a client: its acknowledgement, or a refusal (``{"ok": false, ...}``). Never raises."""
        try:
            handler = self._handlers.get(event)
            if handler is None:
                raise Rejected("unknown_event", f"no event '{event}'")
            client = self.clients.get(sid)
            if client is None:
                raise Rejected("not_joined", "join first")
            client.last_seen = self.clock.now()
            if len(args) != 1:
                raise Rejected("bad_payload", f"'{event}' takes exactly one payload, not {len(args)}")
            return await handler(client, args[0])
        except Rejected as r:
            return self._refuse(sid, event, r)
        except pydantic.ValidationError as e:
            return self._refuse(sid, event, Rejected("bad_payload", summary(e)))
        except Exception:
            log.exception("error handling %s from %s", event, sid)
            return self._refuse(sid, event, Rejected("internal", "the conductor could not handle this"))

    async def join(self, sid: str, auth: Any, source: Source) -> None:
        """Admit a client: its rooms, then its welcome, through ``out``. Raises Rejected (counted)."""
        roster = self.roster
        role = str(auth.get("role"))[:16] if isinstance(auth, dict) else ""
        barred = roster.failed.barred(source.address, role, time.monotonic())
        if barred:  # guessing: each try waits, and a right token still gets in
            await asyncio.sleep(BARRED_DELAY)
        try:
            joined = roster.auth(auth)
        except Rejected as r:
            if r.code == "bad_token":
                roster.failed.failed(source.address, role, time.monotonic())
                if barred:
                    r = Rejected("rate_limited", f"too many wrong tokens for role '{role}'; wait {JOIN_COOLDOWN:g} s")
            self._refuse(sid, "connect", r)
            raise r from None
        now = self.clock.now()
        client, rooms = roster.admit(sid, joined, now, source.worker)
        client.address = source.address
        welcome = protocol.Welcome(
            you=client.info(),
            score=self.score.to_json(),
            version=self.score.version,
            files=self.score.file_versions,
            state=protocol.Snapshot.model_validate(self.transport.snapshot(now)),
            now=now,
            groups={p: self.score.score.group(p) for p in client.parts} if client.role == "node" else None,
            audio=self.concert.settings.audio.model_dump() if roster.runs_audio(client) else None,  # type: ignore[union-attr]
            cue_channel=f"{CHANNEL}?ticket={self.nodes.ticket(sid)}"
            if client.role == "node" and self.cue_channel
            else None,
            link=self.concert.settings.link.model_dump() if client.role == "node" else None,
            hub_joined=roster.hub_joined() if roster.runs_audio(client) else None,
        )
        # Rooms first, the welcome last: a change broadcast after the welcome's snapshot reaches
        # this client after its welcome, even through Redis (one channel, in order).
        for room in rooms:
            await self.out.enter_room(sid, room)
        await self.out.emit(protocol.WELCOME, welcome.model_dump(exclude_none=True), to=sid)
        if client.role == "node" and client.synth:
            await self.nodes.welcome(sid, client.parts, rooms)

    async def leave(self, sid: str) -> None:
        self.roster.leave(sid)
        self.sketches.left(sid)
        self.health_allowance.forget(sid)
        await self.nodes.left(sid)

    def forget_worker(self, worker: str) -> None:
        self.roster.forget_worker(worker)

    async def status(self) -> dict[str, Any]:
        return self.snapshot()

    # --- events ---------------------------------------------------------------------------------

    async def _sync(self, client: Client, t0: Any) -> list[float]:
        """Gateways answer sync themselves; this is for clients of the performance in-process."""
        t1 = self.clock.now()
        if not protocol.is_number(t0):
            raise Rejected("bad_payload", "sync takes the client's send time, a number")
        return [t0, t1, self.clock.now()]

    async def take_score(self, loaded: LoadedScore) -> None:
        """A live edit (``tutti serve --watch``) that passed ``tutti check``, with the same parts and
        parameters: taken at once, at the performance's place, and sent to every page."""
        before = self.score.file_versions
        self.score = self.concert.score = loaded
        for holder in (self.core, self.transport, self.journal.durable, self.roster):
            holder.score = loaded.score
        changed = {
            name: data for name, data in loaded.sources.items() if before.get(name) != loaded.file_versions[name]
        }
        sources = {}
        if sum(len(data) for data in changed.values()) <= protocol.INLINE_SOURCES:
            sources = {name: data.decode("utf-8", errors="replace") for name, data in changed.items()}
        update = protocol.ScoreUpdate(
            version=loaded.version, score=loaded.to_json(), files=loaded.file_versions, sources=sources
        )
        for room in (FOLLOWERS, AUDIENCE_FOLLOWERS):
            await self.out.emit(protocol.SCORE, update.model_dump(), room=room)
        log.info("took version %s of the score %s", loaded.version, loaded.path)

    async def _report(self, client: Client, payload: Any) -> None:
        _check_size(payload)
        report = Report.model_validate(payload)
        client.rtt, client.offset, client.error, client.delay = report.rtt, report.offset, report.error, report.delay

    def _repeat(self, at: float) -> bool:
        """A loop's jump back at its end, journalled like any change; false if it was refused."""
        try:
            kept = self.pipeline.submit(Repeat(cmd="repeat", at=at), {"role": "conductor", "name": "loop"})
        except Rejected as e:
            log.warning("the loop cannot go back (%s): it plays on", e.message)
            return False
        kept.add_done_callback(lambda f: f.cancelled() or f.exception())  # a refusal is the pipeline's to log
        return True

    async def _command(self, client: Client, payload: Any) -> dict[str, Any]:
        _check_size(payload)
        command = protocol.command_adapter.validate_python(payload)
        # A node proposes the tempo a Link peer at its site set, if the concert lets peers set it.
        peers_set_tempo = self.concert.settings.link.peers_set_tempo
        proposed = isinstance(command, SetTempo) and client.role == "node" and peers_set_tempo
        if client.role != "conductor" and not proposed:
            raise Rejected("forbidden", f"only the conductor may send commands (you are {client.role})")
        change = await self.pipeline.apply(command, {"role": client.role, "name": client.name})
        return {"ok": True, "seq": change.seq, "t": change.t}

    async def _control(self, client: Client, payload: Any) -> dict[str, Any]:
        _check_size(payload)
        data = ControlInput.model_validate(payload)
        if client.role != "performer":
            raise Rejected("forbidden", f"no control '{data.id}' in your part")
        command = self.core.control(client.part, data)
        self.controls[f"{client.part}/{data.id}"] = data.value
        if command is None:
            return {"ok": True, "seq": self.transport.seq}
        by = {"role": client.role, "name": client.name, "part": client.part, "control": data.id}
        change = await self.pipeline.apply(command, by)
        return {"ok": True, "t": change.t, "seq": change.seq}

    async def _health(self, client: Client, payload: Any) -> None:
        _check_size(payload)
        if client.role != "node":
            raise Rejected("forbidden", "only nodes report health")
        if not self.health_allowance.spend(client.sid, time.monotonic()):
            raise Rejected("rate_limited", f"more than {HEALTH_RATE:g} health reports a second: report less often")
        health = Health.model_validate(payload).model_dump()
        late = health.get("cues_late", 0) - (client.health or {}).get("cues_late", 0)
        if isinstance(late, int) and late > 0:
            log.warning("%s got %d cues late; the lookahead grows", client.name, late)
            self.lookahead.late(late)
        client.health = health
        if self._runs_hub(client):
            await self._hub_news(health)

    async def _hub_news(self, health: dict[str, Any]) -> None:
        """Tell the nodes when the hub's jacktrip began to listen, once per process: its node's
        first report of it (it started again, or the node joined again) or this conductor's first."""
        up = next((link["up_s"] for link in health.get("links", []) if link["role"] == "hub"), None)
        if up is None:
            return
        at, now = self.clock.now() - up, time.monotonic()
        if at - self._hub_at > HUB_SAME and now - self._hub_told > HUB_EVERY:
            self._hub_at, self._hub_told = at, now
            log.info("the JackTrip hub's jacktrip started %.1f s ago: sites that called it before join again", up)
            await self.out.emit(protocol.HUB, protocol.HubStarted(at=at).model_dump(), room=NODES)

    def _runs_hub(self, client: Client) -> bool:
        audio = self.concert.settings.audio
        return (
            audio is not None
            and audio.hub is not None
            and self.roster.runs_audio(client)
            and client.site == audio.hub.site
        )

    async def _invite(self, client: Client, payload: Any) -> dict[str, Any]:
        """Each part's performer link, with its token, as a URL and a QR code (SVG) for the console."""
        if client.role != "conductor":
            raise Rejected("forbidden", "only the conductor may invite performers")
        base = Invite.model_validate(payload).base
        invites = []
        for part in self.score.score.parts:
            token = self.concert.token_for("performer", part.id)
            url = f"{base}/perform?" + urlencode({"part": part.id, **({"token": token} if token else {})})
            svg = segno.make(url, error="m").svg_inline(scale=4, dark="#000", light="#fff")
            invites.append({"part": part.id, "name": part.name, "url": url, "svg": svg})
        return {"ok": True, "invites": invites, "addresses": self.reachable}

    async def _sound(self, client: Client, payload: Any) -> dict[str, Any]:
        """A sound the conductor plays outside the score: sent to its nodes like a score cue."""
        _check_size(payload)
        sound = protocol.SoundEvent.model_validate(payload)
        if client.role != "conductor":
            raise Rejected("forbidden", f"only the conductor may play sounds (you are {client.role})")
        routed = self.core.sound(sound, self.nodes.timing())
        if not self.nodes.members.get(routed.room):
            where = "no node has joined" if sound.target == "all" else f"no node sounds {sound.target}"
            raise Rejected("no_nodes", f"{where}: nothing would play it (start one with `tutti node`)")
        self.nodes.queue([routed])
        return {"ok": True, "t": routed.cue.t}

    async def _problem(self, client: Client, payload: Any) -> None:
        """A page says something failed on it (a sketch): listed on the console with who it was."""
        problem = PageProblem.model_validate(payload)
        self.refusals.count("page_problem", f"{problem.what}: {problem.message}", protocol.PROBLEM, client.name)

    async def _sketch(self, client: Client, payload: Any) -> dict[str, Any]:
        """An event from a performer's sketch, relayed to the sketches of the parts it names."""
        _check_size(payload)
        return await self.sketches.send(client, protocol.SketchEvent.model_validate(payload))

    # --- running ------------------------------------------------------------------------------

    async def start(self, osc_host: str, watch: bool = False) -> None:
        if watch:
            refuse = lambda message: self.refusals.count("edit_refused", message, "watch", "score")  # noqa: E731
            self.watch = ScoreWatch(lambda: self.score, self.take_score, refuse)
            await self.watch.start()
        await self.journal.start()
        await self.sketch_log.start()
        await self.nodes.start()
        await self.console.start()
        if self.link_metrics:
            await self.link_metrics.start()
        if self.osc:
            await self.osc.start(osc_host)

    async def stop(self) -> None:
        if self.watch:
            await self.watch.stop()
        if self.link_metrics:
            await self.link_metrics.stop()
        await self.console.stop()
        await self.sketch_log.stop()
        await self.nodes.stop()
        if self.osc:
            self.osc.close()
        await self.broadcast.stop()
        await self.node_state.stop()
        await self.journal.close()


def local(concert: Concert, fresh: bool = False, skip_bad_journal_lines: bool = False) -> tuple[Conductor, Gateway]:
    """A conductor in one process: the performance, and a gateway that serves it."""
    clock = ConductorClock()
    gateway = Gateway(concert, clock)
    conductor = Conductor(concert, gateway.sio, clock, fresh, skip_bad_journal_lines, cue_channel=True)
    gateway.app.router.add_get(CHANNEL, conductor.nodes.channel)
    gateway.serve(conductor)
    return conductor, gateway


def _check_size(payload: Any) -> None:
    size = len(protocol.FiniteJson.dumps(payload).encode())
    if size > protocol.MAX_EVENT_BYTES:
        raise Rejected("too_large", f"payload of {size} bytes (at most {protocol.MAX_EVENT_BYTES})")
