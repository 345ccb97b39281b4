"""The state of a performance: where the score is, how fast it moves, and its parameters.

Every change takes effect at a conductor time. The position is a chain of segments (from time t
the score is at ``pos`` and moves at ``rate`` score-seconds per second, or stands still), so any
client holding the segments computes the same position for any instant, without being sent
frames. A snapshot holds the segment in effect and those still to come, so it stays right for a
client that receives it late.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from conductor.core.protocol import (
    Command,
    GoToSection,
    Pause,
    Play,
    Rejected,
    Seek,
    SetParam,
    SetParams,
    SetTempo,
    Stop,
)
from conductor.core.score import Score

V = TypeVar("V")


@dataclass(frozen=True)
class Segment:
    t: float  # conductor time at which it takes effect
    pos: float  # score position at t
    rate: float  # score seconds per second while playing
    playing: bool

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
class Change:
    """An accepted change: the command and its effect, a segment or parameter values.

    Parameter values are one change however many they are: an XY pad moves two at once.
    """

    seq: int
    t: float
    command: dict[str, Any]
    segment: Segment | None = None
    params: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "t": self.t, "command": self.command}
        if self.segment is not None:
            out["segment"] = asdict(self.segment)
        else:
            out["params"] = self.params
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        segment = Segment(**data["segment"]) if data.get("segment") else None
        params = data.get("params")
        if params is None and data.get("param") is not None:  # journals written before XY pads were one change
            params = {data["param"]: data["value"]}
        return cls(data["seq"], data["t"], data["command"], segment, dict(params or {}))


class Transport:
    def __init__(self, score: Score):
        self.score = score
        self.seq = 0
        self.segments: Timeline[Segment] = Timeline(0.0, Segment(0.0, 0.0, 1.0, False))
        self.params: dict[str, Timeline[float]] = {p.id: Timeline(0.0, p.default) for p in score.parameters}

    def position(self, t: float) -> float:
        return min(max(self.segments.at(t).position(t), 0.0), self.score.duration)

    def plan(self, command: Command, t: float) -> Change:
        """The change ``command`` makes at conductor time ``t``; raises Rejected if it cannot."""
        if isinstance(command, SetParam):  # first: a fader sends a hundred a second
            return self._values(command, t, {command.name: command.value})
        seg = self.segments.at(t)
        here = self.position(t)

        def moved(pos: float | None = None, rate: float | None = None, playing: bool | None = None) -> Change:
            new = Segment(
                t,
                here if pos is None else pos,
                seg.rate if rate is None else rate,
                seg.playing if playing is None else playing,
            )
            return Change(self.seq + 1, t, command.model_dump(exclude_none=True), segment=new)

        match command:
            case Play():
                return moved(pos=0.0 if here >= self.score.duration else here, playing=True)
            case Pause():
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
        raise Rejected("bad_command", "unknown command")  # unreachable: commands are validated first

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
        self.seq = snapshot["seq"]

    def snapshot(self, now: float) -> dict[str, Any]:
        self.segments.prune(now)
        for timeline in self.params.values():
            timeline.prune(now)
        return {
            "seq": self.seq,
            "segments": [asdict(s) for _, s in self.segments.entries()],
            "params": {name: tl.entries() for name, tl in self.params.items()},
        }
