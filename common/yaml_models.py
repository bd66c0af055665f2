"""YAML files validated by closed pydantic models, with errors an installer can act on.

Shared by profiles (:mod:`drivers.modbus.profiles`), site configs (:mod:`gateway.config`) and the
aggregator's config (:mod:`aggregator.config`), which is why it lives in :mod:`puhui`.
Every problem becomes an :class:`Issue` with a path inside the file
(``meters[3].registers[1].type``) and a message saying what was expected; enum-like values
and unknown keys get a "did you mean" suggestion (difflib). All of a file's problems are
collected, not only the first.

:func:`read_yaml` turns every way a file can be unreadable into an issue with its line and
column, never an exception: bytes that are not UTF-8, YAML syntax, nesting deeper than
:data:`MAX_NESTING`, aliases that expand beyond :data:`MAX_NODES` values or refer to
themselves, and scalars the YAML library cannot construct (a 5000-digit integer, the date
``2024-13-45``, ``!!bool maybe``).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

PathPart = str | int
MAX_NESTING = 50  # a site config nests about 6 deep
MAX_NODES = 200_000  # values after expanding aliases (a "billion laughs" file expands to 10^9)


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a file: where (path inside the file) and what was expected."""

    path: tuple[PathPart, ...]
    message: str

    @property
    def where(self) -> str:
        return format_path(self.path)

    def render(self, file: str) -> str:
        return f"{file}: {self.where}: {self.message}" if self.path else f"{file}: {self.message}"


def format_path(path: Sequence[PathPart]) -> str:
    """``('meters', 3, 'type')`` -> ``meters[3].type``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_yaml(path: Path) -> tuple[Any, list[Issue]]:
    """Parse a YAML file; any problem becomes an :class:`Issue` (with its line if known)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Issue((), f"cannot read: {exc.strerror or exc}")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = _byte_position(raw, exc.start)
        return None, [Issue((), f"{where}not UTF-8 text (byte 0x{raw[exc.start]:02x})")]
    return parse_yaml(text)


def parse_yaml(text: str) -> tuple[Any, list[Issue]]:
    """Parse YAML text with the bounds of :class:`_BoundedLoader`; problems become issues."""
    try:
        loader = _BoundedLoader(text)  # checks the characters first
    except yaml.YAMLError as exc:
        return None, [Issue((), _yaml_problem(exc, text))]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        _check_expansion(node)
        return loader.construct_document(node), []
    except yaml.YAMLError as exc:
        return None, [Issue((), _yaml_problem(exc, text))]
    finally:
        loader.dispose()


def _byte_position(raw: bytes, offset: int) -> str:
    line, column = raw.count(b"\n", 0, offset) + 1, offset - raw.rfind(b"\n", 0, offset)
    return f"line {line}, column {column}: "


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line, column = text.count("\n", 0, exc.position) + 1, exc.position - text.rfind("\n", 0, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"line {line}, column {column}: not valid YAML: character #x{code:04x} is not allowed"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}not valid YAML: {problem}"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds. Its composer recurses once per nesting level, so the
    depth is checked before each level is composed (``[`` x 5000 would otherwise raise
    RecursionError); a scalar its constructors cannot build (they raise ValueError,
    KeyError, AttributeError...) becomes a ``ConstructorError`` at the scalar's position."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_NESTING:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, _unreadable_scalar(node, exc), node.start_mark
            ) from exc


def _unreadable_scalar(node: yaml.Node, exc: Exception) -> str:
    kind = str(node.tag).rsplit(":", 1)[-1]
    value = node.value if isinstance(node.value, str) else ""
    if kind == "int" and len(value) > 100:
        return f"an integer of {len(value)} characters is too long"
    shown = repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    reason = str(exc) if isinstance(exc, ValueError) and "\n" not in str(exc) else type(exc).__name__
    return f"{shown} is not a valid {kind} ({reason})"


