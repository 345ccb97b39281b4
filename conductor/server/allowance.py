"""How often each client may do something: a token bucket per client.

A client may do it ``rate`` times a second on average and ``burst`` times at once. Used for what a
peer could otherwise send without end: sketch events, a node's health reports, refused events.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Allowance:
    rate: float  # a second, on average ...
    burst: float  # ... and at once
    _left: dict[str, tuple[float, float]] = field(default_factory=dict)  # sid -> (times left, when)

    def spend(self, sid: str, now: float) -> bool:
        """Whether ``sid`` may do it once more at ``now`` (seconds): if so, that time is counted."""
        left, then = self._left.get(sid, (self.burst, now))
        left = min(self.burst, left + max(0.0, now - then) * self.rate)
        allowed = left >= 1
        self._left[sid] = (left - 1 if allowed else left, now)
        return allowed

    def forget(self, sid: str) -> None:
        """The client left: what it held goes."""
        self._left.pop(sid, None)
