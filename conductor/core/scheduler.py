"""When the score's cues fall in conductor time, and sending them ahead so they sound together.

A cue is sent to its nodes once it falls within the lookahead (``horizon``); each node turns the
conductor time into a timetag in its own clock. Any later change takes effect a lookahead after
it is made, so it can never contradict a cue already sent: nothing sent needs cancelling.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Set
from dataclasses import dataclass

from conductor.core.score import Cue, Score
from conductor.core.transport import Segment, Transport


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


# --- choosing the lookahead: what the conductor knows of every destination's delay ----------------

ALLOWANCE = 0.01  # seconds for the conductor to send a cue and a node to hand it to scsynth
MARGIN = 1.25  # on the worst destination's delay
BOOST_STEP = 0.02  # seconds added to the lookahead for each report of late cues ...
BOOST_HALF_LIFE = 60.0  # ... and how slowly that extra wears off again


OUTLIER = 4.0  # a destination more than this many times the median delay ...
OUTLIER_ABOVE = 0.05  # ... and this many seconds above it is not followed (with 3 or more)


@dataclass
class Lookahead:
    """The lookahead for ``together``: the worst destination's delay with a margin, never below
    ``floor`` (the concert's ``lookahead``) nor above ``ceiling`` (its ``max_lookahead``), plus an
    extra that late cues add and time wears off.

    A destination past the ceiling is not followed: it would hold every change back for
    everyone. Nor is a performer far slower than the rest (an outlier): a page on bad Wi-Fi
    draws late on its own. A node that is slow is followed up to the ceiling: every site must
    sound together. Those not followed are named in ``ignored``.

    A node that drives an Ableton Link session commits each change of the transport to it its Link
    ``lead`` before it sounds: play, pause, seek and tempo (not parameter values, which Link does
    not carry) are planned ``transport`` ahead, which gives those nodes their lead on top.
    """

    floor: float
    ceiling: float = 0.3
    boost: float = 0.0
    value: float = 0.0
    transport: float = 0.0  # the lookahead for changes of the transport
    worst: str = ""  # the destination that sets it ("" when the floor does)
    ignored: tuple[str, ...] = ()  # destinations too slow to follow

    def __post_init__(self) -> None:
        self.ceiling = max(self.ceiling, self.floor)
        self.value = self.value or self.floor
        self.transport = max(self.transport, self.value)

    def to_json(self) -> dict[str, float | str | list[str]]:
        return {
            "value": self.value,
            "transport": self.transport,
            "worst": self.worst,
            "boost": self.boost,
            "ignored": list(self.ignored),
        }

    def update(
        self,
        delays: dict[str, float],
        elapsed: float,
        nodes: Set[str] = frozenset(),
        leads: Mapping[str, float] | None = None,
    ) -> float:
        """Follow ``delays`` (destination -> its delay, s); ``nodes`` are the destinations that sound,
        ``leads`` the Link lead of those that drive a Link session."""
        self.boost *= 0.5 ** (elapsed / BOOST_HALF_LIFE)
        followed = self._followed(delays, nodes)
        self.ignored = tuple(sorted(set(delays) - set(followed)))
        worst, delay = max(followed.items(), key=lambda kv: kv[1], default=("", 0.0))
        needed = delay * MARGIN + ALLOWANCE
        self.worst = worst if needed > self.floor else ""  # who sets it, unless the floor does
        self.value = min(self.ceiling, max(self.floor, needed) + self.boost)
        led = [
            d * MARGIN + ALLOWANCE + (leads or {})[k] + self.boost for k, d in followed.items() if k in (leads or {})
        ]
        self.transport = min(self.ceiling, max([self.value, *led]))  # past the ceiling: late, and counted
        return self.value

    def _followed(self, delays: dict[str, float], nodes: Set[str]) -> dict[str, float]:
        fits = {k: d for k, d in delays.items() if math.isfinite(d) and d * MARGIN + ALLOWANCE <= self.ceiling}
        if len(fits) < 3:
            return fits
        median = statistics.median(fits.values())
        return {k: d for k, d in fits.items() if k in nodes or d <= max(median * OUTLIER, median + OUTLIER_ABOVE)}

    def late(self, cues: int) -> None:
        """Destinations got ``cues`` late: give every cue more time."""
        self.boost += BOOST_STEP * min(cues, 5)


def audio_delays(links: list[dict[str, object]], to: str, period: float) -> dict[str, float]:
    """One-way audio delay from each site to site ``to``, from the nodes' link reports (seconds).

    Each direction of a link as measured on the shared clock (``way_in_ms``: an impulse sent at a
    known conductor time, timed where it arrives); a direction not measured yet takes half the
    round trip, less the period of the far end's loop back in JACK.
    A path between two hub clients goes through the hub; a pair's is direct.
    """
    hub_ways, direct = _ways(links, period)
    hub = next((str(link.get("site")) for link in links if link.get("role") == "hub"), "")
    hub = hub or next((str(link.get("peer")) for link in links if link.get("role") == "client"), "")
    sites = {site for a_b in (*hub_ways, *direct) for site in a_b} | {hub}
    out = {}
    for site in sites - {"", to}:
        if (site, to) in direct:
            out[site] = direct[(site, to)]
        elif site == hub and (hub, to) in hub_ways:
            out[site] = hub_ways[(hub, to)]
        elif to == hub and (site, hub) in hub_ways:
            out[site] = hub_ways[(site, hub)]
        elif (site, hub) in hub_ways and (hub, to) in hub_ways:
            out[site] = hub_ways[(site, hub)] + hub_ways[(hub, to)]
    return out


def _ways(links: list[dict[str, object]], period: float) -> tuple[dict[tuple[str, str], float], ...]:
    """Each direction's delay (from, to) -> s, through the hub and on pairs: measured, else half the
    round trip."""
    through_hub: dict[tuple[str, str], float] = {}
    direct: dict[tuple[str, str], float] = {}
    for link in links:
        site, peer, role, ms = (
            str(link.get("site")),
            str(link.get("peer", "")),
            link.get("role"),
            link.get("latency_ms"),
        )
        ways = through_hub if role in ("hub", "client") else direct
        if role in ("client", "p2p client") and isinstance(ms, int | float):  # the round trip, halved
            half = max(0.0, ms / 1000 - period) / 2
            ways.setdefault((site, peer), half)
            ways.setdefault((peer, site), half)
    for link in links:  # measured one way: these replace the halves
        site, role, way_in = str(link.get("site")), link.get("role"), link.get("way_in_ms")
        ways = through_hub if role in ("hub", "client") else direct
        for peer, ms in way_in.items() if isinstance(way_in, dict) else []:
            if isinstance(ms, int | float) and math.isfinite(ms):
                ways[(str(peer), site)] = max(0.0, ms / 1000)
    return through_hub, direct


def moved(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], period: float
) -> list[tuple[str, str, float, float]]:
    """(aligned site, other site, delay before, after) for each delay that moved by more than ``period``."""
    return [
        (site, other, was, now)
        for site, delays in after.items()
        for other, now in delays.items()
        if (was := before.get(site, {}).get(other)) is not None and abs(now - was) > period
    ]
