"""Each audio link's figures once a second: kept for the whole concert beside the journal, and shown.

From the nodes' link reports (``conductor/node/jacktrip.py``) a row per link (a hub client's link
to the hub, or a pair): each direction's one-way delay, as measured on the shared clock, with the
bound the two ends' clock-sync errors put on it, their jitter (the spread of successive
measurements), the round trip and how far it is from the two ways plus the far end's loop back (the
check), packets lost, underruns and overflows, and the receive queue each direction needs.

The rows go to ``<journal>.links.jsonl`` (JSON Lines, appended off the event loop) and to the
console, with each link's recent history (the last minutes) and its whole concert (thinned to a
bounded number of points, so a long concert costs no more to draw than a short one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conductor.server.periodic import Periodic

log = logging.getLogger("tutti.links")

RECENT = 300  # rows kept per link for the last minutes (one a second)
CONCERT = 240  # points kept per link over the whole concert: every other one dropped when full
QUEUE_OVER = 60  # the last rows whose spread of delays sets the queue a direction needs


def metrics_path(journal: Path) -> Path:
    """The metrics file beside the journal: ``concert.jsonl`` -> ``concert.links.jsonl``."""
    return journal.with_name(journal.stem + ".links.jsonl")


def _ms(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) and math.isfinite(value) else None


def link_rows(nodes: Iterable[tuple[float | None, list[dict[str, Any]]]], period_ms: float) -> list[dict[str, Any]]:
    """A row per measured link from each node's clock error (s) and link reports.

    ``a`` is the end that connects out (a hub client, a pair's client), ``b`` the hub or pair server.
    """
    ends: dict[tuple[str, str, bool], tuple[dict[str, Any], float | None]] = {}  # (site, peer, pair)
    for error, links in nodes:
        for link in links:
            site, role = str(link.get("site", "")), link.get("role")
            if role == "hub":  # one report for every client: its way in from each
                for peer in link.get("way_in_ms") or {}:
                    ends[(site, str(peer), False)] = (link, error)
            elif role in ("client", "p2p client", "p2p server"):
                ends[(site, str(link.get("peer", "")), role != "client")] = (link, error)
    rows = []
    for (a, b, pair), (near, error_a) in ends.items():
        if near.get("role") not in ("client", "p2p client"):
            continue
        far, error_b = ends.get((b, a, pair), ({}, None))
        rtt = _ms(near.get("latency_ms"))
        a_to_b = _ms((far.get("way_in_ms") or {}).get(a))
        b_to_a = _ms((near.get("way_in_ms") or {}).get(b))
        errors = [e for e in (error_a, error_b) if isinstance(e, int | float)]
        check = None
        if None not in (rtt, a_to_b, b_to_a):
            check = round(rtt - a_to_b - b_to_a - period_ms, 3)  # type: ignore[operator]
        bound = round(sum(errors) * 1000, 3) if len(errors) == 2 else None
        rows.append({
            "link": f"{a}–{b}{' pair' if pair else ''}", "a": a, "b": b, "pair": pair,
            "state": near.get("state", ""), "a_to_b_ms": a_to_b, "b_to_a_ms": b_to_a,
            "bound_ms": bound,
            "jitter_a_to_b_ms": _ms((far.get("way_jitter_ms") or {}).get(a)),
            "jitter_b_to_a_ms": _ms((near.get("way_jitter_ms") or {}).get(b)),
            "rtt_ms": rtt, "check_ms": check,
            # The two ways and the loop back make the round trip, give or take a period (the two
            # ends' JACK cycles are not in phase) and the clocks' bound; else a figure is wrong.
            "check_ok": None if check is None else abs(check) <= period_ms + (bound or 0.0) + 0.01,
            "lost": near.get("lost", 0) + (far.get("lost", 0) if pair else 0),
            "underruns": near.get("underruns", 0) + (far.get("underruns", 0) if pair else 0),
            "overflows": near.get("overflows", 0) + (far.get("overflows", 0) if pair else 0),
            "restarts": near.get("restarts", 0),
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["link"])


def queue_needed(delays_ms: list[float], period_ms: float) -> int | None:
    """The receive queue (in periods) that holds every delay in ``delays_ms``: the packets that
    come latest still play in time. Their spread in periods, rounded up, plus one for the
    packet being played; never below jacktrip's least (2)."""
    if len(delays_ms) < 2 or period_ms <= 0:
        return None
    return max(2, math.ceil((max(delays_ms) - min(delays_ms)) / period_ms) + 1)


class LinkMetrics(Periodic):
    """Writes a row per link every second and keeps their history for the console."""

    def __init__(
        self,
        nodes: Callable[[], Iterable[tuple[float | None, list[dict[str, Any]]]]],
        path: Path,
        now: Callable[[], float],
        period_ms: float,
    ):
        self.nodes = nodes
        self.path = path
        self.now = now
        self.period_ms = period_ms
        self.recent: dict[str, deque[list[Any]]] = {}  # link -> [t, a_to_b, b_to_a, rtt]
        self.concert: dict[str, list[list[Any]]] = {}
        self.current: list[dict[str, Any]] = []
        self.write_failures = 0  # seconds whose rows could not be written
        super().__init__()

    def sample(self) -> list[dict[str, Any]]:
        """Take this second's rows: kept, and returned for the file."""
        t = round(self.now(), 3)
        rows = [{"t": t, **row} for row in link_rows(self.nodes(), self.period_ms)]
        for row in rows:
            point = [t, row["a_to_b_ms"], row["b_to_a_ms"], row["rtt_ms"]]
            recent = self.recent.setdefault(row["link"], deque(maxlen=RECENT))
            recent.append(point)
            whole = self.concert.setdefault(row["link"], [])
            whole.append(point)
            if len(whole) > CONCERT:  # thin: every other point, the newest kept
                del whole[-2::-2]
            for way in ("a_to_b", "b_to_a"):
                delays = [p[1 if way == "a_to_b" else 2] for p in list(recent)[-QUEUE_OVER:]]
                queue = queue_needed([d for d in delays if d is not None], self.period_ms)
                row[f"queue_{way}"] = queue
                row[f"queue_{way}_ms"] = None if queue is None else round(queue * self.period_ms, 3)
        self.current = rows
        return rows

    def feed(self) -> dict[str, Any]:
        """What the console draws: the current rows, and each link's last minutes and whole concert."""
        return {
            "rows": self.current,
            "recent": {k: list(v) for k, v in self.recent.items()},
            "concert": self.concert,
            "period_ms": self.period_ms,
            "unwritten": self.write_failures,
            "file": str(self.path),
        }

    def _append(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("a") as file:
            file.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)

    async def tick(self) -> None:
        rows = self.sample()
        if not rows:
            return
        try:
            await asyncio.to_thread(self._append, rows)
        except (OSError, ValueError) as e:  # the concert goes on; the console says so
            self.write_failures += 1
            log.warning("link metrics not written to %s: %s", self.path, e)
