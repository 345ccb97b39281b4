"""A play with a count-in: clicks on every node for the count-in's beats, then the downbeat; and the
refusals a console shows in plain words."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from conductor.core import journal
from conductor.core.performance import Performance, Timing
from conductor.core.protocol import ControlInput, Pause, Play, Rejected, command_adapter
from conductor.core.score import load_score, score_warnings
from conductor.core.transport import Change
from conductor.server.joins import summary
from tests.conftest import SCORES

pytestmark = pytest.mark.unit
BEAT = 60 / 72  # the demo's tempo


@pytest.fixture
def performance() -> Performance:
    return Performance(load_score(SCORES / "demo.yaml").score)


def test_a_count_in_clicks_each_beat_then_plays_on_the_downbeat(performance: Performance) -> None:
    accepted = performance.accept(Play(cmd="play", count_in=1), Timing(now=100.0, lookahead=0.2))
    clicks = [r for r in accepted.cues if r.cue.args[:1] == ["tutti_click"]]
    assert [r.room for r in clicks] == ["nodes:all"] * 4  # a bar of 4/4
    assert [c.cue.t for c in clicks] == pytest.approx([100.2 + k * BEAT for k in range(4)])
    assert [c.cue.args[-1] for c in clicks] == [1.0, 0.6, 0.6, 0.6]  # the bar's first beat louder
    change = accepted.change
    assert change.t == pytest.approx(100.2 + 4 * BEAT)
    assert change.segment is not None and change.segment.count_in == pytest.approx(4 * BEAT)
    transport = performance.transport
    assert not transport.segments.at(change.t - 0.01).playing and transport.segments.at(change.t).playing
    # The count-in survives the journal, and a play without one writes what it always wrote.
    assert journal._record({**change.to_json(), "accepted": 1.0, "by": {}}).change.segment == change.segment
    plain = Change(1, 5.0, {"cmd": "play"}, segment=transport.segments.at(0.0))
    assert "count_in" not in plain.to_json()["segment"]


def test_the_score_sets_the_count_in_and_a_running_play_gets_none(performance: Performance) -> None:
    score = performance.score.model_copy(update={"count_in": 2})
    counted = Performance(score)
    first = counted.accept(Play(cmd="play"), Timing(now=0.0, lookahead=0.1))
    assert len(first.cues) == 8
    with pytest.raises(Rejected, match="already counting in"):  # pressed again during the count-in
        counted.accept(Play(cmd="play"), Timing(now=first.change.t - 1, lookahead=0.1))
    again = counted.accept(Play(cmd="play"), Timing(now=first.change.t + 5, lookahead=0.1))
    assert again.cues == [] and again.change.segment is not None and again.change.segment.count_in == 0
    none = Performance(score).accept(Play(cmd="play", count_in=0), Timing(now=0.0, lookahead=0.1))
    assert none.cues == [] and none.change.t == pytest.approx(0.1)


def test_a_pause_while_paused_is_refused_but_a_pause_in_a_count_in_is_not(performance: Performance) -> None:
    with pytest.raises(Rejected, match="already paused"):
        performance.accept(Pause(cmd="pause"), Timing(now=1.0, lookahead=0.1))
    counting = performance.accept(Play(cmd="play", count_in=1), Timing(now=2.0, lookahead=0.1))
    stopped = performance.accept(Pause(cmd="pause"), Timing(now=2.5, lookahead=0.1))
    assert stopped.change.t < counting.change.t
    assert not performance.transport.segments.at(counting.change.t + 1).playing  # the play never comes


def test_refusals_in_plain_words() -> None:
    with pytest.raises(pydantic.ValidationError) as seek:
        command_adapter.validate_python({"cmd": "seek", "position": -1})
    assert summary(seek.value) == "position: must be at least 0"
    with pytest.raises(pydantic.ValidationError) as tempo:
        command_adapter.validate_python({"cmd": "tempo", "bpm": 0})
    assert summary(tempo.value) == "bpm: must be more than 0"
    with pytest.raises(pydantic.ValidationError) as unknown:
        command_adapter.validate_python({"cmd": "jump"})
    assert summary(unknown.value).startswith("payload: must be one of 'play', 'pause'")
    with pytest.raises(pydantic.ValidationError) as control:
        ControlInput.model_validate({"id": "x", "value": "loud"})
    assert summary(control.value) == "value: must be a number, true or false, or a pair"


def test_a_text_past_the_end_fails_like_a_shape_and_a_part_without_layers_is_warned(tmp_path: object) -> None:

    folder = Path(str(tmp_path))
    text = (SCORES / "demo.yaml").read_text()
    (folder / "sketches").mkdir()
    (folder / "sketches" / "ripples.js").write_text("export default () => {};\n")
    (folder / "late.yaml").write_text(
        text.replace('{start: 110, end: 180, text: "Slack', '{start: 110, end: 190, text: "Slack')
    )
    with pytest.raises(Exception, match=r"items\[2\]\.end: 190 s is after the end of the piece"):
        load_score(folder / "late.yaml")
    bare = load_score(SCORES / "demo.yaml").score
    empty = bare.model_copy(update={"parts": [bare.parts[0].model_copy(update={"layers": []})]})
    [(loc, message)] = score_warnings(empty)
    assert loc == ("parts", 0, "layers") and "see only the clock" in message
    assert score_warnings(bare) == []
