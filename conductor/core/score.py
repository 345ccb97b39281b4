"""The score: a piece as YAML, validated into typed models. The format is documented in
``scores/README.md``; this module is its definition.

Times in a score are score seconds, written as a number (``12.5``), as minutes and seconds
(``"1:30"``), or as bar and beat on the score's beat grid (``"b5"``, ``"b5.3"``; both 1-based).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    model_validator,
)

from conductor.core.jscheck import checker
from conductor.core.yamlcheck import InvalidFile, Loc, Problem, YamlDocument


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _matching(pattern: str, explanation: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(explanation)
        return value

    return AfterValidator(check)


Ident = Annotated[
    StrictStr,
    _matching(r"[a-z][a-z0-9_-]{0,31}", "an id is a lower-case letter, then letters, digits, - or _ (32 at most)"),
]
Color = Annotated[StrictStr, _matching(r"#[0-9a-fA-F]{6}", "a colour is written #rrggbb")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("should be a number")
    return float(value)


def _osc_arg(value: Any) -> int | float | str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("OSC arguments are numbers or strings")
    return value


Number = Annotated[float, BeforeValidator(_number)]
OscArg = Annotated[int | float | str, PlainValidator(_osc_arg)]  # int and float stay distinct for OSC

_MINSEC = re.compile(r"^(\d+):([0-5]?\d(?:\.\d+)?)$")
_BAR = re.compile(r"^b(\d+)(?:\.(\d+(?:\.\d+)?))?$")


def _score_time(value: Any, info: ValidationInfo) -> float:
    if isinstance(value, bool):
        raise ValueError("a time is a number of seconds, 'M:SS' or 'bBAR.BEAT'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _MINSEC.match(value.strip())):
        seconds = int(m[1]) * 60 + float(m[2])
    elif isinstance(value, str) and (m := _BAR.match(value.strip())):
        grid = (info.context or {}).get("tempo") or Tempo()
        bar, beat = int(m[1]), float(m[2] or 1)
        if bar < 1 or not 1 <= beat < grid.beats_per_bar + 1:
            raise ValueError(f"bars count from 1 and beats from 1 to {grid.beats_per_bar}")
        seconds = ((bar - 1) * grid.beats_per_bar + beat - 1) * 60.0 / grid.bpm
    else:
        raise ValueError("a time is a number of seconds, 'M:SS' or 'bBAR.BEAT'")
    if seconds < 0:
        raise ValueError("a time cannot be negative")
    return seconds


Time = Annotated[float, BeforeValidator(_score_time)]


class Tempo(Strict):
    bpm: Annotated[Number, Field(gt=0, le=600)] = 60
    beats_per_bar: Annotated[StrictInt, Field(ge=1, le=32)] = 4


class Aligned(Strict):
    aligned: Ident  # the site whose listeners hear every site's sound together


# How cues are timed across sites: "together" (every site at the same conductor time), "immediate"
# (no lookahead: each node plays a cue when it arrives) or {aligned: SITE}.
Schedule = Literal["together", "immediate"] | Aligned
# What a node does with a cue that reaches it after its time.
Late = Literal["play", "skip", "next_beat"]


class Section(Strict):
    id: Ident
    name: StrictStr | None = None
    start: Time
    schedule: Schedule | None = None  # for the cues in this section
    late: Late | None = None


class NSet(Strict):
    """Where a parameter sounds: ``/n_set`` of a synth control on the group of each part's nodes."""

    control: Annotated[StrictStr, _matching(r"[A-Za-z_][A-Za-z0-9_]{0,31}", "a synth control name")]
    parts: list[Ident] | None = None  # default: every part
    # The parameter's min..max maps onto [low, high]; without it, the value is sent as it is.
    range: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = None


class Parameter(Strict):
    id: Ident
    min: Number = 0.0
    max: Number = 1.0
    default: Number = 0.0
    label: StrictStr | None = None
    n_set: NSet | None = None
    schedule: Schedule | None = None  # how its changes are timed across sites; default: the score's

    def check(self, value: float) -> str | None:
        if not self.min <= value <= self.max:
            return f"{self.id} must be between {self.min:g} and {self.max:g}"
        return None

    def synth_value(self, value: float) -> float:
        """The value a synth control gets: scaled onto ``n_set.range`` when one is given."""
        if self.n_set is None or self.n_set.range is None:
            return value
        lo, hi = self.n_set.range
        return lo + (value - self.min) / (self.max - self.min) * (hi - lo)

    @model_validator(mode="after")
    def _range(self) -> Parameter:
        if self.min >= self.max:
            raise ValueError("max must be greater than min")
        if self.check(self.default):
            raise ValueError(f"default must be between {self.min:g} and {self.max:g}")
        return self


