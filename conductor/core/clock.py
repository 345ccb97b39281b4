"""The performance clock and the estimator that lets every client follow it.

The conductor's clock is wall-clock epoch seconds advanced by the monotonic clock, so an NTP step
during a concert cannot move it. Clients estimate ``offset = conductor time - local time`` from
sync exchanges: the client sends t0, the conductor stamps receipt t1 and reply t2, the client
stamps t3. ``t1 - t0 = up + offset`` and ``t3 - t2 = down - offset`` with up, down >= 0, so

    -min(t3 - t2)  <=  offset  <=  min(t1 - t0)

over any set of exchanges. The estimate is the middle of that interval, and half its width is a
hard bound on the error (assuming the two clocks do not drift within the window). Taking the
minimum of each leg separately, rather than the single exchange with the smallest round trip,
lets a fast uplink from one exchange pair with a fast downlink from another; under 0-20 ms random
delay this is several times more accurate than minimum-round-trip or median rules. What no
estimator can remove is asymmetry between the legs' minimum delays.

The offset applied to readings slews toward each new estimate at a bounded rate, so a score
never jumps. It steps only when the new bound rules the applied offset out: in the first exchanges
after joining, or by a large correction (a changed network path).

The same algorithm runs in browsers: ``clients/lib/clocksync.js``. Keep the two in step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class ConductorClock:
    """Epoch seconds that advance with the monotonic clock, unaffected by wall-clock steps.

    Processes on one machine share the monotonic clock, so a web worker given the conductor's
    ``origin`` keeps exactly the conductor's time.
    """

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.time() - time.monotonic() if origin is None else origin

    def now(self) -> float:
        return time.monotonic() + self.origin

    def minus_wall(self) -> float:
        """This clock less the wall clock: of three readings, the one whose wall-clock reads bracket
        it closest (a process preempted between two reads on a busy machine is off by as long)."""
        readings = []
        for _ in range(3):
            before, now, after = time.time(), self.now(), time.time()
            readings.append((after - before, now - (before + after) / 2))
        return min(readings)[1]


@dataclass(frozen=True)
class Exchange:
    t0: float  # client send (local clock)
    t1: float  # conductor receive
    t2: float  # conductor send
    t3: float  # client receive (local clock)

    @property
    def up(self) -> float:
        return self.t1 - self.t0

    @property
    def down(self) -> float:
        return self.t3 - self.t2

    @property
    def rtt(self) -> float:
        return (self.t3 - self.t0) - (self.t2 - self.t1)


DELAY_OVER = 64  # exchanges the one-way delay's percentile is taken over


class OffsetEstimator:
    """Estimates conductor time minus local time from a window of sync exchanges.

    ``window`` bounds the number of exchanges kept and ``max_age`` (seconds of local time) how old
    they may be, so that clock drift and route changes age out.
    """

    def __init__(
        self,
        window: int = 256,
        max_age: float = 60.0,
        max_slew: float = 0.002,
        step_threshold: float = 0.05,
        settle: int = 32,
        local: Callable[[], float] = time.time,
    ):
        self.window = window
        self.max_age = max_age
        self.max_slew = max_slew  # seconds of correction per second: 0.2 % is invisible in a score
        self.step_threshold = step_threshold
        self.settle = settle  # the first exchanges (just after joining) step: there is nothing to keep smooth yet
        self.local = local
        self._exchanges: deque[Exchange] = deque(maxlen=window)
        self.estimate: float | None = None  # raw estimate from the window
        self.error = float("inf")  # bound on |estimate - true offset|
        self.rtt = float("inf")  # smallest round trip in the window
        self.delay = float("inf")  # conductor-to-here delay, 95th percentile of the latest exchanges
        self._from = 0.0  # applied offset at time _since ...
        self._since = 0.0
        self._to = 0.0  # ... slewing toward this one
        self._steered = False

    @property
    def synced(self) -> bool:
        return self.estimate is not None

    @property
    def samples(self) -> int:
        return len(self._exchanges)

    def add(self, t0: float, t1: float, t2: float, t3: float) -> bool:
        """Add one exchange; returns False (and ignores it) if its stamps are impossible."""
        ex = Exchange(t0, t1, t2, t3)
        if not (t3 >= t0 and t2 >= t1 and ex.rtt >= 0):
            return False
        self._exchanges.append(ex)
        while self._exchanges and t3 - self._exchanges[0].t3 > self.max_age:
            self._exchanges.popleft()
        min_up = min(e.up for e in self._exchanges)
        min_down = min(e.down for e in self._exchanges)
        self.estimate = (min_up - min_down) / 2
        self.error = (min_up + min_down) / 2
        self.rtt = min(e.rtt for e in self._exchanges)
        downs = sorted(e.down for e in list(self._exchanges)[-DELAY_OVER:])
        self.delay = max(0.0, downs[int(0.95 * (len(downs) - 1))] + self.estimate)
        self._steer(self.estimate, t3)
        return True

    def _steer(self, target: float, at: float) -> None:
        current = self.offset_at(at)
        gap = abs(target - current)
        # Step only when the applied offset is provably wrong (outside the bound), and either just
        # after joining or by a lot. After a long silence (a sleeping iPad) every old exchange has
        # aged out, and the first new one may be slow: its wide bound must not move a good offset.
        wrong = gap > self.error
        if not self._steered or (wrong and (self.samples <= self.settle or gap > self.step_threshold)):
            self._from = target
        else:
            self._from = current
        self._steered = True
        self._since = at
        self._to = target

    def offset_at(self, local_t: float) -> float:
        """The offset applied at local time ``local_t`` (slewing toward the estimate)."""
        gap = self._to - self._from
        reach = self.max_slew * max(0.0, local_t - self._since)
        return self._from + max(-reach, min(reach, gap))

    @property
    def offset(self) -> float:
        return self.offset_at(self.local())

    def now(self) -> float:
        """Conductor time now, as this client best knows it."""
        t = self.local()
        return t + self.offset_at(t)

    def to_local(self, conductor_t: float) -> float:
        """Local clock reading at which the conductor clock reads ``conductor_t``."""
        return conductor_t - self.offset_at(self.local())
