"""The conductor server: one clock, the score, the transport and the journal, over Socket.IO.

Clients join with a role and token (``protocol.Auth``), are sent a ``welcome`` with the score
and a snapshot of the performance, keep their clocks in step with ``sync``, and receive a
``state`` event for every accepted change. Only the conductor role may send commands. Every
accepted change is journalled before it is broadcast. Nothing a client sends can stop the
server: anything malformed, oversized, unknown or forbidden is answered with an ``error`` event
and counted in ``/api/status``.
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
from pathlib import Path
from typing import Any

import pydantic
import socketio
from aiohttp import web

from . import journal, protocol
from .clock import ConductorClock
from .concert import Concert
from .osc import OscIngress
from .protocol import Auth, ControlInput, Health, Rejected, Report, SetParam
from .scheduler import Lookahead, TimedCue, audio_delays, cues_between
from .score import XY, Aligned, Fader, Toggle
from .transport import Change, Transport

log = logging.getLogger("tutti.conductor")
CUE_TICK = 0.01  # seconds between looks for cues entering the lookahead
LOOKAHEAD_EVERY = 0.25  # seconds between updates of the lookahead from the clients' delays
JOIN_FAILURES = 10  # failed joins from one address ...
JOIN_COOLDOWN = 30.0  # ... within this many seconds bar it until they are that old
CLIENTS_DIR = Path(__file__).resolve().parent.parent / "clients"
VENDOR = {
    "socket.io": CLIENTS_DIR / "node_modules" / "socket.io-client" / "dist",
    "p5": CLIENTS_DIR / "node_modules" / "p5" / "lib",
}


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


class _Server(socketio.AsyncServer):
    """python-socketio logs a traceback for a packet it cannot decode; count and answer it instead."""

    def __init__(self, on_malformed: Callable[[str, Exception], Awaitable[None]], **kwargs: Any):
        super().__init__(**kwargs)
        self._on_malformed = on_malformed

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            await self._on_malformed(eio_sid, e)


def _summary(error: pydantic.ValidationError) -> str:
    parts = []
    for err in error.errors(include_url=False)[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Conductor:
    def __init__(self, concert: Concert, fresh: bool = False):
        self.concert = concert
        self.score = concert.score
        self.clock = ConductorClock()
        self.transport = Transport(self.score.score)
        self.clients: dict[str, Client] = {}
        self.rejections: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # the latest refusals, for the console
        self.controls: dict[str, Any] = {}  # "part/control" -> latest value from a performer
        self.lookahead = Lookahead(floor=concert.settings.lookahead)
        self._sent_until = 0.0  # conductor time up to which cues have been sent: changes come after it
        self.failed_joins = JoinLimiter()
        self.started = time.time()
        cors = concert.settings.cors_origins
        self.sio = _Server(
            self._malformed,
            async_mode="aiohttp",
            always_connect=True,  # so the welcome (or the reason for refusal) follows the CONNECT packet
            max_http_buffer_size=1_000_000,  # engine.io drops a client beyond this; we refuse far smaller
            cors_allowed_origins="*" if "*" in cors else cors,
            ping_interval=5,
            ping_timeout=10,
        )
        self.app = web.Application()
        self.sio.attach(self.app)
        self._routes()
        self._events()
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

    # --- HTTP ---------------------------------------------------------------------------------

    def _routes(self) -> None:
        self.app.router.add_get("/api/status", self._status)
        self.app.router.add_get("/api/score", self._score)
        self.app.router.add_get("/", self._page("index.html"))
        self.app.router.add_get("/perform", self._page("perform.html"))
        self.app.router.add_get("/console", self._page("console.html"))
        self.app.router.add_get("/audience", self._page("audience.html"))
        self.app.router.add_get("/score-files/{name:.+}", self._score_file)
        self.app.router.add_static("/clients/", CLIENTS_DIR / "lib")
        self.app.router.add_static("/examples/", CLIENTS_DIR / "examples")
        # Browser libraries installed from npm at set-up, served from here: a concert needs no internet.
        for name, folder in VENDOR.items():
            if folder.is_dir():
                self.app.router.add_static(f"/vendor/{name}/", folder)

    def _page(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(CLIENTS_DIR / name, headers={"Cache-Control": "no-cache"})

        return page

    async def _score_file(self, request: web.Request) -> web.StreamResponse:
        # Only files the score names (its sketches) are served from the score's folder.
        name = request.match_info["name"]
        if name not in self.score.files():
            raise web.HTTPNotFound(text=f"the score names no file '{name}'")
        return web.FileResponse(self.score.folder / name, headers={"Content-Type": "text/javascript"})

    async def _score(self, request: web.Request) -> web.Response:
        return web.json_response(self.score.to_json())

    def status(self) -> dict[str, Any]:
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

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    # --- Socket.IO ----------------------------------------------------------------------------

    def _events(self) -> None:
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self._guarded(protocol.SYNC, self._sync)
        self._guarded(protocol.COMMAND, self._command)
        self._guarded(protocol.REPORT, self._report)
        self._guarded(protocol.CONTROL, self._control)
        self._guarded(protocol.HEALTH, self._health)
        self.sio.on("*", self._unknown)

    def _count(self, code: str, message: str, event: str = "osc", client: str = "") -> None:
        """Count a refusal and keep it for the console (OSC refusals have no client to answer)."""
        self.rejections[code] += 1
        self.recent.append({"t": self.clock.now(), "code": code, "message": message, "event": event, "client": client})
        log.info("rejected %s from %s: %s", event, client or "?", message)

    async def _reject(self, sid: str, event: str, rejected: Rejected) -> dict[str, Any]:
        client = self.clients.get(sid)
        self._count(rejected.code, rejected.message, event, client.name if client else sid)
        payload = rejected.payload(event)
        await self.sio.emit(protocol.ERROR, payload, to=sid)
        return {"ok": False, **payload}

    def _guarded(self, event: str, handler: Callable[[Client, Any], Awaitable[Any]]) -> None:
        """Register ``handler`` for ``event``: one payload, from a joined client, never raising."""

        async def run(sid: str, *args: Any) -> Any:
            try:
                client = self.clients.get(sid)
                if client is None:
                    raise Rejected("not_joined", "join first")
                client.last_seen = self.clock.now()
                if len(args) != 1:
                    raise Rejected("bad_payload", f"'{event}' takes exactly one payload, not {len(args)}")
                return await handler(client, args[0])
            except Rejected as r:
                return await self._reject(sid, event, r)
            except pydantic.ValidationError as e:
                return await self._reject(sid, event, Rejected("bad_payload", _summary(e)))
            except Exception:
                log.exception("error handling %s from %s", event, sid)
                return await self._reject(sid, event, Rejected("internal", "the conductor could not handle this"))

        self.sio.on(event, run)

    async def _malformed(self, eio_sid: str, error: Exception) -> None:
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        self.rejections["malformed"] += 1
        log.info("malformed packet from %s: %s", sid or eio_sid, error)
        if sid:
            await self.sio.emit(
                protocol.ERROR, Rejected("malformed", f"undecodable packet: {error}").payload("(packet)"), to=sid
            )

    async def _unknown(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return await self._reject(sid, str(event)[:64], Rejected("unknown_event", f"no event '{str(event)[:64]}'"))

    def _check_token(self, auth: Auth) -> None:
        expected = self.concert.tokens.get(auth.role)
        if expected is not None and not hmac.compare_digest(expected.encode(), auth.token.encode()):
            raise Rejected("bad_token", f"wrong token for role '{auth.role}'")
        if auth.role == "performer" and (auth.part is None or self.score.score.part(auth.part) is None):
            known = ", ".join(p.id for p in self.score.score.parts)
            raise Rejected("unknown_part", f"a performer needs one of the parts: {known}")
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
        if joined.parts:
            return list(joined.parts)
        return [p.id for p in parts if site is None or p.site == site]

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        request = environ.get("aiohttp.request")  # python-engineio's REMOTE_ADDR is always 127.0.0.1
        source = str(getattr(request, "remote", None) or environ.get("REMOTE_ADDR", ""))
        try:
            if self.failed_joins.barred(source, time.monotonic()):
                raise Rejected("rate_limited", f"too many failed joins from {source}; wait {JOIN_COOLDOWN:g} s")
            if not isinstance(auth, dict):
                raise Rejected("bad_auth", "connect with auth {role, token, part?, site?, name?}")
            try:
                joined = Auth.model_validate(auth)
            except pydantic.ValidationError as e:
                raise Rejected("bad_auth", _summary(e)) from e
            self._check_token(joined)
        except Rejected as r:
            if r.code != "rate_limited":
                self.failed_joins.failed(source, time.monotonic())
            await self._reject(sid, "connect", r)
            return False
        now = self.clock.now()
        part = self.score.score.part(joined.part) if joined.part else None
        site = joined.site or (part.site if part else None)
        client = Client(sid, joined.role, joined.name or f"{joined.role}-{sid[:4]}", joined.part, site, now, now)
        self.clients[sid] = client
        await self.sio.enter_room(sid, f"role:{client.role}")
        welcome: dict[str, Any] = {"score": self.score.to_json(), "state": self.transport.snapshot(now)}
        if client.role == "node":  # the rooms cues are sent to: all nodes, a site, a part, one node
            client.parts = self._node_parts(joined, site)
            rooms = [f"node:{client.name}", *(f"part:{p}" for p in client.parts)] + ([f"site:{site}"] if site else [])
            for room in rooms:
                await self.sio.enter_room(sid, f"nodes:{room}")
            welcome["groups"] = {p: self.score.score.group(p) for p in client.parts}
            if self._runs_audio(client):
                welcome["audio"] = self.concert.settings.audio.model_dump()  # type: ignore[union-attr]
        log.info("%s joined as %s%s", client.name, client.role, f" ({client.part})" if client.part else "")
        await self.sio.emit(protocol.WELCOME, {"you": asdict(client), **welcome, "now": self.clock.now()}, to=sid)
        if client.role == "node":  # what its synths should be set to now
            for name, timeline in self.transport.params.items():
                for part, cue in self._sounding(name, timeline.at(now), None):
                    if part in client.parts:
                        await self.sio.emit(protocol.CUE, cue, to=sid)
        return True

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        client = self.clients.pop(sid, None)
        if client:
            log.info("%s left (%s)", client.name, reason)

    async def _sync(self, client: Client, t0: Any) -> list[float]:
        t1 = self.clock.now()
        if isinstance(t0, bool) or not isinstance(t0, int | float):
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
        if control.param is not None:
            by = {"role": client.role, "name": client.name, "part": client.part, "control": control.id}
            if isinstance(value, tuple):
                values = list(zip((f"{control.param}_x", f"{control.param}_y"), value, strict=True))
            else:
                values = [(control.param, float(value))]
            for name, v in values:
                await self.apply(SetParam(cmd="param", name=name, value=v), by)
        return {"ok": True, "seq": self.transport.seq}

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

    async def _send_cues(self) -> None:
        """Send each score cue to its nodes as its schedule says (see ``scheduler.py``)."""
        self._sent_until = self.clock.now()
        held: list[tuple[float, str, dict[str, Any]]] = []  # immediate cues, until their time comes
        updated = time.monotonic()
        score = self.score.score
        aligned = {s.aligned for s in self._schedules() if isinstance(s, Aligned)}
        offsets: dict[str, dict[str, float]] = {}  # aligned site -> how early each site plays
        early = 0.0  # the most any site plays early: aligned cues are sent that much sooner
        while True:
            await asyncio.sleep(CUE_TICK)
            try:
                if time.monotonic() - updated > LOOKAHEAD_EVERY:
                    delays = {c.name: c.delay for c in self.clients.values() if c.delay is not None}
                    self.lookahead.update(delays, time.monotonic() - updated)
                    updated = time.monotonic()
                    period = audio.period / audio.sample_rate if (audio := self.concert.settings.audio) else 0.0
                    offsets = {site: audio_delays(self._links(), site, period) for site in aligned}
                    early = max((max(o.values(), default=0.0) for o in offsets.values()), default=0.0)
                now = self.clock.now()
                horizon = max(self._sent_until, now + self.lookahead.value + early)
                for timed in cues_between(score, self.transport, self._sent_until, horizon):
                    schedule, late = score.policy(timed.cue)
                    cue = {**timed.to_json(), "late": late, "beat": self._beat(timed)}
                    room = "role:node" if timed.cue.target == "all" else f"nodes:{timed.cue.target}"
                    if schedule == "immediate":
                        held.append((timed.t, room, {**cue, "t": None}))
                        continue
                    if isinstance(schedule, Aligned):
                        cue["align"] = offsets.get(schedule.aligned, {})
                    await self.sio.emit(protocol.CUE, cue, room=room)
                self._sent_until = horizon
                while held and held[0][0] <= now:
                    _, room, cue = held.pop(0)
                    await self.sio.emit(protocol.CUE, cue, room=room)
            except Exception:
                log.exception("sending cues")

    def _schedules(self) -> list[Any]:
        score = self.score.score
        return [score.schedule, *(s.schedule for s in score.sections), *(c.schedule for c in score.cues)]

    def _links(self) -> list[dict[str, Any]]:
        return [link for c in self.clients.values() if c.health for link in c.health.get("links", [])]

    def _beat(self, timed: TimedCue) -> float:
        """A beat's length in conductor seconds where the cue falls, for cues moved to the next beat."""
        segment = self.transport.segments.at(timed.t)
        return 60.0 / self.score.score.tempo.bpm / (segment.rate or 1.0)

    async def _feed_console(self) -> None:
        """Every second, the conductors' consoles get the table of clients and the latest refusals."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.sio.emit(
                    protocol.CLIENTS,
                    {
                        "clients": [asdict(c) for c in self.clients.values()],
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

    async def apply(self, command: protocol.Command, by: dict[str, Any]) -> Change:
        """Plan, journal, apply and broadcast one command. Raises Rejected if it cannot be done."""
        now = self.clock.now()
        if command.at is None:
            t = now + self.lookahead.value
        elif command.at < now:
            raise Rejected("too_late", f"'at' is {now - command.at:.3f} s in the past")
        else:
            t = float(command.at)
        t = max(t, self._sent_until)  # cues up to there are on their way: a change cannot overtake them
        change = self.transport.plan(command, t)
        self.journal.append(journal.Record(change, now, by))
        self.transport.apply(change)
        if change.param is not None and change.value is not None:
            if self.osc:
                self.osc.echo(change.param, change.value)
            for part, cue in self._sounding(change.param, change.value, change.t):
                await self.sio.emit(protocol.CUE, cue, room=f"nodes:part:{part}")
        await self.sio.emit(protocol.STATE, {"change": change.to_json(), "state": self.transport.snapshot(now)})
        return change

    def _sounding(self, name: str, value: float, t: float | None) -> list[tuple[str, dict[str, Any]]]:
        """The ``/n_set`` cues that make a parameter's value heard, one per part (``t`` None: at once)."""
        param = self.score.score.parameter(name)
        if param is None or param.n_set is None:
            return []
        parts = param.n_set.parts or [p.id for p in self.score.score.parts]
        args = [param.n_set.control, param.synth_value(value)]
        return [
            (part, {"t": t, "to": "scsynth", "address": "/n_set", "args": [self.score.score.group(part), *args]})
            for part in parts
        ]

    # --- running ------------------------------------------------------------------------------

    async def start(self, hosts: list[str], port: int) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._feed = asyncio.create_task(self._feed_console())
        self._cues = asyncio.create_task(self._send_cues())
        if self.osc:
            await self.osc.start(hosts[0])
        bound = port
        for host in hosts:
            site = web.TCPSite(runner, host, bound, ssl_context=self.concert.tls_context())
            await site.start()
            if bound == 0:  # an ephemeral port: every host shares the first one picked
                server = site._server
                bound = server.sockets[0].getsockname()[1] if server and server.sockets else 0
        return runner, bound

    async def stop(self, runner: web.AppRunner) -> None:
        """Say goodbye to every client, then stop serving and close the journal."""
        self._feed.cancel()
        self._cues.cancel()
        if self.osc:
            self.osc.close()
        # python-socketio's shutdown leaves connections open, and aiohttp would wait on each.
        await asyncio.gather(*(self.sio.disconnect(sid) for sid in list(self.clients)))
        await self.sio.shutdown()
        await runner.cleanup()
        self.journal.close()


def _check_size(payload: Any) -> None:
    size = len(json.dumps(payload, separators=(",", ":"), default=str))
    if size > protocol.MAX_EVENT_BYTES:
        raise Rejected("too_large", f"payload of {size} bytes (at most {protocol.MAX_EVENT_BYTES})")
