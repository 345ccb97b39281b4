"""Which cues fall in a span of conductor time, through plays, pauses, seeks and tempo changes."""

from __future__ import annotations

import pytest

from conductor.core.protocol import command_adapter
from conductor.core.scheduler import cues_between
from conductor.core.score import load_score
from conductor.core.transport import Transport
from tests.conftest import SCORES

T0 = 1_800_000_000.0


@pytest.fixture
def transport() -> Transport:
    return Transport(load_score(SCORES / "demo.yaml").score)  # cues at 0, 4, 8, 40 (b13 at 72 bpm), 110


def do(transport: Transport, t: float, **command: object) -> None:
    transport.apply(transport.plan(command_adapter.validate_python(command), t))


def times(transport: Transport, start: float, end: float) -> list[tuple[int, float]]:
    return [(c.index, round(c.t - T0, 6)) for c in cues_between(transport.score, transport, start, end)]


def test_nothing_sounds_before_play(transport: Transport) -> None:
    assert times(transport, T0, T0 + 100) == []


def test_cues_follow_play_seek_and_tempo(transport: Transport) -> None:
    do(transport, T0, cmd="play")
    assert times(transport, T0, T0 + 10) == [(0, 0.0), (1, 4.0), (2, 8.0)]
    assert times(transport, T0 + 0.5, T0 + 4.0) == []  # [start, end): 4.0 belongs to the next span
    do(transport, T0 + 10, cmd="seek", position=39)
    do(transport, T0 + 10.5, cmd="tempo", bpm=144)  # twice as fast from position 39.5
    assert times(transport, T0 + 9, T0 + 20) == [(3, 10.75)]
    do(transport, T0 + 20, cmd="pause")
    assert times(transport, T0 + 20, T0 + 500) == []


def test_consecutive_spans_give_each_cue_once(transport: Transport) -> None:
    do(transport, T0, cmd="play")
    found = []
    t = T0 - 0.05
    while t < T0 + 120:
        found += times(transport, t, t + 0.02)
        t += 0.02
    assert [i for i, _ in found] == [0, 1, 2, 3, 4]
