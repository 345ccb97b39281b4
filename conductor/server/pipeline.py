"""The performance: one clock, the score, the transport, the journal and the cue scheduler.

Clients join with a role and token (``protocol.Auth``), are sent a ``welcome`` with the score
and a snapshot of the performance, keep their clocks in step with ``sync``, and receive a
``state`` event for every accepted change. Only the conductor role may send commands. Every
accepted change is journalled before it is broadcast. Nothing a client sends can stop the
server: anything malformed, oversized, unknown or forbidden is answered with an ``error`` event
and counted in ``/api/status``.

The network side is ``gateway.py``: in one process (``local``), or as several web workers that
reach this performance over Redis (``cluster.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import pydantic
import segno

from conductor.core import journal, protocol
from conductor.core.clock import ConductorClock
from conductor.core.concert import Concert
from conductor.core.protocol import Auth, ControlInput, Health, Invite, Rejected, Report, SetParam
from conductor.core.scheduler import Lookahead, TimedCue, audio_delays, cues_between
from conductor.core.score import XY, Aligned, Fader, Toggle
from conductor.core.transport import Change, Transport
from conductor.server.gateway import JOINED, Gateway, Out, Source
from conductor.server.osc import OscIngress

log = logging.getLogger("tutti.conductor")
CUE_TICK = 0.01  # seconds between looks for cues entering the lookahead
LOOKAHEAD_EVERY = 0.25  # seconds between updates of the lookahead from the clients' delays
JOIN_FAILURES = 10  # failed joins from one address ...
JOIN_COOLDOWN = 30.0  # ... within this many seconds bar it until they are that old


@dataclass
class Client:
    sid: str
    role: str
    name: str
    part: str | None
    site: str | None
    joined: float
    last_seen: float
    rtt: float | None = None
    offset: float | None = None
    error: float | None = None
    delay: float | None = None  # how late the conductor's messages reach it (its p95)
    health: dict[str, Any] | None = None  # nodes: their last report
    parts: list[str] = field(default_factory=list)  # nodes: the parts they sound
    worker: str = ""  # the web worker it is connected to ("" in a single process)


class JoinLimiter:
    """Refuses joins from an address for a while after it failed too often (guessing tokens)."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}

    def failed(self, source: str, now: float) -> None:
        window = self.failures.setdefault(source, deque(maxlen=JOIN_FAILURES))
        window.append(now)
        if len(self.failures) > 10_000:  # forget the oldest address rather than grow without end
            self.failures.pop(next(iter(self.failures)))

    def barred(self, source: str, now: float) -> bool:
        window = self.failures.get(source)
        return bool(window) and len(window) == JOIN_FAILURES and now - window[0] < JOIN_COOLDOWN  # type: ignore[arg-type]


