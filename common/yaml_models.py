"""YAML files validated by closed pydantic models, with errors an installer can act on.

Shared by profiles (:mod:`drivers.modbus.profiles`), site configs (:mod:`gateway.config`) and the
aggregator's config (:mod:`aggregator.config`), which is why it lives in :mod:`puhui`.
Every problem becomes an :class:`Issue` with a path inside the file
(``meters[3].registers[1].type``) and a message saying what was expected; enum-like values
and unknown keys get a "did you mean" suggestion (difflib). All of a file's problems are
collected, not only the first.
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
    """Parse a YAML file; a syntax error becomes an :class:`Issue` with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Issue((), f"cannot read: {exc.strerror or exc}")]
    try:
        return yaml.safe_load(text), []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [Issue((), f"{where}not valid YAML: {problem}")]


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
