"""Scores and concert files: the examples are valid, and every kind of mistake is reported
as ``file:line: field: what is wrong``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conductor.core.concert import load_concert
from conductor.core.score import PART_GROUP_BASE, load_score
from conductor.core.yamlcheck import InvalidFile
from tests.conftest import ROOT, SCORES

GOOD = """\
title: Small
duration: 60
tempo: {bpm: 120, beats_per_bar: 3}
parameters:
  - {id: density, min: 0, max: 1, default: 0.5}
sections:
  - {id: a, start: 0}
  - {id: b, start: "b3.2"}
parts:
  - id: one
    name: One
    site: ucas
    layers:
      - type: timeline
        shapes:
          - {shape: bar, start: 1, end: "0:30"}
      - type: countdown
    controls:
      - {type: fader, id: f, param: density}
cues:
  - {at: 2, target: part:one, address: /s_new, args: [ping, -1, 0, 1, freq, 440.0]}
"""


@pytest.mark.parametrize("name", ["demo.yaml", "four-rivers.yaml"])
def test_example_scores_are_valid(name: str) -> None:
    score = load_score(SCORES / name).score
    assert score.parts and score.sections and score.cues


def test_four_site_piece_places_one_part_at_each_site() -> None:
    score = load_score(SCORES / "four-rivers.yaml").score
    assert sorted(p.site for p in score.parts) == ["ccom", "pku", "ucas", "whcm"]


def test_times_in_seconds_minutes_and_bars(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    score = load_score(path).score
    # bar 3 beat 2 at 120 bpm in 3/4: (2 * 3 + 1) beats * 0.5 s
    assert score.sections[1].start == pytest.approx(3.5)
    shape = score.parts[0].layers[0].shapes[0]  # type: ignore[union-attr]
    assert (shape.start, shape.end) == (1.0, 30.0)
    assert score.cues[0].args == ["ping", -1, 0, 1, "freq", 440.0]
    assert isinstance(score.cues[0].args[1], int) and isinstance(score.cues[0].args[5], float)


# (what to change in GOOD, the problem expected: line, field, words of the message)
BROKEN = [
    ("title: Small", "title: Small\ntitle: Again", (2, "title", "duplicate key (first given at line 1)")),
    ("duration: 60", "duraton: 60", (2, "duraton", "unknown field 'duraton' (did you mean 'duration'?)")),
    ("duration: 60", "duration: -5", (2, "duration", "negative")),
    ("duration: 60", "duration: soon", (2, "duration", "a time is a number of seconds")),
    ("{bpm: 120,", "{bpm: 0,", (3, "tempo.bpm", "greater than 0")),
    ('start: "b3.2"', 'start: "b3.7"', (8, "sections[1].start", "beats from 1 to 3")),
    ('start: "b3.2"', "start: 0", (8, "sections[1].start", "in order")),
    ('start: "b3.2"', "start: 99", (8, "sections[1].start", "after the end of the piece")),
    ("    name: One", "    name: 1", (11, "parts[0].name", "valid string")),
    ("  - id: one", "  - id: One", (10, "parts[0].id", "an id is a lower-case letter")),
    ("    site: ucas", "    site: ucas\n    colour: red", (13, "parts[0].colour", "did you mean 'color'")),
    ("      - type: countdown", "      - type: countdwn", (17, "parts[0].layers[1].type", "unknown type 'countdwn'")),
    ('end: "0:30"', "end: 0.5", (16, "parts[0].layers[0].shapes[0]", "end must be after start")),
    ('end: "0:30"', "end: 90", (16, "parts[0].layers[0].shapes[0].end", "after the end of the piece")),
    ("{shape: bar,", "{shape: blob,", (16, "parts[0].layers[0].shapes[0].shape", "'bar', 'line'")),
    ("param: density}", "param: densty}", (19, "parts[0].controls[0].param", "no parameter 'densty'")),
    (
        "      - type: countdown",
        "      - type: sketch\n        src: missing.js",
        (18, "parts[0].layers[1].src", "no sketch file 'missing.js'"),
    ),
    ("target: part:one", "target: part:two", (21, "cues[0].target", "no part 'two'")),
    ("target: part:one", "target: everyone", (21, "cues[0].target", "'all', 'site:ID'")),
    ("address: /s_new", "address: s_new", (21, "cues[0].address", "starts with /")),
    ("args: [ping,", "args: [[1], ping,", (21, "cues[0].args[0]", "numbers or strings")),
    ("default: 0.5}", "default: 5}", (5, "parameters[0]", "default must be between 0 and 1")),
    ("parts:\n", "parts: []\nxparts:\n", (9, "parts", "at least 1 item")),
    ("tempo: {bpm: 120", "tempo: {bpm: 120, bpm: 90", (3, "tempo.bpm", "duplicate key")),
    ("title: Small", "title: [unclosed", (2, "(syntax)", "")),
    (
        "default: 0.5}",
        "default: 0.5, n_set: {control: amp, parts: [six]}}",
        (5, "parameters[0].n_set.parts[0]", "no part 'six'"),
    ),
    ("default: 0.5}", "default: 0.5, n_set: {control: 'a b'}}", (5, "parameters[0].n_set.control", "synth control")),
    ("default: 0.5}", "default: 0.5, n_set: {control: amp, range: [0]}}", (5, "parameters[0].n_set.range", "2 items")),
    (
        "target: part:one, address: /s_new, args: [ping, -1, 0, 1,",
        "target: all, address: /s_new, args: [ping, -1, 0, $group,",
        (21, "cues[0].args", "give the cue a target part"),
    ),
    ("default: 0.5}", "default: 0.5, schedule: {aligned: mars}}", (5, "parameters[0].schedule.aligned", "no site")),
    ('start: "b3.2"}', 'start: "b3.2", schedule: {aligned: mars}}', (8, "sections[1].schedule.aligned", "no site")),
    ("duration: 60", "duration: 60\nschedule: {aligned: mars}", (3, "schedule.aligned", "no site 'mars'")),
    ("target: part:one,", "target: part:one, schedule: {aligned: mars},", (21, "cues[0].schedule.aligned", "no site")),
]


def test_a_parameter_sounds_on_its_parts_groups(tmp_path: Path) -> None:
    path = tmp_path / "score.yaml"
    path.write_text(
        GOOD.replace("default: 0.5}", "default: 0.5, n_set: {control: amp, range: [0.1, 0.3]}}").replace(
            "args: [ping, -1, 0, 1,", "args: [ping, -1, 1, $group,"
        )
    )
    score = load_score(path).score
    density = score.parameters[0]
    assert [density.synth_value(v) for v in (0, 0.5, 1)] == pytest.approx([0.1, 0.2, 0.3])
    assert score.group("one") == PART_GROUP_BASE
    assert score.cue_args(score.cues[0]) == ["ping", -1, 1, PART_GROUP_BASE, "freq", 440.0]


def test_part_groups_stay_below_the_node_ids_a_sclang_takes_for_its_synths(tmp_path: Path) -> None:
    many = "".join(f"  - {{id: p{i}, name: P{i}}}\n" for i in range(99))  # and part "one": 100
    path = tmp_path / "crowd.yaml"
    path.write_text(GOOD.replace("parts:\n", "parts:\n" + many, 1))
    with pytest.raises(InvalidFile) as caught:
        load_score(path)
    assert any(p.field == "parts" and "at most 99" in str(p) for p in caught.value.problems), caught.value.problems
    path.write_text(GOOD.replace("parts:\n", "parts:\n" + many.replace("  - {id: p98, name: P98}\n", ""), 1))
    score = load_score(path).score
    groups = [score.group(part.id) for part in score.parts]
    assert max(groups) < 1000 and len(set(groups)) == 99  # sclang's NodeIDAllocator starts at 1000


@pytest.mark.parametrize(("old", "new", "expected"), BROKEN, ids=[b[2][1] + ":" + b[2][2][:20] for b in BROKEN])
def test_each_mistake_is_reported_with_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: tuple[int, str, str]
) -> None:
    assert old in GOOD
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(InvalidFile) as caught:
        load_score(path)
    line, field, words = expected
    messages = [str(p) for p in caught.value.problems]
    assert any(m.startswith(f"{path}:{line}: {field}: ") and words in m for m in messages), messages


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        GOOD.replace("title: Small", "titel: Small").replace("name: One", "name: 1").replace("/s_new", "s_new")
    )
    with pytest.raises(InvalidFile) as caught:
        load_score(path)
    fields = {p.field for p in caught.value.problems}
    assert {"titel", "title", "parts[0].name", "cues[0].address"} <= fields


def test_tutti_check_prints_problems_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("name: One", "name: 1"))
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "check", str(SCORES / "demo.yaml"), str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 1
    assert "demo.yaml: ok" in run.stdout
    assert f"{bad}:11: parts[0].name: Input should be a valid string (got 1)" in run.stderr
    assert f"{bad}: 1 problem(s)" in run.stderr


def test_tutti_check_passes_the_examples() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "conductor",
            "check",
            *map(str, SCORES.glob("*.yaml")),
            str(ROOT / "deploy" / "demo.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_concert_file_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUTTI_TEST_TOKEN", raising=False)
    path = tmp_path / "concert.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        score: {SCORES / "demo.yaml"}
        tokens:
          conductor: env:TUTTI_TEST_TOKEN
          performer: file:{tmp_path / "missing"}
        lookahed: 0.1
        """)
    )
    with pytest.raises(InvalidFile) as caught:
        load_concert(path)
    assert str(caught.value).startswith(f"{path}:5: lookahed: unknown field 'lookahed' (did you mean 'lookahead'?)")
    monkeypatch.setenv("TUTTI_TEST_TOKEN", "secret")
    path.write_text(path.read_text().replace("lookahed: 0.1\n", ""))
    with pytest.raises(InvalidFile) as caught:
        load_concert(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:4: tokens.performer: cannot read a token from {tmp_path / 'missing'}: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'missing'}'"
    ]
    (tmp_path / "missing").write_text("from-file\n")
    concert = load_concert(path)
    assert concert.tokens == {"conductor": "secret", "performer": "from-file"}


def test_the_server_refuses_an_invalid_score(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("name: One", "name: 1"))
    concert = tmp_path / "concert.yaml"
    concert.write_text(f"score: {bad}\nport: 0\ntokens: {{conductor: x}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "conductor", "serve", str(concert)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 1
    assert f"{bad}:11: parts[0].name: Input should be a valid string (got 1)" in run.stderr


def test_osc_routes_must_name_score_parameters(tmp_path: Path) -> None:
    path = tmp_path / "concert.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        score: {SCORES / "demo.yaml"}
        tokens: {{conductor: x}}
        osc:
          routes:
            - {{address: /1/fader1, param: densty}}
            - {{address: /1/fader2, param: density, range: [1, 1]}}
            - {{address: fader3, param: density}}
        """)
    )
    with pytest.raises(InvalidFile) as caught:
        load_concert(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:7: osc.routes[2].address: String should match pattern '^/\\S+$' (got 'fader3')"
    ]
    path.write_text(path.read_text().replace("    - {address: fader3, param: density}\n", ""))
    with pytest.raises(InvalidFile) as caught:
        load_concert(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:5: osc.routes[0].param: no parameter 'densty' in the score",
        f"{path}:6: osc.routes[1].range: the two ends of a range must differ",
    ]
