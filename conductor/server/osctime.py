"""When a controller's OSC bundle means its values to take effect: its timetag, in conductor time.

A bundle's timetag is the sender's wall clock (sclang's ``sendBundle(0.5, ...)``: half a second
from now). The conductor converts it with the sender's clock offset when the sender is a node
(the offset its clock sync measured: nodes on one address share a machine, so the median of
theirs), else with its own (a controller on the conductor's machine, or one whose clock NTP
keeps with it). A timetag in the past takes effect at once, as scsynth plays a late bundle; one
further ahead than ``MAX_AHEAD`` is refused.
"""

from __future__ import annotations

import math
import statistics
import struct
from collections.abc import Callable, Iterable

NTP_EPOCH = 2208988800  # seconds from 1900 (OSC's timetags) to 1970 (Unix time)
IMMEDIATE = b"\x00\x00\x00\x00\x00\x00\x00\x01"  # OSC's timetag for "now"
MAX_AHEAD = 60.0  # seconds: a controller may schedule a change at most this far ahead


def timetag(data: bytes) -> float | None:
    """A bundle's timetag as Unix time (None: not a bundle, or "immediately"). Read here, as
    python-osc gives a past timetag as the time of reading; nested bundles go with the outer one."""
    if not data.startswith(b"#bundle\x00") or len(data) < 16 or data[8:16] == IMMEDIATE:
        return None
    seconds, fraction = struct.unpack(">II", data[8:16])
    return seconds - NTP_EPOCH + fraction / 2**32


class SenderClocks:
    """Conductor time from a sender's wall-clock time. ``nodes()`` gives (address, offset) of each
    node; ``own()`` is the conductor's clock minus this machine's wall clock."""

    def __init__(self, nodes: Callable[[], Iterable[tuple[str, float]]], own: Callable[[], float]):
        self.nodes = nodes
        self.own = own

    def conductor_time(self, host: str, wall: float) -> float:
        offsets = [offset for address, offset in self.nodes() if _same(address, host)]
        return wall + (statistics.median(offsets) if offsets else self.own())


def when(at: float, now: float) -> float | None:
    """The conductor time a change is asked for: None for at once (past or now); raises ValueError
    for a time too far ahead or not finite."""
    if not math.isfinite(at) or at > now + MAX_AHEAD:
        raise ValueError(f"a timetag more than {MAX_AHEAD:g} s ahead")
    return at if at > now else None


def _same(a: str, b: str) -> bool:
    return a.removeprefix("::ffff:") == b.removeprefix("::ffff:")