# --- graphic layers -------------------------------------------------------------------------

Area = tuple[Fraction, Fraction, Fraction, Fraction]  # x, y, width, height as fractions of the view


class Shape(Strict):
    """A mark on the scrolling timeline. y runs from 0 (top) to 1 (bottom)."""

    shape: Literal["bar", "line", "dot", "wave", "label"]
    start: Time
    end: Time | None = None  # all shapes but dot and label span start..end
    y: Fraction = 0.5
    to_y: Fraction | None = None  # line: glissando to this height
    height: Annotated[float, Field(gt=0, le=1)] = 0.08  # bar thickness, dot size, wave amplitude
    cycles: Annotated[float, Field(gt=0, le=200)] = 4  # wave
    color: Color | None = None
    text: StrictStr | None = None  # label, or a caption on any shape

    @model_validator(mode="after")
    def _span(self) -> Shape:
        if self.shape in ("dot", "label"):
            if self.end is not None:
                raise ValueError(f"a {self.shape} has a start only")
            if self.shape == "label" and not self.text:
                raise ValueError("a label needs text")
        elif self.end is None:
            raise ValueError(f"a {self.shape} needs an end")
        elif self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class TimelineLayer(Strict):
    type: Literal["timeline"]
    window: Annotated[float, Field(gt=0, le=600)] = 20.0  # seconds visible across the view
    playhead: Fraction = 0.25  # where "now" sits, from the left
    area: Area = (0.0, 0.15, 1.0, 0.7)
    shapes: list[Shape] = []


class TextItem(Strict):
    start: Time
    end: Time
    text: StrictStr
    size: Annotated[float, Field(gt=0, le=1)] = 0.05  # height as a fraction of the view

    @model_validator(mode="after")
    def _span(self) -> TextItem:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class TextLayer(Strict):
    type: Literal["text"]
    area: Area = (0.0, 0.85, 1.0, 0.15)
    items: list[TextItem] = []


class CountdownLayer(Strict):
    type: Literal["countdown"]
    area: Area = (0.75, 0.0, 0.25, 0.15)
    warn: Annotated[float, Field(ge=0)] = 10.0  # seconds before the next section to start counting


class SketchLayer(Strict):
    type: Literal["sketch"]
    src: StrictStr  # a p5.js sketch file, relative to the score
    area: Area = (0.0, 0.0, 1.0, 1.0)
    params: list[Ident] = []  # parameters the sketch reads
    # Given: a global-mode sketch (function setup(), draw(), as openprocessing.org exports it), run
    # unchanged in a sandboxed frame of its own with this p5. Absent: an ES module `(p, tutti)`.
    p5: Literal["1.x", "2.x"] | None = None


Layer = Annotated[TimelineLayer | TextLayer | CountdownLayer | SketchLayer, Field(discriminator="type")]


# --- performer controls ---------------------------------------------------------------------


class Fader(Strict):
    type: Literal["fader"]
    id: Ident
    label: StrictStr | None = None
    min: Number = 0.0
    max: Number = 1.0
    default: Number = 0.0
    param: Ident | None = None  # the parameter it moves

    @model_validator(mode="after")
    def _range(self) -> Fader:
        if self.min >= self.max or not self.min <= self.default <= self.max:
            raise ValueError("a fader needs min < max and its default between them")
        return self


class Toggle(Strict):
    type: Literal["toggle"]
    id: Ident
    label: StrictStr | None = None
    default: StrictBool = False
    param: Ident | None = None


class XY(Strict):
    type: Literal["xy"]
    id: Ident
    label: StrictStr | None = None
    default: tuple[Fraction, Fraction] = (0.5, 0.5)
    param: Ident | None = None  # x and y go to PARAM_x and PARAM_y


Control = Annotated[Fader | Toggle | XY, Field(discriminator="type")]


class Part(Strict):
    id: Ident
    name: StrictStr
    site: Ident | None = None
    color: Color = "#3b6ea8"
    layers: list[Layer] = []
    controls: list[Control] = []


# --- sound cues -----------------------------------------------------------------------------


