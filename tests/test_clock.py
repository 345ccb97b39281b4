"""The clock estimator, in Python and in the browsers' JavaScript, and the conductor clock."""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conductor.core.clock import ConductorClock, OffsetEstimator

ROOT = Path(__file__).resolve().parent.parent


def exchange(rng: random.Random, offset: float, t0: float, max_delay: float = 0.02) -> tuple[float, ...]:
    """One sync exchange with uniform random delay on each leg; conductor = local + offset."""
    t1 = t0 + rng.uniform(0, max_delay) + offset
    t2 = t1 + rng.uniform(0, 0.0005)
    t3 = t2 - offset + rng.uniform(0, max_delay)
    return t0, t1, t2, t3


def test_estimate_always_within_its_error_bound_and_converges() -> None:
    rng = random.Random(1)
    truth = -3.21
    est = OffsetEstimator(local=lambda: 0.0)
    t = 1000.0
    for _ in range(300):
        assert est.add(*exchange(rng, truth, t))
        assert abs(est.estimate - truth) <= est.error + 1e-12
        t += 0.05
    assert abs(est.estimate - truth) < 0.0002
    assert est.samples == 256  # the window


def test_per_leg_minimum_beats_minimum_round_trip() -> None:
    """The reason for filtering the legs separately: over many trials it is several times closer."""
    rng = random.Random(2)
    ours, min_rtt = [], []
    for _ in range(400):
        est = OffsetEstimator(local=lambda: 0.0)
        samples = [exchange(rng, 0.0, i * 0.1) for i in range(50)]
        for s in samples:
            est.add(*s)
        ours.append(abs(est.estimate))
        best = min(samples, key=lambda s: (s[3] - s[0]) - (s[2] - s[1]))
        min_rtt.append(abs(((best[1] - best[0]) - (best[3] - best[2])) / 2))
    ours.sort(), min_rtt.sort()
    p99 = int(0.99 * len(ours))
    assert ours[p99] * 3 < min_rtt[p99]


def test_impossible_exchanges_are_ignored() -> None:
    est = OffsetEstimator(local=lambda: 0.0)
    assert not est.add(10.0, 5.0, 4.0, 11.0)
    assert not est.add(10.0, 5.0, 5.1, 9.0)
    assert not est.synced


def legs(t0: float, offset: float, up: float, down: float) -> tuple[float, float, float, float]:
    """An exchange with the given one-way delays; conductor = local + offset."""
    t1 = t0 + up + offset
    return t0, t1, t1, t1 - offset + down


def test_slews_smoothly_and_steps_only_on_large_corrections() -> None:
    now = [100.0]
    est = OffsetEstimator(local=lambda: now[0], settle=1, max_slew=0.002)
    est.add(*legs(100.0, 1.0, 0.010, 0.001))  # slow uplink: estimate 1.0045
    assert est.offset == pytest.approx(1.0045)
    faster = legs(100.0, 1.0, 0.001, 0.001)  # faster uplink: estimate 1.0
    est.add(*faster)
    now[0] = faster[3]
    assert est.estimate == pytest.approx(1.0)
    assert est.offset == pytest.approx(1.0045), "no jump"
    now[0] += 1.0
    assert est.offset == pytest.approx(1.0025), "2 ms per second"
    now[0] += 10
    assert est.offset == pytest.approx(1.0)
    now[0] = 200.0
    est.add(*legs(200.0, 1.25, 0.001, 0.001))  # 100 s later, a 0.25 s change of route steps at once
    assert est.estimate == pytest.approx(1.25)
    assert est.offset == pytest.approx(1.25)


def test_old_exchanges_age_out() -> None:
    est = OffsetEstimator(window=4, max_age=10, local=lambda: 0.0)
    for i in range(6):
        est.add(*legs(i, 0.0, 0.001, 0.001))
    assert est.samples == 4
    est.add(*legs(100.0, 0.0, 0.001, 0.001))
    assert est.samples == 1


def test_conductor_clock_follows_wall_time_and_never_goes_back() -> None:
    clock = ConductorClock()
    readings = [clock.now() for _ in range(10000)]
    assert all(b >= a for a, b in itertools.pairwise(readings))
    assert abs(clock.now() - time.time()) < 0.01


def test_the_conductor_clock_less_the_wall_clock_is_read_between_two_close_wall_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tests take it as the truth their clients' offsets are held to: a process preempted between
    # its two reads (3 ms here, on the first try) must not move it.
    clock = ConductorClock(origin=1000.0)
    monotonic = iter([5.0, 5.1, 5.2])
    wall = iter([1004.998, 1005.001, 1005.0999995, 1005.1000005, 1005.1999995, 1005.2000005])
    monkeypatch.setattr(time, "monotonic", lambda: next(monotonic))
    monkeypatch.setattr(time, "time", lambda: next(wall))
    assert clock.minus_wall() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is installed by the set-up command")
def test_browser_estimator_is_the_same_algorithm() -> None:
    """Feed identical exchanges (including impossible ones) to both; every output must agree."""
    rng = random.Random(3)
    exchanges = [exchange(rng, 0.7, 50.0 + i * 0.3, 0.03) for i in range(400)]
    exchanges[10] = (5.0, 4.0, 3.0, 6.0)
    exchanges[200] = (exchanges[199][0] + 80, *exchanges[199][1:])  # an old one, later in time
    options = {"window": 64, "maxAge": 30, "maxSlew": 0.002, "stepThreshold": 0.05, "settle": 8}
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "clock_vectors.mjs")],
        check=True,
        timeout=30,
        input=json.dumps({"options": options, "exchanges": exchanges}),
        capture_output=True,
        text=True,
    )
    js = json.loads(result.stdout)
    est = OffsetEstimator(window=64, max_age=30, max_slew=0.002, step_threshold=0.05, settle=8, local=lambda: 0.0)
    for ex, (ok, estimate, error, rtt, applied) in zip(exchanges, js, strict=True):
        assert est.add(*ex) == ok
        assert est.estimate == pytest.approx(estimate, abs=1e-12)
        assert est.error == pytest.approx(error, abs=1e-12)
        assert est.rtt == pytest.approx(rtt, abs=1e-12)
        assert est.offset_at(ex[3] + 0.5) == pytest.approx(applied, abs=1e-12)


def test_after_a_long_silence_one_slow_exchange_does_not_move_a_good_offset() -> None:
    """A sleeping iPad: every exchange ages out, and the first one after waking waited 1.27 s."""
    now = [100.0]
    est = OffsetEstimator(local=lambda: now[0], max_age=60)
    for i in range(40):
        est.add(*legs(100.0 + i * 0.1, 0.5, 0.001, 0.001))
    assert est.offset == pytest.approx(0.5)
    slow = legs(200.0, 0.5, 1.27, 0.001)  # its uplink waited while the connection came back
    est.add(*slow)
    now[0] = slow[3]
    assert est.samples == 1 and est.error == pytest.approx(0.6355)
    assert est.offset == pytest.approx(0.5, abs=0.002), "the playhead jumped"
    est.add(*legs(200.5, 0.5, 0.001, 0.001))  # a good exchange: the bound is tight again
    assert est.estimate == pytest.approx(0.5)
