"""The state of a performance: where the score is, how fast it moves, and its parameters.

Every change takes effect at a conductor time. The position is a chain of segments (from time t
the score is at ``pos`` and moves at ``rate`` score-seconds per second, or stands still), so any
client holding the segments computes the same position for any instant, without being sent
frames. A snapshot holds the segment in effect and those still to come, so it stays right for a
client that receives it late.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, TypeVar

from conductor.core.protocol import (
    Command,
    GoToBar,
    GoToSection,
    Pause,
    Play,
    Rejected,
    Repeat,
    Seek,
    SetClick,
    SetLoop,
    SetParam,
    SetParams,
    SetSketches,
    SetTempo,
    Stop,
    Unloop,
)
from conductor.core.score import Score

V = TypeVar("V")


@dataclass(frozen=True)
class Segment:
    t: float  # conductor time at which it takes effect
    pos: float  # score position at t
    rate: float  # score seconds per second while playing
    playing: bool
    count_in: float = 0.0  # seconds of count-in (clicks, a count on the pages) before t, its downbeat

    def position(self, t: float) -> float:
        return self.pos + (t - self.t) * self.rate if self.playing else self.pos


class Timeline(Generic[V]):
    """Values that take effect at given times; a new value cancels those set for later."""

    def __init__(self, t: float, value: V):
        self.times = [t]
        self.values = [value]

    def at(self, t: float) -> V:
        return self.values[max(0, bisect.bisect_right(self.times, t) - 1)]

    def set(self, t: float, value: V) -> None:
        i = bisect.bisect_left(self.times, t)
        del self.times[i:], self.values[i:]
        self.times.append(t)
        self.values.append(value)

    def prune(self, now: float) -> None:
        """Forget values superseded before ``now``."""
        i = max(0, bisect.bisect_right(self.times, now) - 1)
        del self.times[:i], self.values[:i]

    def entries(self) -> list[tuple[float, V]]:
        return list(zip(self.times, self.values, strict=True))


@dataclass(frozen=True)
class Loop:
    """A span the play goes back over: from ``start`` to ``end`` (score seconds), ``times`` passes
    in all (None: until it is ended); ``passes`` is the one playing now, from 1."""

    start: float
    end: float
    times: int | None = None
    passes: int = 1

    @property
    def last(self) -> bool:
        return self.times is not None and self.passes >= self.times


@dataclass(frozen=True)
class Rehearsal:
    """The rehearsal aids in effect: a loop, where the click track sounds (``all``, ``site:ID``,
    ``part:ID``), and the parts whose sketches the conductor has turned off."""

    loop: Loop | None = None
    click: tuple[str, ...] = ()
    sketches_off: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loop": asdict(self.loop) if self.loop else None, "click": list(self.click)}
        if self.sketches_off:  # written only when some are off: journals without it read the same
            out["sketches_off"] = list(self.sketches_off)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rehearsal:
        """Read back from a journal or a snapshot; raises ValueError (naming the field) if it does not fit."""
        if not isinstance(data, dict) or set(data) - {"loop", "click", "sketches_off"}:
            raise ValueError("rehearsal: needs only loop, click and sketches_off")
        loop = data.get("loop")
        if loop is not None:
            if not isinstance(loop, dict) or set(loop) != {"start", "end", "times", "passes"}:
                raise ValueError("rehearsal.loop: needs exactly start, end, times and passes")
            bounds = [loop["start"], loop["end"]]
            if not all(isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x < 1e7 for x in bounds):
                raise ValueError("rehearsal.loop: start and end are score seconds")
            for key in ("times", "passes"):
                value = loop[key]
                whole = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000
                if not whole and (key == "passes" or value is not None):
                    raise ValueError(f"rehearsal.loop.{key}: {value!r} is not a whole number from 1 to 1000")
            loop = Loop(float(loop["start"]), float(loop["end"]), loop["times"], loop["passes"])
        click = data.get("click", [])
        if not isinstance(click, list) or len(click) > 64 or not all(isinstance(c, str) and len(c) < 80 for c in click):
            raise ValueError("rehearsal.click: a list of 'all', 'site:ID' or 'part:ID'")
        off = data.get("sketches_off", [])
        if not isinstance(off, list) or len(off) > 256 or not all(isinstance(p, str) and len(p) < 80 for p in off):
            raise ValueError("rehearsal.sketches_off: a list of part ids")
        return cls(loop, tuple(click), tuple(off))


@dataclass(frozen=True)
class Change:
    """An accepted change: the command and its effect, a segment or parameter values.

    Parameter values are one change however many they are: an XY pad moves two at once.
    """

    seq: int
    t: float
    command: dict[str, Any]
    segment: Segment | None = None
    params: dict[str, float] = field(default_factory=dict)
    rehearsal: Rehearsal | None = None  # the loop and click track from ``t``, for a rehearsal command

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "t": self.t, "command": self.command}
        if self.segment is not None:
            out["segment"] = asdict(self.segment)
            if not self.segment.count_in:  # written only for a play after a count-in
                del out["segment"]["count_in"]
        else:
            out["params"] = self.params
        if self.rehearsal is not None:
            out["rehearsal"] = self.rehearsal.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        segment = Segment(**data["segment"]) if data.get("segment") else None
        params = data.get("params")
        if params is None and data.get("param") is not None:  # journals written before XY pads were one change
            params = {data["param"]: data["value"]}
        rehearsal = Rehearsal.from_json(data["rehearsal"]) if data.get("rehearsal") is not None else None
        return cls(data["seq"], data["t"], data["command"], segment, dict(params or {}), rehearsal)


class Transport:
    def __init__(self, score: Score):
        self.score = score
        self.seq = 0
        self.segments: Timeline[Segment] = Timeline(0.0, Segment(0.0, 0.0, 1.0, False))
        self.params: dict[str, Timeline[float]] = {p.id: Timeline(0.0, p.default) for p in score.parameters}
        self.rehearsal = Rehearsal()

    def position(self, t: float) -> float:
        return min(max(self.segments.at(t).position(t), 0.0), self.score.duration)

    def plan(self, command: Command, t: float) -> Change:
        """The change ``command`` makes at conductor time ``t``; raises Rejected if it cannot."""
        if isinstance(command, SetParam):  # first: a fader sends a hundred a second
            return self._values(command, t, {command.name: command.value})
        seg = self.segments.at(t)
        here = self.position(t)

        def moved(
            pos: float | None = None,
            rate: float | None = None,
            playing: bool | None = None,
            rehearsal: Rehearsal | None = None,
        ) -> Change:
            new = Segment(
                t,
                here if pos is None else pos,
                seg.rate if rate is None else rate,
                seg.playing if playing is None else playing,
            )
            return Change(self.seq + 1, t, command.model_dump(exclude_none=True), segment=new, rehearsal=rehearsal)

        match command:
            case Play():
                return moved(pos=0.0 if here >= self.score.duration else here, playing=True)
            case Pause():
                if not seg.playing and not self.segments.values[-1].playing:
                    raise Rejected("unchanged", "already paused: press play to go on")
                return moved(playing=False)
            case Stop():
                return moved(pos=0.0, playing=False)
            case Seek(position=p):
                if p > self.score.duration:
                    raise Rejected("out_of_range", f"position {p:g} is past the end ({self.score.duration:g} s)")
                return moved(pos=float(p))
            case GoToSection(id=section_id):
                section = self.score.section(section_id)
                if section is None:
                    known = ", ".join(s.id for s in self.score.sections) or "none"
                    raise Rejected("unknown_section", f"no section '{section_id}' (sections: {known})")
                return moved(pos=section.start)
            case SetTempo(bpm=bpm):
                return moved(rate=bpm / self.score.tempo.bpm)
            case SetParams(values=values):
                return self._values(command, t, values)
            case SetLoop():
                loop = self._span(command)
                return moved(pos=loop.start, rehearsal=replace(self.rehearsal, loop=loop))
            case Unloop():
                return self._rehearsal(command, t, replace(self._looping(), loop=None))
            case Repeat():
                loop = self._looping().loop
                assert loop is not None
                again = replace(loop, passes=min(loop.passes + 1, loop.times or 1000))
                return moved(pos=loop.start, rehearsal=replace(self.rehearsal, loop=again))
            case GoToBar(bar=bar, preroll=preroll):
                start = self.bar_start(bar)
                if start >= self.score.duration:
                    raise Rejected("out_of_range", f"bar {bar} is past the end ({self.bars()} bars)")
                return moved(pos=self.bar_start(max(1, bar - preroll)))
            case SetClick():
                return self._rehearsal(command, t, self._clicked(command))
            case SetSketches():
                return self._rehearsal(command, t, self._sketches(command))
        raise Rejected("bad_command", "unknown command")  # unreachable: commands are validated first

    # --- rehearsal ---------------------------------------------------------------------------------

    def bar_start(self, bar: int) -> float:
        """Score seconds at the start of bar ``bar`` (from 1) on the score's beat grid."""
        tempo = self.score.tempo
        return (bar - 1) * tempo.beats_per_bar * 60.0 / tempo.bpm

    def bars(self) -> int:
        return int(self.score.duration // (self.bar_start(2) or 1.0)) + 1

    def _span(self, command: SetLoop) -> Loop:
        if command.section is not None:
            section = self.score.section(command.section)
            if section is None:
                known = ", ".join(s.id for s in self.score.sections) or "none"
                raise Rejected("unknown_section", f"no section '{command.section}' (sections: {known})")
            later = [s.start for s in self.score.sections if s.start > section.start]
            start, end = section.start, min([*later, self.score.duration])
        else:
            assert command.bars is not None
            first, last = command.bars
            start, end = self.bar_start(first), min(self.bar_start(last + 1), self.score.duration)
            if start >= self.score.duration:
                raise Rejected("out_of_range", f"bar {first} is past the end ({self.bars()} bars)")
        if end <= start:
            raise Rejected("out_of_range", "the loop has no length: give a longer span")
        return Loop(start, end, command.times)

    def _looping(self) -> Rehearsal:
        if self.rehearsal.loop is None:
            raise Rejected("unchanged", "no loop: set one first (a section, or bars from/to)")
        return self.rehearsal

    def _clicked(self, command: SetClick) -> Rehearsal:
        if command.site is not None and command.site not in self.score.site_ids():
            known = ", ".join(sorted(self.score.site_ids())) or "none"
            raise Rejected("unknown_site", f"no site '{command.site}' (sites: {known})")
        if command.part is not None and self.score.part(command.part) is None:
            known = ", ".join(p.id for p in self.score.parts)
            raise Rejected("unknown_part", f"no part '{command.part}' (parts: {known})")
        where = f"site:{command.site}" if command.site else f"part:{command.part}" if command.part else "all"
        click = [c for c in self.rehearsal.click if c != where and (where != "all" or command.on)]
        return replace(self.rehearsal, click=tuple(sorted([*click, where] if command.on else click)))

    def _sketches(self, command: SetSketches) -> Rehearsal:
        part = self.score.part(command.part)
        if part is None:
            known = ", ".join(p.id for p in self.score.parts)
            raise Rejected("unknown_part", f"no part '{command.part}' (parts: {known})")
        if not any(layer.type == "sketch" for layer in part.layers):
            raise Rejected("unchanged", f"part '{command.part}' has no sketch layer")
        off = set(self.rehearsal.sketches_off)
        if (command.part not in off) == command.on:
            raise Rejected(
                "unchanged", f"the sketches of part '{command.part}' are already {'on' if command.on else 'off'}"
            )
        off = off - {command.part} if command.on else off | {command.part}
        return replace(self.rehearsal, sketches_off=tuple(sorted(off)))

    def _rehearsal(self, command: Command, t: float, rehearsal: Rehearsal) -> Change:
        return Change(self.seq + 1, t, command.model_dump(exclude_none=True), rehearsal=rehearsal)

    def next_jump(self, start: float, end: float) -> float | None:
        """The conductor time in [start, end) at which the loop's end is reached, if the play is in
        the loop then and the loop has passes to go: when its ``repeat`` is due."""
        loop = self.rehearsal.loop
        if loop is None or loop.last:
            return None
        i = max(0, bisect.bisect_right(self.segments.times, start) - 1)
        for seg_start, seg in zip(self.segments.times[i:], self.segments.values[i:], strict=True):
            if not seg.playing or seg.rate <= 0 or not loop.start <= seg.pos < loop.end:
                continue
            at = seg.t + (loop.end - seg.pos) / seg.rate
            nxt = bisect.bisect_right(self.segments.times, seg_start)
            if (nxt >= len(self.segments.times) or at < self.segments.times[nxt]) and start <= at < end:
                return at
        return None

    def _values(self, command: Command, t: float, values: dict[str, float]) -> Change:
        for name, value in values.items():
            param = self.score.parameter(name)
            if param is None:
                known = ", ".join(self.params) or "none"
                raise Rejected("unknown_param", f"no parameter '{name}' (parameters: {known})")
            if problem := param.check(value):
                raise Rejected("out_of_range", problem)
        floats = {name: float(v) for name, v in values.items()}
        return Change(self.seq + 1, t, command.model_dump(exclude_none=True), params=floats)

    def apply(self, change: Change) -> None:
        if change.segment is not None:
            self.segments.set(change.t, change.segment)
        for name, value in change.params.items():
            if name in self.params:
                self.params[name].set(change.t, value)
        if change.rehearsal is not None:
            self.rehearsal = change.rehearsal
        self.seq = change.seq

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Take the state from a snapshot (as a client does on ``welcome`` and ``state``)."""
        segments = [Segment(**s) for s in snapshot["segments"]]
        self.segments = Timeline(segments[0].t, segments[0])
        for s in segments[1:]:
            self.segments.set(s.t, s)
        for name, entries in snapshot["params"].items():
            timeline = Timeline(*entries[0])
            for t, value in entries[1:]:
                timeline.set(t, value)
            self.params[name] = timeline
        self.rehearsal = Rehearsal.from_json(snapshot["rehearsal"]) if snapshot.get("rehearsal") else Rehearsal()
        self.seq = snapshot["seq"]

    def snapshot(self, now: float) -> dict[str, Any]:
        self.segments.prune(now)
        for timeline in self.params.values():
            timeline.prune(now)
        return {
            "seq": self.seq,
            "segments": [asdict(s) for _, s in self.segments.entries()],
            "params": {name: tl.entries() for name, tl in self.params.items()},
            **({"rehearsal": self.rehearsal.to_json()} if self.rehearsal != Rehearsal() else {}),
        }
