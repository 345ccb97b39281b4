"""Rehearsal: a loop the play goes back over (each jump a journalled change), bars with a pre-roll,
and a click track on the score's beat grid at the sites and parts it is on for."""

from __future__ import annotations

import pydantic
import pytest

from conductor.core import journal
from conductor.core.performance import CLICK_ID, Performance, Timing
from conductor.core.protocol import GoToBar, Play, Rejected, Repeat, SetClick, SetLoop, Unloop, command_adapter
from conductor.core.score import Score
from conductor.core.transport import Loop, Rehearsal, Transport

BAR = 2.0  # 120 bpm, 4/4
SCORE = Score.model_validate(
    {
        "title": "Loops",
        "duration": 40,
        "tempo": {"bpm": 120},
        "parts": [{"id": "a", "name": "A", "site": "ucas"}, {"id": "b", "name": "B", "site": "ccom"}],
        "sections": [{"id": "intro", "start": 0}, {"id": "verse", "start": 8}, {"id": "coda", "start": 30}],
    }
)


def jumps(performance: Performance, now: float, until: float) -> list[float]:
    """Run the conductor's loop: every jump due before ``until``, as a ``repeat`` at its time."""
    out = []
    while (at := performance.transport.next_jump(now, until)) is not None:
        out.append(performance.accept(Repeat(cmd="repeat", at=at), Timing(now=now, lookahead=0.1)).change.t)
    return out


@pytest.mark.unit
def test_a_two_bar_loop_played_three_times_jumps_twice_at_its_end_then_plays_on() -> None:
    performance = Performance(SCORE)
    looped = performance.accept(SetLoop(cmd="loop", bars=(3, 4), times=3), Timing(now=10.0, lookahead=0.1))
    assert looped.change.segment is not None and looped.change.segment.pos == 2 * BAR  # to bar 3 at once
    start = performance.accept(Play(cmd="play"), Timing(now=11.0, lookahead=0.1)).change.t
    assert jumps(performance, 11.0, 100.0) == pytest.approx([start + 2 * BAR, start + 4 * BAR])
    transport = performance.transport
    assert transport.rehearsal.loop == Loop(2 * BAR, 4 * BAR, 3, 3)
    for k in range(3):  # each pass plays bars 3 and 4 from their start
        assert transport.position(start + k * 2 * BAR + 0.5) == pytest.approx(2 * BAR + 0.5)
    assert transport.position(start + 6 * BAR + 0.5) == pytest.approx(4 * BAR + 0.5)  # then on, into bar 5


@pytest.mark.unit
def test_a_section_loops_until_it_is_ended_and_a_seek_out_of_it_is_not_pulled_back() -> None:
    performance = Performance(SCORE)
    performance.accept(SetLoop(cmd="loop", section="verse"), Timing(now=0.0, lookahead=0.1))
    start = performance.accept(Play(cmd="play"), Timing(now=0.5, lookahead=0.1)).change.t
    assert len(jumps(performance, 0.5, start + 22 * 5 + 1)) == 5  # 22 s a pass; never ends by itself
    performance.accept(Unloop(cmd="unloop"), Timing(now=200.0, lookahead=0.1))
    assert performance.transport.next_jump(200.0, 400.0) is None
    with pytest.raises(Rejected, match="no loop: set one first"):
        performance.accept(Unloop(cmd="unloop"), Timing(now=201.0, lookahead=0.1))
    with pytest.raises(Rejected, match="no section 'bridge'"):
        performance.accept(SetLoop(cmd="loop", section="bridge"), Timing(now=202.0, lookahead=0.1))
    performance.accept(SetLoop(cmd="loop", bars=(1, 2)), Timing(now=203.0, lookahead=0.1))
    performance.accept(GoToBar(cmd="bar", bar=10), Timing(now=204.0, lookahead=0.1))
    assert performance.transport.next_jump(204.0, 300.0) is None  # past the loop: it plays on