def _target(value: str) -> str:
    kind, _, name = value.partition(":")
    if value != "all" and (kind not in ("site", "part", "node") or not name):
        raise ValueError("target is 'all', 'site:ID', 'part:ID' or 'node:NAME'")
    return value


GROUP_ARG = "$group"  # in a cue's args: the group of the cue's part on its nodes
# Part i of the score has group PART_GROUP_BASE + i on every node: below the node IDs a sclang
# allocates for its synths (1000 on), above its permanent ones (2 on).
PART_GROUP_BASE = 900
MAX_PARTS = 99


class Sound(Strict):
    """What a cue plays, and where: an OSC message for the target's nodes, with its timing rules."""

    target: Annotated[StrictStr, AfterValidator(_target)] = "all"
    to: Literal["scsynth", "sclang"] = "scsynth"
    address: Annotated[StrictStr, _matching(r"/\S+", "an OSC address starts with / and has no spaces")]
    args: list[OscArg] = []
    schedule: Schedule | None = None  # default: its section's, else the score's
    late: Late | None = None


class Cue(Sound):
    at: Time  # in the score


class Score(Strict):
    title: StrictStr
    composer: StrictStr | None = None
    duration: Annotated[Time, Field(gt=0)]
    tempo: Tempo = Tempo()
    sites: list[Ident] | None = None  # if given, every part's site must be one of these
    parts: Annotated[list[Part], Field(min_length=1, max_length=MAX_PARTS)]
    sections: list[Section] = []
    parameters: list[Parameter] = []
    cues: list[Cue] = []
    schedule: Schedule = "together"
    late: Late = "play"
    count_in: Annotated[StrictInt, Field(ge=0, le=8)] = 0  # bars of clicks before a play from a standstill

    def part(self, part_id: str) -> Part | None:
        return next((p for p in self.parts if p.id == part_id), None)

    def section(self, section_id: str) -> Section | None:
        return next((s for s in self.sections if s.id == section_id), None)

    def parameter(self, param_id: str) -> Parameter | None:
        return self._parameters.get(param_id)

    @functools.cached_property
    def _parameters(self) -> dict[str, Parameter]:  # looked up for every value a fader sends
        return {p.id: p for p in self.parameters}

    def policy(self, cue: Sound) -> tuple[Schedule, Late]:
        """How a cue is timed and what a late one does: its own, its section's (for a cue in the
        score), or the score's."""
        at = cue.at if isinstance(cue, Cue) else None
        section = next((s for s in reversed(self.sections) if at is not None and s.start <= at), None)
        schedule = cue.schedule or (section.schedule if section else None) or self.schedule
        late = cue.late or (section.late if section else None) or self.late
        return schedule, late

    def group(self, part_id: str) -> int:
        """The scsynth group that holds a part's sound on its nodes (created by the node agent)."""
        return self._groups[part_id]

    @functools.cached_property
    def _groups(self) -> dict[str, int]:
        return {p.id: PART_GROUP_BASE + i for i, p in enumerate(self.parts)}

    def site_ids(self) -> set[str]:
        """Every site the score names: in ``sites``, or as a part's site."""
        return set(self.sites or []) | {p.site for p in self.parts if p.site}

    def schedule_problems(self, schedule: Schedule | None) -> list[tuple[Loc, str]]:
        if isinstance(schedule, Aligned) and schedule.aligned not in self.site_ids():
            return [(("schedule", "aligned"), f"no site '{schedule.aligned}' in the score")]
        return []

    def sound_problems(self, sound: Sound) -> list[tuple[Loc, str]]:
        """What in a cue or sound names something the score does not have."""
        out = self.schedule_problems(sound.schedule)
        kind, _, name = sound.target.partition(":")
        if (kind == "part" and self.part(name) is None) or (kind == "site" and name not in self.site_ids()):
            out.append((("target",), f"no {kind} '{name}' in the score"))
        if GROUP_ARG in sound.args and kind != "part":
            out.append((("args",), f"'{GROUP_ARG}' is a part's group: give the cue a target part:ID"))
        return out

    def cue_args(self, cue: Sound) -> list[int | float | str]:
        """A cue's OSC arguments, with ``$group`` replaced by its part's group."""
        _, _, part = cue.target.partition(":")
        return [self.group(part) if arg == GROUP_ARG else arg for arg in cue.args]


