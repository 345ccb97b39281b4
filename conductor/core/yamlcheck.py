"""Load YAML into pydantic models, reporting problems as ``file:line: field: message``.

Scores and concert files are written by hand, so every problem must point at the line to fix.
YAML is composed into nodes (which carry line numbers), turned into plain data while recording the
line of every key and item, and validated by pydantic; each pydantic error's location is mapped
back to the line it came from. Duplicate keys, which PyYAML silently accepts, are problems too.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=pydantic.BaseModel)
MAX_BYTES = 1_000_000  # a score or concert file larger than this is refused unread
MAX_NODES = 100_000  # values a file may hold once its aliases are expanded ("billion laughs")
MAX_DEPTH = 64  # how deep its lists and mappings may nest


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class InvalidFile(Exception):
    """A file with one or more problems; ``str()`` lists them one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.field))
        super().__init__("\n".join(map(str, self.problems)))


# PyYAML's syntax errors, as someone who writes scores would put them.
_PLAIN_YAML = (
    ("expected <block end>", "this line is indented differently from the lines around it"),
    ("did not find expected key", "this line is indented differently from the keys above it"),
    ("did not find expected '-' indicator", "this list item is not lined up with the items above it"),
    ("mapping values are not allowed here", "a ': ' where YAML does not expect one (put text with ': ' in quotes)"),
    ("could not find expected ':'", "a line with no 'key: value' where one is expected (a missing ':'?)"),
    ("found character '\\t'", "a tab: indent with spaces"),
    ("found unexpected end of stream", "a quote is opened and never closed"),
    ("expected ',' or ']'", "a [list] is not closed, or its items are not separated by commas"),
    ("expected ',' or '}'", "a {mapping} is not closed, or its entries are not separated by commas"),
    ("found undefined alias", "a *name with no &name before it"),
)


def plain_yaml(message: str) -> str:
    for start, plain in _PLAIN_YAML:
        if message.startswith(start):
            return plain
    return message