def _check_expansion(root: yaml.Node) -> None:
    """Refuse aliases that refer to themselves or expand beyond :data:`MAX_NODES` values."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:  # recursion bounded by MAX_NESTING
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to itself", node.start_mark)
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1 + sum(size(child) for child in children)
        if total > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"expands to more than {MAX_NODES} values (aliases)", node.start_mark
            )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def suggest(word: str, candidates: Sequence[str]) -> str | None:
    """The closest candidate to a misspelt ``word``, if any is close enough."""
    hits = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return hits[0] if hits else None


def issues_from(exc: ValidationError, model: type[BaseModel]) -> list[Issue]:
    """Turn pydantic's errors (all of them) into issues with clean paths and suggestions."""
    out: list[Issue] = []
    seen: set[tuple[PathPart, ...]] = set()
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "too_short" and _has_child_error(err["loc"], errors):
            continue  # "0 items after validation" only because the items themselves failed
        path, parent = _clean_path(err["loc"], model)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += (str((err.get("ctx") or {}).get("discriminator", "")).strip("'"),)
        if path in seen and err["type"] != "extra_forbidden":
            continue  # one message per place (union branches repeat the same failure)
        seen.add(path)
        out.append(Issue(path, _message(err, path, parent)))
    return out


def _has_child_error(loc: tuple[PathPart, ...], errors: list[ErrorDetails]) -> bool:
    n = len(loc)
    return any(len(e["loc"]) > n and e["loc"][:n] == loc for e in errors)


def _message(err: ErrorDetails, path: tuple[PathPart, ...], parent: Any) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    name = str(path[-1]) if path and isinstance(path[-1], str) else "value"
    if kind == "extra_forbidden":
        keys = _model_keys(parent)
        hint = suggest(name, keys) if keys else None
        if hint:
            return f"unknown key {name!r} ({hint}?)"
        return f"unknown key {name!r}" + (f"; expected one of: {', '.join(keys)}" if keys else "")
    if kind == "missing":
        return "required, missing"
    if kind == "union_tag_invalid":
        return _not_one_of(str(ctx.get("tag")), str(ctx.get("discriminator", "")).strip("'"), ctx)
    if kind in ("enum", "literal_error") and isinstance(value, str | int):
        return _not_one_of(value, name, ctx)
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{value!r} does not match {ctx.get('pattern')}"
    msg = str(err["msg"])
    return f"{msg} (got {value!r})" if _short(value) else msg


def _not_one_of(value: str | int, name: str, ctx: dict[str, Any]) -> str:
    raw = str(ctx.get("expected") or ctx.get("expected_tags") or "")
    choices = [c.strip().strip("'\"") for c in raw.replace(" or ", ",").split(",") if c.strip()]
    hint = suggest(str(value), choices)
    if hint:
        return f"{value!r} is not a {name} ({hint}?)"
    return f"{value!r} is not a {name}; expected one of: {', '.join(choices)}"


def _short(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 60


def _clean_path(loc: Sequence[PathPart], model: type[BaseModel]) -> tuple[tuple[PathPart, ...], Any]:
    """Drop pydantic's union-branch and tag names from ``loc``; return the path and the type
    that holds its last element (to list the keys allowed there)."""
    path: list[PathPart] = []
    tp: Any = model
    parent: Any = None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            path.append(part)
            parent, tp = tp, _item_type(tp)
            continue
        if get_origin(tp) is dict:
            path.append(part)
            parent, tp = tp, _item_type(tp)
            continue
        fields = _fields_of(tp)
        if fields is not None and part in fields:
            path.append(part)
            parent, tp = tp, fields[part]
            continue
        member = _union_member(tp, part)
        if member is not None or _is_union(tp) or tp is None:
            tp = member  # a tag or branch name pydantic inserts: not part of the file's path
            continue
        path.append(part)
        parent, tp = tp, None
    return tuple(path), parent


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    args = get_args(tp)
    if _is_union(tp) and len([a for a in args if a is not type(None)]) == 1:
        return next(a for a in args if a is not type(None))
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _item_type(tp: Any) -> Any:
    args = get_args(tp)
    if get_origin(tp) in (list, tuple, set, frozenset, Sequence) and args:
        return args[0]
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    return None


def _fields_of(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    return None


def _model_keys(tp: Any) -> list[str]:
    fields = _fields_of(_unwrap(tp))
    return sorted(fields) if fields else []


def _union_member(tp: Any, tag: PathPart) -> Any:
    """The member of a discriminated union whose literal tag is ``tag``."""
    if not _is_union(tp):
        return None
    for member in get_args(tp):
        for annotation in (_fields_of(member) or {}).values():
            if get_origin(annotation) is Literal and tag in get_args(annotation):
                return member
    return None
