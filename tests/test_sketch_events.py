"""Sketch events and live edits, without a browser: what is relayed where, and what is refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydantic
import pytest

from conductor.core.protocol import Play, Rejected, SetSketches, SketchEvent
from conductor.core.score import InvalidFile, load_score
from conductor.core.transport import Change, Rehearsal, Transport
from conductor.server.joins import Client
from conductor.server.sketches import BURST, SketchRelay
from conductor.server.watch import _checked
from tests.conftest import SCORES

pytestmark = pytest.mark.unit


class Sent:
    """An ``Out`` that keeps what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, str | None, list[str] | None]] = []

    async def emit(
        self, event: str, data: Any, to: str | None = None, room: str | None = None, skip_sid: list[str] | None = None
    ) -> None:
        self.sent.append((event, data, room, skip_sid))

    async def enter_room(self, sid: str, room: str) -> None:
        pass


def relay(now: float = 100.0, playing: bool = True) -> tuple[SketchRelay, Sent]:
    score = load_score(SCORES / "demo.yaml").score
    transport = Transport(score)
    if playing:
        transport.apply(transport.plan(Play(cmd="play"), 90.0))  # at 10 s of the piece at `now`
    out = Sent()
    return SketchRelay(lambda: score, lambda: transport, out, lambda: now), out


def performer(part: str = "drones", sid: str = "s1") -> Client:
    return Client(sid=sid, role="performer", name=part, part=part, joined=0, last_seen=0)


async def test_an_event_goes_to_every_other_part_page_or_to_those_named() -> None:
    sketches, out = relay()
    assert await sketches.send(performer(), SketchEvent(name="ripple", data={"x": 0.5})) == {"ok": True}
    assert [room for _, _, room, _ in out.sent] == ["part:drones", "part:pulses", "part:sketch"]
    assert all(skip == ["s1"] for *_, skip in out.sent)  # not back to the page that sent it
    event, data, _, _ = out.sent[0]
    assert event == "sketch" and data["data"] == {"x": 0.5} and data["part"] == "drones" and data["t"] is None
    out.sent.clear()
    await sketches.send(performer(), SketchEvent(name="ripple", to=["pulses"]))
    assert [room for _, _, room, _ in out.sent] == ["part:pulses"]


async def test_a_timed_event_carries_the_conductor_time_its_score_time_falls_on() -> None:
    sketches, out = relay(now=100.0)  # the piece is at 10 s
    answer = await sketches.send(performer(), SketchEvent(name="cue", at=12.5))
    assert answer == {"ok": True, "t": pytest.approx(102.5)}
    assert out.sent[0][1]["at"] == 12.5
    with pytest.raises(Rejected) as late:
        await sketches.send(performer(), SketchEvent(name="cue", at=9.0))
    assert late.value.code == "too_late"
    stopped, _ = relay(playing=False)
    with pytest.raises(Rejected) as still:
        await stopped.send(performer(), SketchEvent(name="cue", at=12.0))
    assert still.value.code == "not_playing"


async def test_refusals_say_why() -> None:
    sketches, out = relay()
    with pytest.raises(Rejected) as unknown:
        await sketches.send(performer(), SketchEvent(name="x", to=["nobody"]))
    assert unknown.value.code == "unknown_part" and "nobody" in unknown.value.message
    audience = Client(sid="a", role="audience", name="a", joined=0, last_seen=0)
    with pytest.raises(Rejected) as forbidden:
        await sketches.send(audience, SketchEvent(name="x"))
    assert forbidden.value.code == "forbidden"
    for bad in ({"name": ""}, {"name": "x", "data": "y" * 5000}, {"name": "x", "data": [[[[[[[[[1]]]]]]]]]},
                {"name": "x", "at": -1}, {"name": "x", "to": []}, {"name": "x", "extra": 1}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError):
            SketchEvent.model_validate(bad)
    assert out.sent == []


async def test_each_sender_is_held_to_its_rate() -> None:
    sketches, _ = relay()
    for _ in range(int(BURST)):
        await sketches.send(performer(), SketchEvent(name="x"))
    with pytest.raises(Rejected) as limited:
        await sketches.send(performer(), SketchEvent(name="x"))
    assert limited.value.code == "rate_limited"
    await sketches.send(performer(sid="s2"), SketchEvent(name="x"))  # another sender is not held back


def test_a_live_edit_keeps_the_parts_and_parameters(tmp_path: Path) -> None:
    shutil.copytree(SCORES, tmp_path / "scores")
    path = tmp_path / "scores" / "demo.yaml"
    current = load_score(path)
    path.write_text(path.read_text().replace("Tidal Lines", "Tidal Lines, take 2"))
    assert _checked(path, current).score.title == "Tidal Lines, take 2"
    path.write_text(path.read_text().replace("min: 0, max: 1, default: 0.3,", "min: 0, max: 2, default: 0.3,", 1))
    with pytest.raises(InvalidFile) as refused:
        _checked(path, current)
    assert [p.field for p in refused.value.problems] == ["parameters"]
    assert "restart tutti serve" in str(refused.value)


def test_the_conductor_turns_a_parts_sketches_off_and_on_as_a_journalled_change(tmp_path: Path) -> None:
    score = tmp_path / "score.yaml"
    layers = "    layers: [{type: sketch, src: s.js, p5: '1.x'}]\n"
    parts = "".join(f"  - id: {p}\n    name: {p.upper()}\n" + (layers if p != "c" else "") for p in "abc")
    score.write_text(f"title: S\nduration: 60\nparts:\n{parts}")
    (tmp_path / "s.js").write_text("function draw() {}\n")
    transport = Transport(load_score(score).score)
    off = transport.plan(SetSketches(cmd="sketches", part="b", on=False), 1.0)
    assert off.rehearsal == Rehearsal(sketches_off=("b",))
    transport.apply(Change.from_json(off.to_json()))  # as a journal reads it back
    assert transport.rehearsal.sketches_off == ("b",)
    assert transport.snapshot(2.0)["rehearsal"]["sketches_off"] == ["b"]
    for command, code in [
        (SetSketches(cmd="sketches", part="b", on=False), "unchanged"),
        (SetSketches(cmd="sketches", part="nobody", on=False), "unknown_part"),
        (SetSketches(cmd="sketches", part="c", on=False), "unchanged"),  # c has no sketch
    ]:
        with pytest.raises(Rejected) as refused:
            transport.plan(command, 2.0)
        assert refused.value.code == code
    transport.apply(transport.plan(SetSketches(cmd="sketches", part="b", on=True), 3.0))
    assert transport.rehearsal == Rehearsal()
    assert "sketches_off" not in Rehearsal().to_json()  # journals and snapshots without it read as before
    with pytest.raises(ValueError, match="sketches_off"):
        Rehearsal.from_json({"loop": None, "click": [], "sketches_off": "b"})
    with pytest.raises(pydantic.ValidationError):
        SetSketches.model_validate({"cmd": "sketches", "part": "b", "on": "off"})
