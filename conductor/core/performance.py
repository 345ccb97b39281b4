"""The performance's core: a validated command in, an accepted change and its cues out. No I/O.

``Performance.accept`` plans a command against the state at the time the timing policy gives
(``Timing``), applies it, and returns the change with the cues that make it heard on the nodes
(``Accepted``). The server's pipeline (``conductor/server/pipeline.py``) journals and sends what
this returns; nothing here waits, writes or sends. Score cues, sounds outside the score, the
settings a joining node needs and a performer's controls are worked out here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from conductor.core.protocol import (
    CLICK_ID,
    Command,
    ControlInput,
    NodeCue,
    Play,
    Rejected,
    SetParam,
    SetParams,
    SoundEvent,
)
from conductor.core.scheduler import cues_between
from conductor.core.score import XY, Aligned, Fader, Schedule, Score, Sound, Toggle
from conductor.core.transport import Change, Transport

CLICK = ["tutti_click", -1, 0, 1, "amp"]  # sc_synths/tutti_click.scd, in the default group; then its amplitude


@dataclass(frozen=True)
class Timing:
    """What the scheduler knows when a change is planned (see ``conductor/core/scheduler.py``)."""

    now: float
    lookahead: float  # seconds every destination of a ``together`` change needs
    transport: float = 0.0  # ... of a change of the transport (Link sessions need it sooner)
    sent_until: float = 0.0  # cues up to this conductor time are on their way: a change comes after them
    align: Mapping[str, dict[str, float]] = field(default_factory=dict)  # aligned site -> how early each site plays


@dataclass(frozen=True)
class Routed:
    """A cue and the room of the nodes it goes to (``nodes:all``, ``nodes:part:ID``, ...)."""

    room: str
    cue: NodeCue


@dataclass(frozen=True)
class Accepted:
    """An accepted change and the cues that make it heard (parameter settings on the nodes)."""

    change: Change
    cues: list[Routed]


class Performance:
    """The score and the state of one performance, and the rules for changing them."""

    def __init__(self, score: Score, transport: Transport | None = None):
        self.score = score
        self.transport = transport or Transport(score)

    # --- changes ------------------------------------------------------------------------------

    def accept(self, command: Command, timing: Timing) -> Accepted:
        """Plan and apply ``command``; raises Rejected if it cannot be done."""
        schedule = self.schedule_of(command)
        align = timing.align.get(schedule.aligned, {}) if isinstance(schedule, Aligned) else None
        at_once = schedule == "immediate" and command.at is None  # nodes set it when it reaches them
        # Otherwise cues up to sent_until are on their way, and a change cannot overtake them.
        if not isinstance(command, SetParam | SetParams):
            timing = replace(timing, lookahead=max(timing.lookahead, timing.transport))
        t = timing.now if at_once else max(self.when(command.at, timing, align), timing.sent_until)
        clicks = self.count_in(command, t)
        change = self.transport.plan(command, t + len(clicks) * self.beat(t) if clicks else t)
        if clicks and change.segment is not None:
            change = replace(change, segment=replace(change.segment, count_in=change.t - t))
        self.transport.apply(change)
        cues = self.sounding(change.params, None if at_once else change.t, align)
        return Accepted(change, clicks + cues)

    def count_in(self, command: Command, t: float) -> list[Routed]:
        """A play from a standstill with a count-in (its own, else the score's): a click on every
        node for each beat of the count-in bars from ``t``, the first of each bar louder. None while
        it plays; a play pressed again during a count-in is refused (its clicks are on their way)."""
        segments = self.transport.segments
        if not isinstance(command, Play) or segments.at(t).playing:
            return []
        if segments.values[-1].playing and segments.values[-1].count_in:
            raise Rejected("unchanged", "already counting in: the piece starts on the downbeat")
        bars = self.score.count_in if command.count_in is None else command.count_in
        per_bar = self.score.tempo.beats_per_bar
        beat = self.beat(t)
        return [
            Routed(
                "nodes:all",
                NodeCue(id=CLICK_ID, t=t + k * beat, address="/s_new", args=[*CLICK, 0.6 if k % per_bar else 1.0]),
            )
            for k in range(bars * per_bar)
        ]

    def schedule_of(self, command: Command) -> Schedule:
        """A parameter is timed as its schedule says (default: the score's); the transport always together."""
        names = (
            [command.name]
            if isinstance(command, SetParam)
            else list(command.values)
            if isinstance(command, SetParams)
            else []
        )
        params = [p for name in names if (p := self.score.parameter(name)) is not None]
        return (params[0].schedule or self.score.schedule) if params else "together"

    def when(self, at: float | None, timing: Timing, align: dict[str, float] | None) -> float:
        """The conductor time asked for, or without one, the soonest every destination can meet."""
        if at is None:  # the slowest destination's delay, and for an aligned schedule the earliest site
            return timing.now + timing.lookahead + max((align or {}).values(), default=0.0)
        if at < timing.now:
            raise Rejected("too_late", f"'at' is {timing.now - at:.3f} s in the past")
        return float(at)

    def sounding(
        self, values: Mapping[str, float], t: float | None, align: dict[str, float] | None = None
    ) -> list[Routed]:
        """The ``/n_set`` cues that make parameter values heard, one per part (``t`` None: at once)."""
        out = []
        for name, value in values.items():
            param = self.score.parameter(name)
            if param is None or param.n_set is None:
                continue
            control, synth_value = param.n_set.control, param.synth_value(value)
            for part in param.n_set.parts or [p.id for p in self.score.parts]:
                args = [self.score.group(part), control, synth_value]
                cue = NodeCue(t=t, address="/n_set", args=args, align=align)
                out.append(Routed(f"nodes:part:{part}", cue))
        return out

    def settings(self, now: float) -> list[Routed]:
        """What a node's synths should be set to now: every parameter's current value."""
        return self.sounding({name: timeline.at(now) for name, timeline in self.transport.params.items()}, None)

    # --- cues outside the change path ----------------------------------------------------------

    def score_cues(self, start: float, end: float, align: Mapping[str, dict[str, float]]) -> list[Routed]:
        """The score cues that sound in conductor time [start, end), in order; ``t`` None for
        ``immediate`` ones, which the sender holds until their time (see ``due``)."""
        out = []
        for timed in cues_between(self.score, self.transport, start, end):
            schedule, late = self.score.policy(timed.cue)
            cue = NodeCue(
                id=timed.index, t=timed.t, to=timed.cue.to, address=timed.cue.address, args=timed.args,
                target=timed.cue.target, late=late, beat=self.beat(timed.t),
                align=align.get(schedule.aligned, {}) if isinstance(schedule, Aligned) else None,
            )  # fmt: skip
            out.append(Routed(f"nodes:{timed.cue.target}", cue))
        return out

    def clicks(self, start: float, end: float) -> list[Routed]:
        """The click track's cues in conductor time [start, end): one per beat of the score's grid
        while it plays (the bar's first louder), to every room the click is on for."""
        rooms = [f"nodes:{where}" for where in self.transport.rehearsal.click]
        if not rooms:
            return []
        transport = self.transport
        beat = 60.0 / self.score.tempo.bpm  # score seconds
        per_bar = self.score.tempo.beats_per_bar
        out = []
        times = transport.segments.times
        for i, seg in enumerate(transport.segments.values):
            a, b = max(start, times[i]), min(end, times[i + 1] if i + 1 < len(times) else end)
            if a >= b or not seg.playing or seg.rate <= 0:
                continue
            first = math.ceil(round(seg.position(a) / beat, 9))  # a beat on a segment's start is its own
            last = round(min(seg.position(b), self.score.duration) / beat, 9)
            for k in range(first, math.ceil(last)):
                t = seg.t + (k * beat - seg.pos) / seg.rate
                args = [*CLICK, 1.0 if k % per_bar == 0 else 0.6]
                out += [Routed(room, NodeCue(id=CLICK_ID, t=t, address="/s_new", args=args)) for room in rooms]
        return out

    def sound(self, sound: SoundEvent, timing: Timing) -> Routed:
        """A sound the conductor plays outside the score, timed like a score cue."""
        if problems := self.score.sound_problems(sound):
            loc, message = problems[0]
            raise Rejected("bad_payload", f"{'.'.join(map(str, loc))}: {message}")
        schedule, late = self.score.policy(sound)
        align = timing.align.get(schedule.aligned, {}) if isinstance(schedule, Aligned) else None
        if schedule == "immediate" and sound.at is not None:
            raise Rejected("bad_payload", "at: an immediate sound plays when it arrives; give no 'at'")
        t = None if schedule == "immediate" else self.when(sound.at, timing, align)
        cue = NodeCue(
            t=t, to=sound.to, address=sound.address, args=self.score.cue_args(sound), target=sound.target,
            late=late, beat=self.beat(t or timing.now), align=align,
        )  # fmt: skip
        return Routed(f"nodes:{sound.target}", cue)

    def beat(self, t: float) -> float:
        """A beat's length in conductor seconds at ``t``, for cues moved to the next beat."""
        segment = self.transport.segments.at(t)
        return 60.0 / self.score.tempo.bpm / (segment.rate or 1.0)

    def immediate(self, cue: Sound) -> bool:
        return self.score.policy(cue)[0] == "immediate"

    # --- a performer's controls ----------------------------------------------------------------

    def control(self, part_id: str | None, data: ControlInput) -> Command | None:
        """The command a performer's control makes (None for a control with no parameter)."""
        part = self.score.part(part_id or "")
        control = next((c for c in part.controls if c.id == data.id), None) if part else None
        if control is None:
            raise Rejected("forbidden", f"no control '{data.id}' in your part")
        value = data.value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(control, Fader) and not (number and control.min <= value <= control.max):  # type: ignore[operator]
            raise Rejected("out_of_range", f"fader '{control.id}' takes {control.min:g} to {control.max:g}")
        if isinstance(control, Toggle) and not isinstance(value, bool):
            raise Rejected("bad_payload", f"toggle '{control.id}' takes true or false")
        if isinstance(control, XY) and not (isinstance(value, tuple) and all(0 <= v <= 1 for v in value)):
            raise Rejected("out_of_range", f"xy pad '{control.id}' takes [x, y] from 0 to 1")
        if control.param is None:
            return None
        if isinstance(value, tuple):  # both axes in one change
            x, y = value
            return SetParams(cmd="params", values={f"{control.param}_x": x, f"{control.param}_y": y})
        return SetParam(cmd="param", name=control.param, value=float(value))
