"""Where scsynth places a timetag: the line a node draws through its marks (``conductor/node/placement.py``).

The real thing (jackd, scsynth, the node's mark and its listener) is tested where cues are heard:
``test_node.py``, ``test_scheduling.py``, ``test_rehearsal.py``, ``test_oneway.py`` and the dress
rehearsal hold every cue to 1 ms of its time, which scsynth alone misses after it starts.
"""

from __future__ import annotations

import math
import random

import pytest

from conductor.node.placement import AHEAD_MOST, EVERY, STEEPEST, Drift

pytestmark = pytest.mark.unit


def settling(t: float, start: float = 100.0, by: float = -0.004) -> float:
    """scsynth's error after its clock filter started again at ``start`` (a time constant of 13 s)."""
    return by * math.exp(-(t - start) / 13.0)


def test_no_marks_no_correction() -> None:
    assert Drift().at(123.0) == 0.0


def test_the_line_follows_scsynth_s_clock_as_it_settles() -> None:
    rng = random.Random(1)
    drift = Drift()
    worst = 0.0
    for k in range(100):
        due = 100.0 + k * EVERY
        drift.add(due, settling(due) + rng.gauss(0, 0.00005))
        if k >= 10:  # with a second of marks, a cue sent now for up to a second ahead
            for ahead in (0.1, 0.5, 1.0):
                worst = max(worst, abs(drift.at(due + ahead) - settling(due + ahead)))
    assert worst < 0.0003, worst
    # Without the slope (the mean of the same marks), the error would be several times that.
    assert abs(settling(101.0) - settling(103.0)) > 0.0005


def test_a_jump_starts_the_line_again_at_once() -> None:
    drift = Drift()
    for k in range(10):
        drift.add(100.0 + k * EVERY, -0.0003)
    drift.add(102.0, -0.0041)  # scsynth's clock started again, unreported
    assert drift.at(102.1) == pytest.approx(-0.0041)
    assert len(drift.marks) == 1


def test_the_line_is_held_beyond_its_reach_and_its_slope_bounded() -> None:
    drift = Drift()
    for k in range(10):
        drift.add(100.0 + k * 0.2, 0.0001 * k)  # 0.5 ms a second: steep, but scsynth's own
    last = 100.0 + 9 * 0.2
    assert drift.at(last + AHEAD_MOST) == drift.at(last + 60.0)
    assert drift.at(last + 1.0) == pytest.approx(0.0009 + 0.0005, abs=1e-6)
    steep = Drift()
    for k in range(5):
        steep.add(100.0 + k * 0.05, 0.0002 * k)  # 4 ms a second: no filter settles so; held to STEEPEST
    assert steep.at(101.4) - steep.at(100.4) == pytest.approx(STEEPEST, abs=1e-9)


def test_a_reset_forgets_every_mark() -> None:
    drift = Drift()
    drift.add(100.0, -0.001)
    drift.reset()
    assert drift.at(100.0) == 0.0