def _summary(error: pydantic.ValidationError) -> str:
    parts = []
    for err in error.errors(include_url=False)[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Conductor:
    """The performance. It sends through ``out``: a gateway's Socket.IO server, or Redis to the workers'."""

    def __init__(self, concert: Concert, out: Out, clock: ConductorClock | None = None, fresh: bool = False):
        self.concert = concert
        self.score = concert.score
        self.out = out
        self.clock = clock or ConductorClock()
        self.transport = Transport(self.score.score)
        self.clients: dict[str, Client] = {}
        self.rejections: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # the latest refusals, for the console
        self.controls: dict[str, Any] = {}  # "part/control" -> latest value from a performer
        self.lookahead = Lookahead(floor=concert.settings.lookahead)
        self._sent_until = 0.0  # conductor time up to which cues have been sent: changes come after it
        self._align: dict[str, dict[str, float]] = {}  # aligned site -> how early each site plays
        self.failed_joins = JoinLimiter()
        self.started = time.time()
        self._handlers: dict[str, Callable[[Client, Any], Awaitable[Any]]] = {
            protocol.SYNC: self._sync,
            protocol.COMMAND: self._command,
            protocol.REPORT: self._report,
            protocol.CONTROL: self._control,
            protocol.HEALTH: self._health,
            protocol.INVITE: self._invite,
            protocol.SOUND: self._sound,
        }
        self.journal = self._open_journal(fresh)
        self.osc: OscIngress | None = None
        if concert.settings.osc is not None:
            ranges = {p.id: (p.min, p.max) for p in self.score.score.parameters}
            self.osc = OscIngress(concert.settings.osc, ranges, self.apply, self._count)

    # --- journal ------------------------------------------------------------------------------

    def _open_journal(self, fresh: bool) -> journal.Journal:
        path = self.concert.journal_path
        if path.exists() and path.stat().st_size and fresh:
            path.rename(path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"))
        if path.exists() and path.stat().st_size:
            contents = journal.read(path)
            if contents.header.get("score_sha256") != self.score.sha256:
                raise journal.JournalError(
                    f"{path}: this journal belongs to another version of the score "
                    f"({contents.header.get('score')}); start with --fresh to begin a new performance"
                )
            for problem in contents.skipped:
                log.warning(problem)
            for record in contents.records:
                self.transport.apply(record.change)
            log.info(
                "resumed %d changes from %s; position %.3f s",
                len(contents.records),
                path,
                self.transport.position(self.clock.now()),
            )
        return journal.Journal(
            path, {"score": str(self.score.path), "score_sha256": self.score.sha256, "started": self.clock.now()}
        )

    def snapshot(self) -> dict[str, Any]:
        """What ``/api/status`` shows."""
        now = self.clock.now()
        return {
            "title": self.concert.title,
            "now": now,
            "clock_minus_wall": now - time.time(),
            "position": self.transport.position(now),
            "state": self.transport.snapshot(now),
            "clients": [asdict(c) for c in self.clients.values()],
            "rejections": dict(self.rejections),
            "journal": str(self.journal.path),
            "lookahead": self.lookahead.to_json(),
        }

    # --- what gateways ask of it (``gateway.Performance``) ----------------------------------------

    def _count(self, code: str, message: str, event: str = "osc", client: str = "") -> None:
        """Count a refusal and keep it for the console (OSC refusals have no client to answer)."""
        self.rejections[code] += 1
        self.recent.append({"t": self.clock.now(), "code": code, "message": message, "event": event, "client": client})
        log.info("rejected %s from %s: %s", event, client or "?", message)

    async def count(self, rejected: Rejected, event: str, client: str) -> None:
        self._count(rejected.code, rejected.message, event, client)

    def _refuse(self, sid: str, event: str, rejected: Rejected) -> dict[str, Any]:
        client = self.clients.get(sid)
        self._count(rejected.code, rejected.message, event, client.name if client else sid)
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
            return self._refuse(sid, event, Rejected("bad_payload", _summary(e)))
        except Exception:
            log.exception("error handling %s from %s", event, sid)
            return self._refuse(sid, event, Rejected("internal", "the conductor could not handle this"))

    def _check_token(self, auth: Auth) -> None:
        if auth.role == "performer" and (auth.part is None or self.score.score.part(auth.part) is None):
            known = ", ".join(p.id for p in self.score.score.parts)
            raise Rejected("unknown_part", f"a performer needs one of the parts: {known}")
        expected = self.concert.token_for(auth.role, auth.part)
        if expected is not None and not hmac.compare_digest(expected.encode(), auth.token.encode()):
            whose = (
                f"part '{auth.part}'"
                if auth.role == "performer" and self.concert.part_tokens
                else f"role '{auth.role}'"
            )
            raise Rejected("bad_token", f"wrong token for {whose}")
        unknown = [p for p in auth.parts if self.score.score.part(p) is None]
        if unknown:
            raise Rejected("unknown_part", f"no part {', '.join(unknown)} in the score")

    def _runs_audio(self, node: Client) -> bool:
        """Whether a node runs an end of the JackTrip topology: its site's, if it is that end's node."""
        audio = self.concert.settings.audio
        if audio is None:
            return False
        return any(end.site == node.site and end.node in (None, node.name) for end in audio.ends())

    def _node_parts(self, joined: Auth, site: str | None) -> list[str]:
        """The parts a node sounds: those it names, else its site's, else (no site) every part."""
        parts = self.score.score.parts
        if not joined.synth:
            return []
        if joined.parts:
            return list(joined.parts)
        return [p.id for p in parts if site is None or p.site == site]

    async def join(self, sid: str, auth: Any, source: Source) -> None:
        """Admit a client: its rooms, then its welcome, through ``out``. Raises Rejected (counted)."""
        try:
            if self.failed_joins.barred(source.address, time.monotonic()):
                raise Rejected("rate_limited", f"too many failed joins from {source.address}; wait {JOIN_COOLDOWN:g} s")
            if not isinstance(auth, dict):
                raise Rejected("bad_auth", "connect with auth {role, token, part?, site?, name?}")
            try:
                joined = Auth.model_validate(auth)
            except pydantic.ValidationError as e:
                raise Rejected("bad_auth", _summary(e)) from e
            self._check_token(joined)
        except Rejected as r:
            if r.code != "rate_limited":
                self.failed_joins.failed(source.address, time.monotonic())
            self._refuse(sid, "connect", r)
            raise
        now = self.clock.now()
        part = self.score.score.part(joined.part) if joined.part else None
        site = joined.site or (part.site if part else None)
        name = joined.name or f"{joined.role}-{sid[:4]}"
        client = Client(sid, joined.role, name, joined.part, site, now, now, worker=source.worker)
        self.clients[sid] = client
        rooms = [f"role:{client.role}"]
        welcome: dict[str, Any] = {"score": self.score.to_json(), "state": self.transport.snapshot(now)}
        if client.role == "node":  # the rooms cues are sent to: all nodes, a site, a part, one node
            client.parts = self._node_parts(joined, site)
            rooms += [f"nodes:{r}" for r in [f"node:{client.name}", *(f"part:{p}" for p in client.parts)]]
            rooms += ["nodes:all"] if joined.synth else []
            rooms += [f"nodes:site:{site}"] if site else []
            welcome["groups"] = {p: self.score.score.group(p) for p in client.parts}
            if self._runs_audio(client):
                welcome["audio"] = self.concert.settings.audio.model_dump()  # type: ignore[union-attr]
        # Rooms first, the welcome last: a change broadcast to JOINED after the welcome's snapshot
        # reaches this client after its welcome, even through Redis (one channel, in order).
        for room in [*rooms, JOINED]:
            await self.out.enter_room(sid, room)
        log.info("%s joined as %s%s", client.name, client.role, f" ({client.part})" if client.part else "")
        await self.out.emit(protocol.WELCOME, {"you": asdict(client), **welcome, "now": self.clock.now()}, to=sid)
        if client.role == "node":  # what its synths should be set to now, and the cues already sent
            for param, timeline in self.transport.params.items():
                for p, cue in self._sounding(param, timeline.at(now), None):
                    if p in client.parts:
                        await self.out.emit(protocol.CUE, cue, to=sid)
            # A node that rejoins (a network blip, or this conductor restarted) would otherwise miss
            # them; nodes play each cue once, so one it has already is dropped.
            for timed in cues_between(self.score.score, self.transport, now, self._sent_until):
                room, cue, immediate = self._cue(timed)
                if room in rooms and not immediate:
                    await self.out.emit(protocol.CUE, cue, to=sid)

    async def leave(self, sid: str) -> None:
        client = self.clients.pop(sid, None)
        if client:
            log.info("%s left", client.name)

    def forget_worker(self, worker: str) -> None:
        """A web worker died: its clients are gone (they will join again through another)."""
        for sid in [sid for sid, c in self.clients.items() if c.worker == worker]:
            del self.clients[sid]

    async def status(self) -> dict[str, Any]:
        return self.snapshot()

    async def _sync(self, client: Client, t0: Any) -> list[float]:
        """Gateways answer sync themselves; this is for clients of the performance in-process."""
        t1 = self.clock.now()
        if not protocol.is_number(t0):
            raise Rejected("bad_payload", "sync takes the client's send time, a number")
        return [t0, t1, self.clock.now()]

    async def _report(self, client: Client, payload: Any) -> None:
        _check_size(payload)
        report = Report.model_validate(payload)
        client.rtt, client.offset, client.error, client.delay = report.rtt, report.offset, report.error, report.delay

    async def _command(self, client: Client, payload: Any) -> dict[str, Any]:
        _check_size(payload)
        command = protocol.command_adapter.validate_python(payload)
        if client.role != "conductor":
            raise Rejected("forbidden", f"only the conductor may send commands (you are {client.role})")
        change = await self.apply(command, {"role": client.role, "name": client.name})
        return {"ok": True, "seq": change.seq, "t": change.t}

    async def _control(self, client: Client, payload: Any) -> dict[str, Any]:
        _check_size(payload)
        data = ControlInput.model_validate(payload)
        part = self.score.score.part(client.part or "")
        control = next((c for c in part.controls if c.id == data.id), None) if part else None
        if client.role != "performer" or control is None:
            raise Rejected("forbidden", f"no control '{data.id}' in your part")
        value = data.value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(control, Fader) and not (number and control.min <= value <= control.max):  # type: ignore[operator]
            raise Rejected("out_of_range", f"fader '{control.id}' takes {control.min:g} to {control.max:g}")
        if isinstance(control, Toggle) and not isinstance(value, bool):
            raise Rejected("bad_payload", f"toggle '{control.id}' takes true or false")
        if isinstance(control, XY) and not (isinstance(value, tuple) and all(0 <= v <= 1 for v in value)):
            raise Rejected("out_of_range", f"xy pad '{control.id}' takes [x, y] from 0 to 1")
        self.controls[f"{client.part}/{control.id}"] = value
        answer: dict[str, Any] = {"ok": True}
        if control.param is not None:
            by = {"role": client.role, "name": client.name, "part": client.part, "control": control.id}
            if isinstance(value, tuple):
                values = list(zip((f"{control.param}_x", f"{control.param}_y"), value, strict=True))
            else:
                values = [(control.param, float(value))]
            for name, v in values:
                answer["t"] = (await self.apply(SetParam(cmd="param", name=name, value=v), by)).t
        return {**answer, "seq": self.transport.seq}

    async def _health(self, client: Client, payload: Any) -> None:
        _check_size(payload)
        if client.role != "node":
            raise Rejected("forbidden", "only nodes report health")
        health = Health.model_validate(payload).model_dump()
        late = health.get("cues_late", 0) - (client.health or {}).get("cues_late", 0)
        if isinstance(late, int) and late > 0:
            log.warning("%s got %d cues late; the lookahead grows", client.name, late)
            self.lookahead.late(late)
        client.health = health

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
        return {"ok": True, "invites": invites}

    async def _send_cues(self) -> None:
        """Send each score cue to its nodes as its schedule says (see ``scheduler.py``)."""
        self._sent_until = self.clock.now()
        held: list[tuple[float, str, dict[str, Any]]] = []  # immediate cues, until their time comes
        updated = time.monotonic()
        aligned = {s.aligned for s in self._schedules() if isinstance(s, Aligned)}
        early = 0.0  # the most any site plays early: aligned cues are sent that much sooner
        while True:
            await asyncio.sleep(CUE_TICK)
            try:
                if time.monotonic() - updated > LOOKAHEAD_EVERY:
                    delays = {c.name: c.delay for c in self.clients.values() if c.delay is not None}
                    self.lookahead.update(delays, time.monotonic() - updated)
                    updated = time.monotonic()
                    self._align = {site: self._alignment(site) for site in aligned}
                    early = max((max(o.values(), default=0.0) for o in self._align.values()), default=0.0)
                now = self.clock.now()
                horizon = max(self._sent_until, now + self.lookahead.value + early)
                for timed in cues_between(self.score.score, self.transport, self._sent_until, horizon):
                    room, cue, immediate = self._cue(timed)
                    if immediate:
                        held.append((timed.t, room, cue))
                    else:
                        await self.out.emit(protocol.CUE, cue, room=room)
                self._sent_until = horizon
                while held and held[0][0] <= now:
                    _, room, cue = held.pop(0)
                    await self.out.emit(protocol.CUE, cue, room=room)
            except Exception:
                log.exception("sending cues")

    def _cue(self, timed: TimedCue) -> tuple[str, dict[str, Any], bool]:
        """A cue's room, its payload, and whether it is held until its time (``immediate``)."""
        schedule, late = self.score.score.policy(timed.cue)
        cue = {**timed.to_json(), "late": late, "beat": self._beat(timed.t)}
        room = f"nodes:{timed.cue.target}"  # nodes:all, nodes:site:X, nodes:part:X, nodes:node:X
        if schedule == "immediate":
            return room, {**cue, "t": None}, True
        if isinstance(schedule, Aligned):
            cue["align"] = self._align.get(schedule.aligned, {})
        return room, cue, False

    def _schedules(self) -> list[Any]:
        score = self.score.score
        return [score.schedule, *(s.schedule for s in score.sections), *(c.schedule for c in score.cues)]

    def _links(self) -> list[dict[str, Any]]:
        return [link for c in self.clients.values() if c.health for link in c.health.get("links", [])]

    def _alignment(self, site: str) -> dict[str, float]:
        """How early each site plays so that its sound reaches ``site`` with the site's own."""
        period = audio.period / audio.sample_rate if (audio := self.concert.settings.audio) else 0.0
        return audio_delays(self._links(), site, period)

    def _beat(self, t: float) -> float:
        """A beat's length in conductor seconds at ``t``, for cues moved to the next beat."""
        segment = self.transport.segments.at(t)
        return 60.0 / self.score.score.tempo.bpm / (segment.rate or 1.0)

    async def _sound(self, client: Client, payload: Any) -> dict[str, Any]:
        """A sound the conductor plays outside the score: sent to its nodes like a score cue."""
        _check_size(payload)
        sound = protocol.SoundEvent.model_validate(payload)
        if client.role != "conductor":
            raise Rejected("forbidden", f"only the conductor may play sounds (you are {client.role})")
        score = self.score.score
        if problems := score.sound_problems(sound):
            loc, message = problems[0]
            raise Rejected("bad_payload", f"{'.'.join(map(str, loc))}: {message}")
        schedule, late = score.policy(sound)
        align = self._alignment(schedule.aligned) if isinstance(schedule, Aligned) else None
        if schedule == "immediate" and sound.at is not None:
            raise Rejected("bad_payload", "at: an immediate sound plays when it arrives; give no 'at'")
        t = None if schedule == "immediate" else self._when(sound.at, align)
        cue: dict[str, Any] = {
            "id": None, "t": t, "to": sound.to, "address": sound.address, "args": score.cue_args(sound),
            "target": sound.target, "late": late, "beat": self._beat(t or self.clock.now()),
        }  # fmt: skip
        if align is not None:
            cue["align"] = align
        await self.out.emit(protocol.CUE, cue, room=f"nodes:{sound.target}")
        return {"ok": True, "t": cue["t"]}

    async def _feed_console(self) -> None:
        """Every second, the consoles get the clients (the audience counted by site) and the latest refusals."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.out.emit(
                    protocol.CLIENTS,
                    {
                        # The audience as counts: a table of a thousand phones helps nobody, and
                        # encoding it every second delayed everyone's broadcasts (bench/fanout.py).
                        "clients": [asdict(c) for c in self.clients.values() if c.role != "audience"],
                        "audience": Counter(c.site or "" for c in self.clients.values() if c.role == "audience"),
                        "rejections": dict(self.rejections),
                        "recent": list(self.recent)[-10:],
                        "controls": self.controls,
                        "lookahead": self.lookahead.to_json(),
                        "now": self.clock.now(),
                    },
                    room="role:conductor",
                )
            except Exception:
                log.exception("console feed")

    def _when(self, at: float | None, align: dict[str, float] | None) -> float:
        """The conductor time asked for, or without one, the soonest every destination can meet."""
        now = self.clock.now()
        if at is None:  # the slowest destination's delay, and for an aligned schedule the earliest site
            return now + self.lookahead.value + max((align or {}).values(), default=0.0)
        if at < now:
            raise Rejected("too_late", f"'at' is {now - at:.3f} s in the past")
        return float(at)

    async def apply(self, command: protocol.Command, by: dict[str, Any]) -> Change:
        """Plan, journal, apply and broadcast one command. Raises Rejected if it cannot be done."""
        now = self.clock.now()
        # A parameter is timed as its schedule says; the transport always together.
        param = self.score.score.parameter(command.name) if isinstance(command, SetParam) else None
        schedule = (param.schedule or self.score.score.schedule) if param else "together"
        align = self._alignment(schedule.aligned) if isinstance(schedule, Aligned) else None
        at_once = schedule == "immediate" and command.at is None  # nodes set it when the change reaches them
        # Otherwise: cues up to _sent_until are on their way, and a change cannot overtake them.
        t = now if at_once else max(self._when(command.at, align), self._sent_until)
        change = self.transport.plan(command, t)
        self.journal.append(journal.Record(change, now, by))
        self.transport.apply(change)
        if change.param is not None and change.value is not None:
            if self.osc:
                self.osc.echo(change.param, change.value)
            for part, cue in self._sounding(change.param, change.value, None if at_once else change.t, align):
                await self.out.emit(protocol.CUE, cue, room=f"nodes:part:{part}")
        state = {"change": change.to_json(), "state": self.transport.snapshot(now)}
        await self.out.emit(protocol.STATE, state, room=JOINED)
        return change

    def _sounding(
        self, name: str, value: float, t: float | None, align: dict[str, float] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The ``/n_set`` cues that make a parameter's value heard, one per part (``t`` None: at once)."""
        param = self.score.score.parameter(name)
        if param is None or param.n_set is None:
            return []
        parts = param.n_set.parts or [p.id for p in self.score.score.parts]
        args = [param.n_set.control, param.synth_value(value)]
        timing: dict[str, Any] = {"t": t, **({"align": align} if align is not None else {})}
        return [
            (part, {**timing, "to": "scsynth", "address": "/n_set", "args": [self.score.score.group(part), *args]})
            for part in parts
        ]

    # --- running ------------------------------------------------------------------------------

    async def start(self, osc_host: str) -> None:
        self._feed = asyncio.create_task(self._feed_console())
        self._cues = asyncio.create_task(self._send_cues())
        if self.osc:
            await self.osc.start(osc_host)

    async def stop(self) -> None:
        self._feed.cancel()
        self._cues.cancel()
        if self.osc:
            self.osc.close()
        self.journal.close()


def local(concert: Concert, fresh: bool = False) -> tuple[Conductor, Gateway]:
    """A conductor in one process: the performance, and a gateway that serves it."""
    clock = ConductorClock()
    gateway = Gateway(concert, clock)
    conductor = Conductor(concert, gateway.sio, clock, fresh=fresh)
    gateway.serve(conductor)
    return conductor, gateway


def _check_size(payload: Any) -> None:
    size = len(json.dumps(payload, separators=(",", ":"), default=str))
    if size > protocol.MAX_EVENT_BYTES:
        raise Rejected("too_large", f"payload of {size} bytes (at most {protocol.MAX_EVENT_BYTES})")