@pytest.mark.unit
def test_a_bar_with_a_preroll_and_bars_past_the_end() -> None:
    performance = Performance(SCORE)
    change = performance.accept(GoToBar(cmd="bar", bar=5, preroll=2), Timing(now=1.0, lookahead=0.1)).change
    assert change.segment is not None and change.segment.pos == 2 * BAR  # bar 3
    change = performance.accept(GoToBar(cmd="bar", bar=2, preroll=4), Timing(now=2.0, lookahead=0.1)).change
    assert change.segment is not None and change.segment.pos == 0.0  # no bar before the first
    with pytest.raises(Rejected, match="bar 21 is past the end"):
        performance.accept(GoToBar(cmd="bar", bar=21), Timing(now=3.0, lookahead=0.1))
    with pytest.raises(pydantic.ValidationError, match="give a section or bars"):
        command_adapter.validate_python({"cmd": "loop", "section": "verse", "bars": [1, 2]})
    with pytest.raises(pydantic.ValidationError, match="the last bar comes before the first"):
        command_adapter.validate_python({"cmd": "loop", "bars": [4, 2]})


@pytest.mark.unit
def test_the_click_track_sounds_each_beat_where_it_is_on_and_follows_loops_and_tempo() -> None:
    performance = Performance(SCORE)
    assert performance.clicks(0.0, 100.0) == []
    performance.accept(SetClick(cmd="click", on=True, site="ucas"), Timing(now=0.0, lookahead=0.1))
    performance.accept(SetClick(cmd="click", on=True, part="b"), Timing(now=0.0, lookahead=0.1))
    start = performance.accept(Play(cmd="play"), Timing(now=1.0, lookahead=0.1)).change.t
    clicks = performance.clicks(start, start + BAR)
    assert {r.room for r in clicks} == {"nodes:site:ucas", "nodes:part:b"}
    ucas = [r.cue for r in clicks if r.room == "nodes:site:ucas"]
    assert [c.t for c in ucas] == pytest.approx([start + k * 0.5 for k in range(4)])
    assert [c.args[-1] for c in ucas] == [1.0, 0.6, 0.6, 0.6] and {c.id for c in ucas} == {CLICK_ID}
    # Windows that meet give each beat once.
    pieces = [c.cue.t for w in range(8) for c in performance.clicks(start + w * 0.25, start + w * 0.25 + 0.25)]
    assert pieces == pytest.approx([c.cue.t for c in performance.clicks(start, start + BAR)])
    with pytest.raises(Rejected, match="no site 'mars'"):
        performance.accept(SetClick(cmd="click", on=True, site="mars"), Timing(now=2.0, lookahead=0.1))
    performance.accept(SetClick(cmd="click", on=False), Timing(now=2.0, lookahead=0.1))  # off everywhere
    assert performance.transport.rehearsal.click == ()
    performance.accept(SetClick(cmd="click", on=True), Timing(now=2.0, lookahead=0.1))
    performance.accept(SetLoop(cmd="loop", bars=(1, 1), times=2), Timing(now=3.0, lookahead=0.1))
    loop_start = performance.transport.segments.times[-1]
    [jump] = jumps(performance, 3.0, 100.0)
    around = [c.cue.t for c in performance.clicks(jump - 0.6, jump + 0.6)]
    assert around == pytest.approx([jump - 0.5, jump, jump + 0.5])  # the jump lands on a downbeat
    assert jump == pytest.approx(loop_start + BAR)


@pytest.mark.unit
def test_rehearsal_changes_survive_the_journal_and_a_snapshot() -> None:
    performance = Performance(SCORE)
    changes = [
        performance.accept(command, Timing(now=1.0, lookahead=0.1)).change
        for command in (SetLoop(cmd="loop", section="verse", times=4), SetClick(cmd="click", on=True, part="a"))
    ]
    for change in changes:
        assert journal._record({**change.to_json(), "accepted": 1.0, "by": {}}).change == change
    rehearsal = Rehearsal(Loop(8.0, 30.0, 4, 1), ("part:a",))
    assert performance.transport.rehearsal == rehearsal
    copy = Transport(SCORE)
    copy.restore(performance.transport.snapshot(2.0))
    assert copy.rehearsal == rehearsal
    for bad, field in (({"loop": {"start": 1, "end": 2}}, "rehearsal.loop"), ({"click": "all"}, "rehearsal.click")):
        with pytest.raises(ValueError, match=field):
            journal._record({**changes[0].to_json(), "rehearsal": bad, "accepted": 1.0})