class LoadedScore:
    """A validated score with where it came from: its file, its folder (for sketches) and hash."""

    def __init__(self, path: Path, score: Score, sha256: str):
        self.path = path
        self.score = score
        self.sha256 = sha256
        # The sketch files as they were when this version was checked: what pages are served, so that
        # a broken edit (refused by `tutti serve --watch`) never reaches a page that loads meanwhile.
        self.sources = {name: (self.folder / name).read_bytes() for name in sorted(self.files())}
        # Each one's version (the start of its hash): a page runs a sketch again when it changes.
        self.file_versions = {name: hashlib.sha256(data).hexdigest()[:12] for name, data in self.sources.items()}

    @property
    def version(self) -> str:
        """Which version of the score this is (the start of its hash): journalled with each change."""
        return self.sha256[:12]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def to_json(self) -> dict[str, Any]:
        return self.score.model_dump(mode="json")

    def files(self) -> set[str]:
        """Files beside the score that it names (sketches), as written in the score."""
        return {layer.src for part in self.score.parts for layer in part.layers if isinstance(layer, SketchLayer)}


def load_score(path: Path | str) -> LoadedScore:
    """Load and validate a score; raise InvalidFile listing every problem as file:line: field."""
    path = Path(path)
    doc = YamlDocument(path)
    tempo = Tempo()
    if isinstance(doc.data, dict) and isinstance(doc.data.get("tempo"), dict):
        # bar-and-beat times need the grid; a broken tempo is reported by the full validation
        with contextlib.suppress(ValueError):
            tempo = Tempo.model_validate(doc.data["tempo"])
    score = doc.validate(Score, context={"tempo": tempo})
    problems = [doc.problem(loc, msg) for loc, msg in _cross_checks(score, path.parent)]
    if problems:
        raise InvalidFile(problems)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedScore(path, score, sha)


_PARSED: dict[tuple[str, bool], str | None] = {}  # (file's hash, global mode) -> why it does not parse
PARSED_KEPT = 256


def _parse_error(node: str, source: bytes, script: bool) -> str | None:
    """Why a sketch does not parse (node's line and error), or None. Remembered by content: with
    ``tutti serve --watch`` only the file just edited is checked, by the long-lived checker; node
    --check runs only for a file it does not pass, to say why as node does."""
    key = (hashlib.sha256(source).hexdigest(), script)
    if key in _PARSED:
        return _PARSED[key]
    if checker(node).parses(source, script):
        error = None
    else:
        run = subprocess.run(
            [node, f"--input-type={'commonjs' if script else 'module'}", "--check"],
            input=source,
            capture_output=True,
            timeout=30,
            check=False,
        )
        lines = run.stderr.decode(errors="replace").splitlines()
        where = lines[0].removeprefix("[stdin]:") if lines else "?"
        why = next((line for line in lines if "Error" in line), "does not parse")
        error = f"line {where}: {why}" if run.returncode else None
    if len(_PARSED) >= PARSED_KEPT:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[key] = error
    return error


def sketch_problems(loaded: LoadedScore) -> list[Problem]:
    """Sketch files that do not parse (checked with node), as the score's problems: a module sketch as
    an ES module, a global-mode one (``p5:`` given) as a plain script."""
    node = shutil.which("node")
    if node is None:
        return []  # ./setup.sh installs node; without it the sketches are checked on stage only
    errors = []
    for i, part in enumerate(loaded.score.parts):
        for j, layer in enumerate(part.layers):
            if layer.type != "sketch":
                continue
            # the bytes pages will be served (read with this version), not the file as it is by now
            error = _parse_error(node, loaded.sources[layer.src], layer.p5 is not None)
            if error:
                errors.append((("parts", i, "layers", j, "src"), f"{layer.src} {error}"))
    if not errors:
        return []  # the score's YAML read again only to place a problem on its line
    doc = YamlDocument(loaded.path)
    return [doc.problem(loc, message) for loc, message in errors]