class _Extent:
    """How many values a composed YAML document holds with its aliases expanded, and how deep it nests.

    An alias is a reference, so a few hundred bytes can stand for billions of values; each node is
    measured once (aliases share nodes), so this is quick whatever the expansion would be.
    """

    def __init__(self, name: str):
        self.name = name
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth)
        self.open: set[int] = set()

    def check(self, node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        line = node.start_mark.line + 1
        if key in self.open:
            raise InvalidFile([Problem(self.name, line, "(syntax)", "an alias refers to the value that holds it")])
        if depth > MAX_DEPTH:
            raise InvalidFile([Problem(self.name, line, "(syntax)", f"nested more than {MAX_DEPTH} deep")])
        self.open.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        values, deepest = 1, 0
        for child in children:
            n, d = self.check(child, depth + 1)
            values, deepest = values + n, max(deepest, d + 1)
            if values > MAX_NODES:
                message = f"more than {MAX_NODES:,} values once its aliases are expanded"
                raise InvalidFile([Problem(self.name, line, "(syntax)", message)])
            if deepest + depth > MAX_DEPTH:
                raise InvalidFile([Problem(self.name, line, "(syntax)", f"nested more than {MAX_DEPTH} deep")])
        self.open.discard(key)
        self.sizes[key] = (values, deepest)
        return values, deepest


def field_name(loc: Loc) -> str:
    """``('parts', 0, 'layers')`` -> ``parts[0].layers``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class YamlDocument:
    """Plain data from one YAML file, with the line of every key and list item."""

    def __init__(self, path: Path | str, text: str | None = None):
        self.path = Path(path)
        self.name = str(path)
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        too_large = f"larger than {MAX_BYTES:,} bytes: a score or concert file is far smaller"
        if text is None:
            try:
                if self.path.stat().st_size > MAX_BYTES:
                    raise InvalidFile([Problem(self.name, 1, "(file)", too_large)])
                text = self.path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise InvalidFile([Problem(self.name, 1, "(file)", f"cannot read: {e}")]) from e
        if len(text) > MAX_BYTES:
            raise InvalidFile([Problem(self.name, 1, "(file)", too_large)])
        try:
            self._loader = yaml.SafeLoader(text)
            try:
                try:
                    node = self._loader.get_single_node()
                except RecursionError:
                    line = self._loader.get_mark().line + 1
                    raise InvalidFile(
                        [Problem(self.name, line, "(syntax)", f"nested more than {MAX_DEPTH} deep")]
                    ) from None
                if node is not None:
                    _Extent(self.name).check(node, 0)
                self.data = self._build(node, ()) if node is not None else {}
            finally:
                self._loader.dispose()
        except yaml.MarkedYAMLError as e:  # syntax, and scalars no constructor takes (a bare "=")
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            where = f"column {mark.column + 1}: " if mark else ""
            raise InvalidFile([Problem(self.name, line, "(syntax)", where + plain_yaml(str(e.problem or e)))]) from e
        except yaml.reader.ReaderError as e:  # a control character YAML does not allow
            line = text[: e.position].count("\n") + 1
            message = f"character {e.character:#x} is not allowed"
            raise InvalidFile([Problem(self.name, line, "(syntax)", message)]) from e
        self.lines.setdefault((), 1)

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            self._loader.flatten_mapping(node)  # resolve YAML merge keys (<<)
            out: dict[Any, Any] = {}
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self._loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    self.problems.append(Problem(self.name, line, field_name(loc), "keys must be plain words"))
                    continue
                if key in first_line:
                    self.problems.append(
                        Problem(
                            self.name,
                            line,
                            field_name((*loc, str(key))),
                            f"duplicate key (first given at line {first_line[key]})",
                        )
                    )
                first_line[key] = line
                self.lines[(*loc, key)] = line
                out[key] = self._build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*loc, i)] = item.start_mark.line + 1
                items.append(self._build(item, (*loc, i)))
            return items
        return self._loader.construct_object(node, deep=True)

    def line_of(self, loc: Loc) -> tuple[int, Loc]:
        """The line of the deepest part of ``loc`` present in the data, and that data path.

        Pydantic inserts union tags and validator names into locations; they are not in the
        data, so they are skipped.
        """
        data: Any = self.data
        path: Loc = ()
        for part in loc:
            in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
            if in_list or (isinstance(data, dict) and part in data):
                data = data[part]
                path = (*path, part)
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path], path

    def data_at(self, path: Loc) -> Any:
        data: Any = self.data
        for part in path:
            data = data[part]
        return data

    def problem(self, loc: Loc, message: str) -> Problem:
        line, path = self.line_of(loc)
        # Name the field by its place in the data (pydantic adds union tags to locations), plus a
        # last part that is not in the data: a missing or unknown field.
        parent = self.data_at(path)
        if len(path) < len(loc) and isinstance(parent, dict) and isinstance(loc[-1], str) and loc[-1] not in parent:
            path = (*path, loc[-1])
        return Problem(self.name, line, field_name(path), message)

    def validate(self, model: type[M], context: dict[str, Any] | None = None) -> M:
        """Validate the data against ``model``; raise InvalidFile with every problem found."""
        problems = list(self.problems)
        result = None
        try:
            result = model.model_validate(self.data, context=context)
        except pydantic.ValidationError as e:
            problems += [self._explain(model, err) for err in e.errors(include_url=False)]
        if problems or result is None:
            raise InvalidFile(problems)
        return result

    def _explain(self, model: type[pydantic.BaseModel], err: Any) -> Problem:
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            _, parent = self.line_of(loc[:-1])
            known = _known_fields(model, parent, self.data_at(parent))
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = f"unknown field '{loc[-1]}'"
            message += f" (did you mean '{hint[0]}'?)" if hint else f" (expected one of: {', '.join(known)})"
            return self.problem(loc, message)
        if kind == "missing":
            return self.problem(loc, "required field is missing")
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx", {})
            expected = ctx.get("expected_tags") or ", ".join(repr(k) for k in _known_tags(model, loc))
            got = f"unknown type '{ctx['tag']}'" if "tag" in ctx else "a 'type' field is needed"
            return self.problem((*loc, "type"), f"{got} (expected one of: {expected})")
        message = err["msg"]
        if kind.startswith("value_error") or kind == "assertion_error":
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if "input" in err and kind not in ("missing",) and _short(err["input"]):
            message += f" (got {err['input']!r})"
        return self.problem(loc, message)


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 40


def _known_fields(model: type[pydantic.BaseModel], path: Loc, data: Any) -> list[str]:
    """Field names of the model found at ``path`` (following lists, dicts and tagged unions)."""
    target: Any = model
    for part in path:
        target = _descend(target, part)
    for member in _models(target):
        tag = member.model_fields.get("type")
        if tag is None or not isinstance(data, dict) or data.get("type") in typing.get_args(tag.annotation):
            return list(member.model_fields)
    return []


def _known_tags(model: type[pydantic.BaseModel], loc: Loc) -> list[str]:
    target: Any = model
    for part in loc:
        target = _descend(target, part)
    return [
        str(t)
        for m in _models(target)
        if "type" in m.model_fields
        for t in typing.get_args(m.model_fields["type"].annotation)
    ]


def _models(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The models an annotation may stand for: itself, or the members of a union."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _descend(annotation: Any, part: str | int) -> Any:
    """The annotation of ``part`` inside a value of type ``annotation``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _descend(args[0], part)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and args:
        return args[1]
    for model in _models(annotation):
        if (field := model.model_fields.get(str(part))) is not None:
            return field.annotation
    return None


def load(path: Path | str, model: type[M], context: dict[str, Any] | None = None) -> tuple[M, YamlDocument]:
    doc = YamlDocument(path)
    return doc.validate(model, context), doc
