"""Socket.IO protocol between the conductor and its clients, defined once, in and out.

``docs/protocol.md`` documents it for client authors. Every payload a client sends is validated
against a model here; anything else is rejected with an ``error`` event and counted. What the
conductor sends is built from the models at the end of this module, and the node agent reads its
cues back as those models.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    model_validator,
)

from conductor.core.score import Late, Sound

# Events a client may send.
SYNC = "sync"  # payload: t0 (number); ack: [t0, t1, t2]
COMMAND = "command"  # payload: Command; ack: {"ok": true, "seq": N} or {"ok": false, "code", "message"}
REPORT = "report"  # payload: Report; no ack
CONTROL = "control"  # payload: ControlInput, from a performer; ack like COMMAND
HEALTH = "health"  # payload: a node's health (scsynth, cues, clock), every second; no ack
INVITE = "invite"  # payload: Invite, from a conductor; ack: {"ok": true, "invites": [{part, name, url, svg}]}
SOUND = "sound"  # payload: SoundEvent, from a conductor: a cue outside the score; ack: {"ok": true, "t"}
PROBLEM = "problem"  # payload: PageProblem, from a page (a sketch that failed); no ack; shown on the console
SKETCH = "sketch"  # payload: SketchEvent, from a performer's sketch; ack {"ok": true, "t"?}; relayed as SketchDelivery
# Events the conductor sends.
WELCOME = "welcome"  # to a client that joined: Welcome
STATE = "state"  # to every joined client but nodes, once changes are on disk: StateUpdate
TRANSPORT = "transport"  # to nodes, as changes are accepted (their Link peer and sclang follow it): StateUpdate
CUES = "cues"  # to the nodes the cues target: Cues
CLIENTS = "clients"  # to conductors, every second: ConsoleFeed
SCORE = "score"  # to every joined client but nodes, when `tutti serve --watch` takes an edit: ScoreUpdate
ERROR = "error"  # to one client: ErrorMessage
HUB = "hub"  # to nodes, when the JackTrip hub's jacktrip has begun to listen (again): HubStarted

ROLES = ("conductor", "performer", "audience", "node", "composer")
MAX_EVENT_BYTES = 16_384  # a Tutti message is small; anything larger is refused (and counted)
MAX_DIGITS = 300  # an integer in JSON: a browser reads 10**400 as Infinity


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_DIGITS:  # a browser reads a longer integer as Infinity
        raise ValueError(f"integer {text[:20]}… is out of range")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class FiniteJson:
    """The ``json`` python-socketio and python-engineio use: no NaN or infinity in, nor out.

    ``1e999`` is valid JSON that Python reads as infinity; a browser that receives ``Infinity``
    cannot parse the packet at all, so one peer's number would silence every page that is sent it.
    orjson reads and writes every message (a tenth of the standard library's time, on each of
    the thousands a second a conductor handles): it refuses ``NaN`` and numbers beyond a double
    when it reads, and writes ``null`` for a NaN or an infinity. What it refuses (also a lone
    surrogate, or an integer beyond 64 bits to write) goes to the standard library, which reads it
    as before, or refuses it with the reason.
    """

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except orjson.JSONEncodeError:
            return json.dumps(obj, **{**kwargs, "allow_nan": False})

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant)


def finite(value: Any, depth: int = 0) -> bool:
    """Whether every number in a JSON-like value is finite and in range (and it nests at most 8 deep)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value) and abs(value) < 10**MAX_DIGITS
    if depth >= 8:
        return False
    if isinstance(value, dict):
        return all(finite(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return all(finite(v, depth + 1) for v in value)
    if isinstance(value, BaseModel):  # a part already built, such as a node's LinkHealth
        return finite(value.model_dump(), depth)
    return False


class Message(BaseModel):
    # allow_inf_nan: JSON that says 1e999 is valid, and an infinite time or value would poison every client.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Num = StrictInt | StrictFloat
Name = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class Auth(Message):
    """The ``auth`` object given when connecting (``io(url, {auth: {...}})``)."""

    role: Literal["conductor", "performer", "audience", "node", "composer"]
    token: Annotated[StrictStr, Field(max_length=256)] = ""
    part: Name | None = None  # performers: the part they play; a composer: the part it views
    site: Name | None = None
    name: Name | None = None  # how the console lists this client
    parts: Annotated[list[Name], Field(max_length=32)] = []  # nodes: the parts whose cues they play
    synth: StrictBool = True  # nodes: false for one that runs only audio links (a hub): it gets no cues


class _Command(Message):
    at: Num | None = None  # conductor time to take effect; default: now + lookahead


class Play(_Command):
    cmd: Literal["play"]
    count_in: Annotated[StrictInt, Field(ge=0, le=8)] | None = None  # bars of clicks first; default: the score's


class Pause(_Command):
    cmd: Literal["pause"]


class Stop(_Command):
    cmd: Literal["stop"]


class Seek(_Command):
    cmd: Literal["seek"]
    position: Annotated[Num, Field(ge=0)]  # score seconds


class GoToSection(_Command):
    cmd: Literal["section"]
    id: Name


class SetTempo(_Command):
    cmd: Literal["tempo"]
    bpm: Annotated[Num, Field(gt=0, le=600)]


class SetParam(_Command):
    cmd: Literal["param"]
    name: Name
    value: Num


class SetParams(_Command):
    """Several parameters at once, as one change (an XY pad's two axes)."""

    cmd: Literal["params"]
    values: Annotated[dict[Name, Num], Field(min_length=1, max_length=16)]


# --- rehearsal: loops, bars with a pre-roll, the click track ------------------------------------

Bar = Annotated[StrictInt, Field(ge=1, le=100_000)]


class SetLoop(_Command):
    """Loop a span (a section, or bars ``[from, to]`` inclusive): jump to its start now, and back to it
    each time the play reaches its end, ``times`` passes in all (default: until ``unloop``)."""

    cmd: Literal["loop"]
    section: Name | None = None
    bars: tuple[Bar, Bar] | None = None
    times: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None

    @model_validator(mode="after")
    def _one_span(self) -> SetLoop:
        if (self.section is None) == (self.bars is None):
            raise ValueError("give a section or bars [from, to], not both")
        if self.bars and self.bars[1] < self.bars[0]:
            raise ValueError("bars: the last bar comes before the first")
        return self


class Unloop(_Command):
    cmd: Literal["unloop"]


class Repeat(_Command):
    """Back to the loop's start: the conductor's own at the loop's end, or a console's restart."""

    cmd: Literal["repeat"]


class GoToBar(_Command):
    """A rehearsal mark by number: bar ``bar``, with ``preroll`` bars before it to play in."""

    cmd: Literal["bar"]
    bar: Bar
    preroll: Annotated[StrictInt, Field(ge=0, le=8)] = 0


class SetClick(_Command):
    """The click track on or off: everywhere, at one site, or for one part's nodes."""

    cmd: Literal["click"]
    on: StrictBool
    site: Name | None = None
    part: Name | None = None

    @model_validator(mode="after")
    def _one_target(self) -> SetClick:
        if self.site is not None and self.part is not None:
            raise ValueError("give a site or a part, not both")
        return self


# --- a part's sketches off (and on again): the page draws the score without them ------------------


class SetSketches(_Command):
    """A part's sketch layers on or off on its performers' pages: a way out for a sketch that hangs
    its page (a loop without end, where the browser cannot give its frame a process of its own)."""

    cmd: Literal["sketches"]
    part: Name
    on: StrictBool


Command = Annotated[
    Play
    | Pause
    | Stop
    | Seek
    | GoToSection
    | SetTempo
    | SetParam
    | SetParams
    | SetLoop
    | Unloop
    | Repeat
    | GoToBar
    | SetClick
    | SetSketches,
    Field(discriminator="cmd"),
]
command_adapter: TypeAdapter[Command] = TypeAdapter(Command)


class SoundEvent(Sound):
    """A sound the conductor plays outside the score: a cue's fields, timed in conductor time."""

    at: Num | None = None  # conductor time to sound; default: now + lookahead


class Report(Message):
    """A client's own view of its clock sync, shown on the console."""

    rtt: Annotated[Num, Field(ge=0, le=60)]
    offset: Annotated[Num, Field(ge=-1e10, le=1e10)]
    error: Annotated[Num, Field(ge=0, le=60)]
    delay: Annotated[Num, Field(ge=0, le=60)] | None = None  # how late the conductor's messages arrive (p95)


class ControlInput(Message):
    """A performer moving one of their part's controls: a number (fader), a bool (toggle) or [x, y] (xy)."""

    id: Name
    value: Num | bool | tuple[Num, Num]


class PageProblem(Message):
    """Something that failed on a page, for the console: a performer's sketch that threw."""

    what: Annotated[StrictStr, Field(max_length=64)]
    message: Annotated[StrictStr, Field(max_length=300)]


MAX_SKETCH_DATA = 4096  # bytes of JSON a sketch event's data may hold


class SketchEvent(Message):
    """An event a performer's sketch sends to the other parts' sketches (``tutti.send``, ``socket.emit``)."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
    data: Any = None  # any JSON, at most MAX_SKETCH_DATA bytes, every number finite
    to: Annotated[list[Name], Field(min_length=1, max_length=32)] | None = None  # part ids; default: every part
    at: Annotated[Num, Field(ge=0, le=1e6)] | None = None  # the score time to fire it at; default: on arrival

    @model_validator(mode="after")
    def _small(self) -> SketchEvent:
        if not finite(self.data):
            raise ValueError("data: every number must be finite (and it nests at most 8 deep)")
        size = len(json.dumps(self.data, separators=(",", ":")))
        if size > MAX_SKETCH_DATA:
            raise ValueError(f"data: {size} bytes of JSON (at most {MAX_SKETCH_DATA})")
        return self


class Invite(Message):
    """The origin performers will open (the console's own, as the operator reached it)."""

    base: Annotated[StrictStr, Field(pattern=r"^https?://[^\s/?#]+$", max_length=200)]


Count = Annotated[StrictInt, Field(ge=0)]
Finite = Annotated[Num, Field(ge=-1e9, le=1e9)]
Text = Annotated[StrictStr, Field(max_length=500)]


Delay = Annotated[Num, Field(ge=0, le=60_000)]  # ms


class LinkReport(Message):
    """One JackTrip end a node runs (see ``conductor/node/jacktrip.py``)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)  # newer agents may report more
    site: Name
    role: Literal["hub", "client", "p2p server", "p2p client"]
    peer: StrictStr = ""
    state: Name
    for_s: Finite = 0.0  # seconds in this state
    up_s: Annotated[Num, Field(ge=0, le=1e9)] | None = None  # seconds its jacktrip has run (a hub's: listened)
    restarts: Count = 0
    underruns: Count = 0
    overflows: Count = 0
    lost: Count = 0  # packets
    peers: Count = 0  # a hub's clients connected
    latency_ms: Finite | None = None  # the last round trip measured in-band
    measured: Count = 0  # round trips measured so far
    history_ms: Annotated[list[Finite], Field(max_length=600)] = []
    patched: Count = 0  # JACK connections made for this link
    last_error: Text = ""
    version: Annotated[StrictStr, Field(max_length=64)] = ""
    way_in_ms: Annotated[dict[Name, Delay], Field(max_length=64)] = {}  # one way from each peer, measured here
    way_jitter_ms: Annotated[dict[Name, Delay], Field(max_length=64)] = {}  # spread of the last measurements
    ways_measured: Count = 0
    impulses_sent: Count = 0  # on this end's measuring channel
    impulses_heard: Count = 0
    probe_error: Text = ""  # why the measuring channel cannot be patched, if it cannot


class LinkHealth(Message):
    """A node's Ableton Link session (see ``conductor/node/link.py``)."""

    peers: Count  # other peers in it: sclang, apps
    tempo: Annotated[Num, Field(ge=0, le=1000)]
    playing: StrictBool
    phase_error_ms: Annotated[Num, Field(ge=-1e6, le=1e6)]  # the session's beat against the conductor's
    put_back: Count  # another peer's tempo or phase, put back
    proposed: Count  # tempos proposed to the conductor
    late: Count  # changes too late to be committed the lead ahead
    lead: Annotated[Num, Field(ge=0, le=2)] = 0.0  # seconds before it sounds a change is committed to Link


class Health(Message):
    """A node agent's report, every second: its scsynth, the cues it played, its clock, its links."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)  # newer agents may report more
    up: StrictBool  # scsynth answers (a node without synths: always)
    synth: StrictBool = True  # false for a node that runs only audio links
    restarts: Count = 0  # of scsynth
    late: Count  # bundles scsynth reported late
    failures: Count = 0  # commands scsynth refused
    ugens: Count = 0
    synths: Count = 0
    cpu_avg: Annotated[Num, Field(ge=0, le=1000)] = 0.0
    cpu_peak: Annotated[Num, Field(ge=0, le=1000)] = 0.0
    last_error: Text = ""
    cues: Count  # played
    synthdefs: Count = 0  # SynthDefs scsynth has loaded (its /status.reply)
    cues_late: Count = 0  # arrived after their time ...
    cues_skipped: Count = 0  # ... of which skipped
    cues_moved: Count = 0  # ... and moved to the next beat
    cues_repeated: Count = 0  # received again, dropped
    offset: Finite = 0.0  # the node's clock offset to the conductor (s)
    samples: Count = 0  # clock exchanges so far
    error: Annotated[Num, Field(ge=0, le=60)] = 60.0  # the bound on that offset's error (s)
    links: Annotated[list[LinkReport], Field(max_length=16)] = []
    link: LinkHealth | None = None
    # What the node adds to scsynth's timetags now, for where scsynth places them (ms; None: no scsynth)
    placement_ms: Annotated[Num, Field(ge=-100, le=100)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _finite_extras(cls, data: Any) -> Any:
        # Fields a newer agent adds are not declared, so check their numbers here: one node's
        # infinite ``cpu_avg`` would otherwise reach every console.
        if not finite(data):
            raise ValueError("every number must be finite (and fields nest at most 8 deep)")
        return data


# --- what the conductor sends ----------------------------------------------------------------------


class Outbound(BaseModel):
    """A message the conductor sends. Built from its own state, so checked only for finiteness."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)


OscArgument = StrictInt | StrictFloat | StrictStr


CLICK_ID = -1  # a NodeCue's id for the click track and count-in: to its own bus, each beat once however routed


class NodeCue(Outbound):
    """One OSC message for a node's scsynth or sclang, at a conductor time (``t`` None: at once)."""

    id: int | None = None  # the score cue's index; None for sounds and parameter settings
    t: float | None = None  # None: at once
    to: Literal["scsynth", "sclang"] = "scsynth"
    address: str
    args: list[OscArgument]
    target: str = "all"
    late: Late = "play"  # what a node does with it when it arrives after ``t``
    beat: float = 0.0  # a beat's length in conductor seconds at ``t``, for ``late: next_beat``
    align: dict[str, float] | None = None  # site -> seconds early, for a cue aligned at a site


class Cues(Outbound):
    cues: list[NodeCue]


cues_adapter: TypeAdapter[Cues] = TypeAdapter(Cues)


class SegmentState(Outbound):
    t: float
    pos: float
    rate: float
    playing: bool
    count_in: float = 0.0


class ChangeState(Outbound):
    """An accepted change: the transport's new segment, or parameters' new values, from ``t``."""

    seq: int
    t: float
    command: dict[str, Any]
    segment: SegmentState | None = None
    params: dict[str, float] | None = None
    rehearsal: dict[str, Any] | None = None  # the loop and click track from ``t`` (``Rehearsal``)


class Snapshot(Outbound):
    seq: int
    segments: list[SegmentState]
    params: dict[str, list[tuple[float, float]]]
    rehearsal: dict[str, Any] | None = None


class StateUpdate(Outbound):
    """Changes in the order they were accepted, or (after the conductor had to go back) a snapshot."""

    changes: list[ChangeState] = []
    snapshot: Snapshot | None = None


class ClientInfo(Outbound):
    """A client as the console lists it."""

    sid: str
    role: str
    name: str
    part: str | None = None
    site: str | None = None
    joined: float
    last_seen: float
    rtt: float | None = None
    offset: float | None = None
    error: float | None = None
    delay: float | None = None  # how late the conductor's messages reach it (its p95)
    health: dict[str, Any] | None = None  # nodes: their last report
    parts: list[str] = []  # nodes: the parts they sound
    worker: str = ""  # the web worker it is connected to ("" in a single process)


class ScoreUpdate(Outbound):
    """A new version of the score (a live edit): the score, its version, and each sketch file's."""

    version: str
    score: dict[str, Any]
    files: dict[str, str]  # sketch file -> its version
    # The text of the sketch files this edit changed, if small (INLINE_SOURCES bytes in all), so that
    # a page runs the new sketch without asking for it first; others a page fetches.
    sources: dict[str, str] = {}


INLINE_SOURCES = 256 * 1024


class HubStarted(Outbound):
    """The hub's jacktrip began to listen at conductor time ``at``, as its node reports: a site's
    end that called the hub before then, and has not connected since, joins it again now."""

    at: float


class Welcome(Outbound):
    you: ClientInfo
    score: dict[str, Any]
    version: str | None = None  # the score's version (see ScoreUpdate)
    files: dict[str, str] | None = None  # each sketch file's version
    state: Snapshot
    now: float
    groups: dict[str, int] | None = None  # nodes: the scsynth group of each part they sound
    audio: dict[str, Any] | None = None  # nodes that run a JackTrip end: the concert's audio section
    cue_channel: str | None = None  # nodes: the path (with a one-time ticket) of a WebSocket for their cues
    link: dict[str, Any] | None = None  # nodes: the concert's link section
    hub_joined: list[str] | None = None  # nodes with a JackTrip end: the sites whose link to the hub is up now


class PreflightRow(Outbound):
    """One line of the go / no-go table before the downbeat (``conductor/core/preflight.py``)."""

    what: str
    go: bool
    detail: str = ""
    fix: str = ""  # what to do, when it is no-go


class ConsoleFeed(Outbound):
    clients: list[ClientInfo]  # everyone but the audience
    audience: dict[str, int]  # audience clients by site
    rejections: dict[str, int]
    recent: list[dict[str, Any]]
    controls: dict[str, Any]
    lookahead: dict[str, Any]
    journal: str | None = None  # why changes are refused, while the journal cannot be written
    now: float
    links: dict[str, Any] | None = None  # each audio link's figures and history (conductor/server/linkmetrics.py)
    preflight: list[PreflightRow] = []  # go / no-go, node by node and link by link


class SketchDelivery(Outbound):
    """A sketch event as the pages of the parts it names get it (``sketch``): who sent it, and for a
    timed one its score time and the conductor time it fires at."""

    name: str
    data: Any = None
    part: str | None  # the sending performer's part
    sender: str  # how the console lists the sender
    at: float | None = None
    t: float | None = None


class ErrorMessage(Outbound):
    code: str
    message: str
    event: str


class Rejected(Exception):
    """A request the conductor refuses: sent to the client as an ``error`` event and counted."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def payload(self, event: str) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "event": event}


def refusal(ack: Any) -> dict[str, Any] | None:
    """The ``error`` payload of an acknowledgement that refuses (``{"ok": false, ...}``), else None."""
    if isinstance(ack, dict) and ack.get("ok") is False:
        return {k: ack.get(k) for k in ("code", "message", "event")}
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
