"""The transport: every change takes effect at its conductor time, and positions follow from it."""

from __future__ import annotations

import pytest

from conductor.core.protocol import Rejected, command_adapter
from conductor.core.score import load_score
from conductor.core.transport import Change, Transport
from tests.conftest import SCORES

T0 = 1_800_000_000.0


@pytest.fixture
def transport() -> Transport:
    return Transport(load_score(SCORES / "demo.yaml").score)  # 180 s, 72 bpm, sections at 0, 40, 110


def do(transport: Transport, t: float, **command: object) -> Change:
    change = transport.plan(command_adapter.validate_python(command), t)
    transport.apply(change)
    return change


def test_play_pause_seek_and_stop_take_effect_at_their_time(transport: Transport) -> None:
    assert transport.position(T0) == 0
    do(transport, T0, cmd="play")
    assert transport.position(T0 - 1) == 0  # not before its effective time
    assert transport.position(T0 + 12.5) == pytest.approx(12.5)
    do(transport, T0 + 20, cmd="pause")
    assert transport.position(T0 + 19) == pytest.approx(19)
    assert transport.position(T0 + 60) == pytest.approx(20)
    do(transport, T0 + 61, cmd="seek", position=100)
    assert transport.position(T0 + 70) == 100  # paused: a seek does not start playing
    do(transport, T0 + 71, cmd="play")
    assert transport.position(T0 + 81) == pytest.approx(110)
    do(transport, T0 + 90, cmd="stop")
    assert transport.position(T0 + 95) == 0


def test_sections_and_tempo(transport: Transport) -> None:
    do(transport, T0, cmd="section", id="slack")
    do(transport, T0, cmd="play")
    assert transport.position(T0 + 5) == pytest.approx(115)
    do(transport, T0 + 10, cmd="tempo", bpm=144)  # twice the score's 72
    assert transport.position(T0 + 15) == pytest.approx(130)
    with pytest.raises(Rejected, match="no section 'coda'"):
        transport.plan(command_adapter.validate_python({"cmd": "section", "id": "coda"}), T0)


def test_the_end_of_the_piece_holds_and_play_starts_again(transport: Transport) -> None:
    do(transport, T0, cmd="play")
    assert transport.position(T0 + 500) == 180
    do(transport, T0 + 500, cmd="play")
    assert transport.position(T0 + 501) == pytest.approx(1)


def test_a_change_cancels_those_scheduled_after_it(transport: Transport) -> None:
    do(transport, T0 + 10, cmd="play")
    do(transport, T0 + 5, cmd="seek", position=50)  # an explicit earlier time wins
    assert transport.position(T0 + 20) == 50


def test_parameters_are_checked_and_timed(transport: Transport) -> None:
    do(transport, T0 + 1, cmd="param", name="density", value=0.9)
    assert transport.params["density"].at(T0) == 0.3
    assert transport.params["density"].at(T0 + 1) == 0.9
    with pytest.raises(Rejected, match="between 0 and 1"):
        transport.plan(command_adapter.validate_python({"cmd": "param", "name": "density", "value": 2}), T0)
    with pytest.raises(Rejected, match="no parameter 'volume'"):
        transport.plan(command_adapter.validate_python({"cmd": "param", "name": "volume", "value": 0}), T0)
    with pytest.raises(Rejected, match="past the end"):
        transport.plan(command_adapter.validate_python({"cmd": "seek", "position": 999}), T0)


def test_a_snapshot_restores_the_same_performance(transport: Transport) -> None:
    do(transport, T0, cmd="play")
    do(transport, T0 + 30, cmd="tempo", bpm=36)
    do(transport, T0 + 40, cmd="param", name="brightness", value=0.1)
    copy = Transport(transport.score)
    copy.restore(transport.snapshot(T0 + 35))  # taken before the last changes took effect
    for t in (T0 + 35, T0 + 40, T0 + 100):
        assert copy.position(t) == transport.position(t)
    assert copy.params["brightness"].at(T0 + 41) == 0.1
    assert copy.seq == 3
    assert Change.from_json(do(transport, T0 + 50, cmd="pause").to_json()).segment is not None
