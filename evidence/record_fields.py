"""A record's fields as they travel, read from its one declaration, and the encoder made from them.

A record type is declared once, as a frozen dataclass (:class:`evidence.records.IntervalRecord`):
its fields in key order, each with a type that has a wire form (:data:`Form`). :func:`wire_fields`
reads that declaration; everything else that must agree with it is derived from the result: the
canonical encoder (:func:`compile_encoder`), the JSON form (:func:`to_builtins`), the reference
decoder's checks (``evidence.records``) and the aggregator's msgspec structs
(``aggregator.records``). Adding a field is one line in the dataclass, and its row in
docs/evidence-format.md (a test holds the two equal).

The encoder is generated code, as :mod:`dataclasses` generates ``__init__``: one %-format per
record with no call per field, which a loop over the fields cannot match on the sealing hot
path. :func:`encoder_source` shows the code.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

Form = Literal["text", "integer", "count", "number", "choice", "choice_list", "object"]
"""How a field travels: a JSON string, integer, integer >= 0, number (always written as a
float), one string of a closed set (``Literal``), a sorted list of such strings (a tuple of a
``Literal``), or a nested object (a dataclass)."""

Count = Annotated[int, ">= 0"]
"""An integer that is never negative (``samples``, ``expected``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class WireField:
    """One key of a record: its name, form, whether it may be ``null``, and the declared type."""

    name: str
    form: Form
    type: Any  # the declared type without ``| None``: str, float, a Literal, a dataclass...
    nullable: bool = False
    choices: tuple[str, ...] = ()  # "choice" and "choice_list": the strings allowed
    members: tuple[WireField, ...] = ()  # "object": its keys, in order


def wire_fields(cls: type[Any]) -> tuple[WireField, ...]:
    """The wire fields of the dataclass ``cls``, in declaration (= key) order.

    Raises :class:`TypeError` naming the field whose type has no wire form.
    """
    hints = get_type_hints(cls, include_extras=True)
    return tuple(_wire_field(cls, f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _wire_field(cls: type[Any], name: str, hint: Any) -> WireField:
    nullable = False
    args = get_args(hint)
    if get_origin(hint) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        (hint,) = [a for a in args if a is not type(None)]
        nullable = True
    simple: dict[Any, Form] = {str: "text", int: "integer", Count: "count", float: "number"}
    if hint in simple:
        return WireField(name, simple[hint], hint, nullable)
    if _is_choice(hint):
        return WireField(name, "choice", hint, nullable, get_args(hint))
    args = get_args(hint)
    if get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis and _is_choice(args[0]):
        return WireField(name, "choice_list", hint, nullable, get_args(args[0]))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return WireField(name, "object", hint, nullable, members=wire_fields(hint))
    raise TypeError(f"{cls.__name__}.{name}: type {hint!r} has no wire form (see evidence.record_fields)")


def _is_choice(hint: Any) -> bool:
    return get_origin(hint) is Literal and all(isinstance(a, str) for a in get_args(hint))


def to_builtins(value: Any, fields: tuple[WireField, ...]) -> dict[str, Any]:
    """``value``'s fields as JSON-ready builtins, in key order (a choice list sorted)."""
    out: dict[str, Any] = {}
    for f in fields:
        v = getattr(value, f.name)
        if v is not None and f.form == "object":
            v = to_builtins(v, f.members)
        elif v is not None and f.form == "choice_list":
            v = sorted(v)
        out[f.name] = v
    return out


# -- the encoder ---------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "null"
    if not math.isfinite(x):
        raise ValueError("not finite")
    return float.__repr__(float(x))


@dataclasses.dataclass(frozen=True, slots=True)
class _Code:
    """How the generated encoder writes one field, on the fast path and the general one."""

    fast_fmt: str
    fast_args: tuple[str, ...]
    general_fmt: str
    general_args: tuple[str, ...]
    guards: tuple[str, ...] = ()  # all true: the fast path applies
    floats: tuple[str, ...] = ()  # their sum must be finite on the fast path


def _code(f: WireField, x: str) -> _Code:
    """How to write ``f``, whose value is the Python expression ``x``."""
    code = _code_present(f, x)
    if not f.nullable or f.form == "number":  # _num writes None as null; the float guard excludes it
        return code
    if code.general_fmt == "%s" and len(code.general_args) == 1:
        present = code.general_args[0]
    else:
        present = f"{code.general_fmt!r} % ({', '.join(code.general_args)},)"
    guard = {
        "text": f"type({x}) is str",
        "choice": f"type({x}) is str",
        "integer": f"type({x}) is int",
        "count": f"type({x}) is int",
    }.get(f.form, f"{x} is not None")
    general = f'("null" if {x} is None else {present})'
    return _Code(code.fast_fmt, code.fast_args, "%s", (general,), (guard, *code.guards), code.floats)


def _code_present(f: WireField, x: str) -> _Code:
    if f.form in ("text", "choice"):
        return _Code("%s", (f"es({x})",), "%s", (f"es({x})",))
    if f.form in ("integer", "count"):
        return _Code("%d", (x,), "%d", (x,))
    if f.form == "number":
        return _Code("%r", (x,), "%s", (f"_num({x})",), (f"type({x}) is float",), (x,))
    if f.form == "choice_list":
        joined = f'(",".join([es(s) for s in sorted({x})]) if {x} else "")'
        return _Code("[%s]", (joined,), "[%s]", (joined,))
    parts = [_code(m, f"{x}.{m.name}") for m in f.members]  # "object"
    keys = [f'"{m.name}":' for m in f.members]
    fast_fmt = "{" + ",".join(k + p.fast_fmt for k, p in zip(keys, parts, strict=True)) + "}"
    general_fmt = "{" + ",".join(k + p.general_fmt for k, p in zip(keys, parts, strict=True)) + "}"
    general_args = tuple(a for p in parts for a in p.general_args)
    return _Code(
        fast_fmt,
        tuple(a for p in parts for a in p.fast_args),
        "%s",
        (f"({general_fmt!r} % ({', '.join(general_args)},))",),
        tuple(g for p in parts for g in p.guards),
        tuple(v for p in parts for v in p.floats),
    )


def encoder_source(tag: str, fields: tuple[WireField, ...]) -> str:
    """The source of the encoder :func:`compile_encoder` makes: compact JSON with the keys
    ``type`` (= ``tag``), then ``fields`` in order. The fast path takes records whose every
    field is present and whose numbers are finite floats; the general path writes ``null``
    and converts ints to floats, and raises :class:`ValueError` on NaN or infinity."""
    names = [f"v{i}" for i in range(len(fields))]
    parts = [_code(f, v) for f, v in zip(fields, names, strict=True)]
    head = '{"type":' + encode_basestring_ascii(tag) + ","
    keys = [f'"{f.name}":' for f in fields]
    fast = head + ",".join(k + p.fast_fmt for k, p in zip(keys, parts, strict=True)) + "}"
    general = head + ",".join(k + p.general_fmt for k, p in zip(keys, parts, strict=True)) + "}"
    guards = [g for p in parts for g in p.guards]
    floats = [v for p in parts for v in p.floats]
    if floats:
        guards.append(f"isfinite({' + '.join(floats)})")
    fast_args = ", ".join(a for p in parts for a in p.fast_args)
    general_args = ", ".join(a for p in parts for a in p.general_args)
    lines = [f"FAST = {fast!r}", f"GENERAL = {general!r}", "", "", f"def encode_{tag}(r):"]
    lines += [f"    {v} = r.{f.name}" for f, v in zip(fields, names, strict=True)]
    if guards:
        lines += ["    if (", *(f"        {'and ' if i else ''}{g}" for i, g in enumerate(guards)), "    ):"]
        lines.append(f"        return (FAST % ({fast_args},)).encode('ascii')")
    lines.append(f"    return (GENERAL % ({general_args},)).encode('ascii')")
    return "\n".join(lines) + "\n"


def compile_encoder(tag: str, fields: tuple[WireField, ...]) -> Callable[[Any], bytes]:
    """The canonical encoder of records with these fields (see :func:`encoder_source`).

    Its bytes equal the compact JSON encoder's on :func:`to_builtins` plus ``type`` (ASCII
    only, floats always in float form: ``0.0``, never ``0``), at about half the cost.
    """
    namespace: dict[str, Any] = {"es": encode_basestring_ascii, "isfinite": math.isfinite, "_num": _num}
    exec(compile(encoder_source(tag, fields), f"<{tag} encoder>", "exec"), namespace)
    encode: Callable[[Any], bytes] = namespace[f"encode_{tag}"]
    return encode


# -- the batch encoder -----------------------------------------------------------------------
#
# msgspec writes a dataclass's fields in declaration order, compact, in C: the canonical bytes
# for every record whose values it spells as the encoder above does. The guard admits only
# those: strings (ASCII, nothing to escape: checked on the output), ints that are ints (not bools),
# finite floats written without an exponent (repr uses one below 1e-4 and from 1e16, msgspec
# spells it differently), nested objects of their exact declared class, no flags. Every other
# record goes through the generated encoder, whose bytes are the definition.

_PLAIN = "(1e-4 <= {x} < 1e16 or -1e16 < {x} <= -1e-4 or {x} == 0.0)"


def _guard(f: WireField, x: str) -> str:
    if f.form in ("text", "choice"):
        g = f"type({x}) is str"
    elif f.form in ("integer", "count"):
        g = f"type({x}) is int"
    elif f.form == "number":
        g = f"type({x}) is float and {_PLAIN.format(x=x)}"
    elif f.form == "choice_list":
        return f"{x} == ()"  # a () or None spelled as msgspec spells it: a [] only
    else:  # "object"
        members = " and ".join(_guard(m, f"{x}.{m.name}") for m in f.members)
        g = f"type({x}) is {f.type.__name__} and {members}"
    return f"({x} is None or ({g}))" if f.nullable else f"({g})"


def plain_guard_source(cls: type[Any], fields: tuple[WireField, ...]) -> str:
    """The source of the guard :func:`compile_batch_encoder` uses: for a record whose msgspec
    bytes (before the output checks) equal the canonical encoder's, its values in a msgspec
    struct (``W`` and ``W_<field>`` for nested objects); None for any other record."""
    names = [f"v{i}" for i in range(len(fields))]
    lines = ["def plain(r):", f"    if type(r) is not {cls.__name__}:", "        return None"]
    lines += [f"    {v} = r.{f.name}" for f, v in zip(fields, names, strict=True)]
    guards = [_guard(f, v) for f, v in zip(fields, names, strict=True)]
    lines += ["    if (", *(f"        {'and ' if i else ''}{g}" for i, g in enumerate(guards)), "    ):"]
    values = ", ".join(_struct_value(f, v) for f, v in zip(fields, names, strict=True))
    lines += [f"        return W({values})", "    return None"]
    return "\n".join(lines) + "\n"


def _struct_value(f: WireField, x: str) -> str:
    if f.form != "object":
        return x
    members = ", ".join(_struct_value(m, f"{x}.{m.name}") for m in f.members)
    value = f"W_{f.name}({members})"
    return f"(None if {x} is None else {value})" if f.nullable else value


def _structs(tag: str | None, name: str, fields: tuple[WireField, ...], into: dict[str, Any]) -> type[Any]:
    import msgspec

    for f in fields:
        if f.form == "object":
            into[f"W_{f.name}"] = _structs(None, f"W_{f.name}", f.members, into)
    kw: dict[str, Any] = {"tag": tag, "tag_field": "type"} if tag else {}
    return msgspec.defstruct(name, [(f.name, Any) for f in fields], gc=False, **kw)


def compile_batch_encoder(
    tag: str, cls: type[Any], fields: tuple[WireField, ...], encode_one: Callable[[Any], bytes]
) -> Callable[[Sequence[Any]], list[bytes]]:
    """``[encode_one(r) for r in records]``, the same bytes, at a fraction of the cost when
    most records are plain (see the comment above): their values are encoded by msgspec in
    one call, the other records one by one by ``encode_one``."""
    import msgspec  # only the sealing path needs it

    namespace: dict[str, Any] = {cls.__name__: cls}
    namespace.update({f.type.__name__: f.type for f in _objects(fields)})
    namespace["W"] = _structs(tag, f"{cls.__name__}Wire", fields, namespace)
    exec(compile(plain_guard_source(cls, fields), f"<{tag} plain guard>", "exec"), namespace)
    plain: Callable[[Any], Any] = namespace["plain"]
    lines = msgspec.json.Encoder().encode_lines

    def encode_many(records: Sequence[Any]) -> list[bytes]:
        wire = [plain(r) for r in records]
        fast = [w for w in wire if w is not None]
        if not fast:
            return [encode_one(r) for r in records]
        try:
            data = lines(fast)
        except (msgspec.EncodeError, OverflowError, TypeError, ValueError):  # an int beyond 64 bits
            return [encode_one(r) for r in records]
        if not data.isascii() or b"\\" in data or b"\x7f" in data:  # a string spelled otherwise
            return [encode_one(r) for r in records]
        encoded = data.split(b"\n")
        encoded.pop()  # after the last newline
        if len(fast) == len(records):
            return encoded
        it = iter(encoded)
        return [encode_one(r) if w is None else next(it) for r, w in zip(records, wire, strict=True)]

    return encode_many


def _objects(fields: tuple[WireField, ...]) -> list[WireField]:
    out = [f for f in fields if f.form == "object"]
    return out + [m for f in out for m in _objects(f.members)]
