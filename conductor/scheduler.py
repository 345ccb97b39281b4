"""When the score's cues fall in conductor time, and sending them ahead so they sound together.

A cue is sent to its nodes once it falls within the lookahead (``horizon``); each node turns the
conductor time into a timetag in its own clock. Any later change takes effect a lookahead after
it is made, so it can never contradict a cue already sent: nothing sent needs cancelling.
"""

from __future__ import annotations

from dataclasses import dataclass

from .score import Cue, Score
from .transport import Segment, Transport


@dataclass(frozen=True)
class TimedCue:
    index: int  # in the score's cue list
    t: float  # conductor time at which it sounds
    cue: Cue
    args: list[int | float | str]  # with the part's group in place of $group

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.index,
            "t": self.t,
            "to": self.cue.to,
            "address": self.cue.address,
            "args": self.args,
            "target": self.cue.target,
        }


def cues_between(score: Score, transport: Transport, start: float, end: float) -> list[TimedCue]:
    """Cues whose moment falls in conductor time [start, end), in order."""
    times = transport.segments.times
    segments: list[tuple[float, Segment]] = list(zip(times, transport.segments.values, strict=True))
    out = []
    for i, (seg_start, seg) in enumerate(segments):
        seg_end = segments[i + 1][0] if i + 1 < len(segments) else float("inf")
        a, b = max(start, seg_start), min(end, seg_end)
        if a >= b or not seg.playing or seg.rate <= 0:
            continue
        lo, hi = seg.position(a), seg.position(b)
        for index, cue in enumerate(score.cues):
            if lo <= cue.at < hi and cue.at <= score.duration:
                out.append(TimedCue(index, seg.t + (cue.at - seg.pos) / seg.rate, cue, score.cue_args(cue)))
    return sorted(out, key=lambda c: c.t)