def _duplicates(items: list[Any], field: str, loc: Loc) -> list[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    out = []
    for i, item in enumerate(items):
        key = getattr(item, field)
        if key in seen:
            out.append(((*loc, i, field), f"'{key}' is used twice (also {loc[-1]}[{seen[key]}])"))
        seen.setdefault(key, i)
    return out


def _cross_checks(score: Score, folder: Path) -> list[tuple[Loc, str]]:
    """Problems a field-by-field schema cannot see: references, order, spans."""
    out = _duplicates(score.parts, "id", ("parts",))
    out += _duplicates(score.sections, "id", ("sections",))
    out += _duplicates(score.parameters, "id", ("parameters",))
    parts = {p.id for p in score.parts}
    params = {p.id: p for p in score.parameters}

    def in_piece(loc: Loc, t: float) -> None:
        if t > score.duration:
            out.append((loc, f"{t:g} s is after the end of the piece ({score.duration:g} s)"))

    out += score.schedule_problems(score.schedule)
    prev = -1.0
    for i, s in enumerate(score.sections):
        in_piece(("sections", i, "start"), s.start)
        out += [(("sections", i, *loc), message) for loc, message in score.schedule_problems(s.schedule)]
        if s.start <= prev:
            out.append((("sections", i, "start"), "sections must start in order, each after the one before"))
        prev = s.start
    for i, part in enumerate(score.parts):
        loc: Loc = ("parts", i)
        if score.sites is not None and part.site is not None and part.site not in score.sites:
            out.append(((*loc, "site"), f"'{part.site}' is not one of the score's sites"))
        out += _duplicates(list(part.controls), "id", (*loc, "controls"))
        for j, layer in enumerate(part.layers):
            lloc: Loc = (*loc, "layers", j)
            if isinstance(layer, TimelineLayer):
                for k, shape in enumerate(layer.shapes):
                    sloc: Loc = (*lloc, "shapes", k)
                    in_piece((*sloc, "start"), shape.start)
                    if shape.end is not None:
                        in_piece((*sloc, "end"), shape.end)
            elif isinstance(layer, TextLayer):
                for k, item in enumerate(layer.items):
                    in_piece((*lloc, "items", k, "start"), item.start)
                    in_piece((*lloc, "items", k, "end"), item.end)
            elif isinstance(layer, SketchLayer):
                if not (folder / layer.src).is_file():
                    out.append(((*lloc, "src"), f"no sketch file '{layer.src}' next to the score"))
                for k, name in enumerate(layer.params):
                    if name not in params:
                        out.append(((*lloc, "params", k), f"no parameter '{name}' in the score"))
        for j, control in enumerate(part.controls):
            if control.param is None:
                continue
            names = [f"{control.param}_x", f"{control.param}_y"] if isinstance(control, XY) else [control.param]
            for name in names:
                if name not in params:
                    out.append(((*loc, "controls", j, "param"), f"no parameter '{name}' in the score"))
    for i, param in enumerate(score.parameters):
        out += [(("parameters", i, *loc), message) for loc, message in score.schedule_problems(param.schedule)]
        for j, name in enumerate(param.n_set.parts or [] if param.n_set else []):
            if name not in parts:
                out.append((("parameters", i, "n_set", "parts", j), f"no part '{name}' in the score"))
    for i, cue in enumerate(score.cues):
        in_piece(("cues", i, "at"), cue.at)
        out += [(("cues", i, *loc), message) for loc, message in score.sound_problems(cue)]
    return out


def score_warnings(score: Score) -> list[tuple[Loc, str]]:
    """What is valid but probably not meant: a part whose performers would see only the clock."""
    return [
        (("parts", i, "layers"), "no layers: its performers see only the clock (add a timeline, text or sketch)")
        for i, part in enumerate(score.parts)
        if not part.layers
    ]


def _when(score: Score, seconds: float) -> str:
    beats = int(seconds * score.tempo.bpm / 60 + 1e-6)
    bar, beat = divmod(beats, score.tempo.beats_per_bar)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f} (bar {bar + 1}.{beat + 1})"


def resolved_times(score: Score) -> list[str]:
    """Each section and cue with its time worked out, as minutes and seconds and as bar.beat."""
    grid = f"{score.tempo.bpm:g} bpm, {score.tempo.beats_per_bar} beats a bar"
    out = [f"{grid}; ends at {_when(score, score.duration)}"]
    out += [f"section {s.id}{f' ({s.name})' if s.name else ''} at {_when(score, s.start)}" for s in score.sections]
    out += [
        f"cue {i} at {_when(score, c.at)}: {c.target} {c.address} {' '.join(map(str, c.args))}".rstrip()
        for i, c in enumerate(score.cues)
    ]
    return out


__all__ = ["InvalidFile", "LoadedScore", "Score", "load_score", "resolved_times", "score_warnings", "sketch_problems"]
