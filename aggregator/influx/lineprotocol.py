"""InfluxDB 1.x line protocol encoder.

One line per point: ``measurement[,tag=value...] field=value[,field=value...] time_ns``.

Escaping, as the line protocol reference specifies:

- measurement: ``,`` and space;
- tag keys, tag values, field keys: ``,``, ``=`` and space;
- string field values: ``"`` and ``\\`` (the value is wrapped in double quotes).

Floats are written with ``repr`` (shortest exact form, so they round-trip), integers with
the ``i`` suffix, booleans as ``true``/``false``. Tags are sorted by key, the order the
server stores series keys in, which saves it a sort per point.

Refused with :class:`LineProtocolError` (checked against InfluxDB 1.6.7):

- NaN and infinite floats (the server has no representation for them);
- integers outside int64, timestamps outside [-2**63 + 2, 2**63 - 2] ns (the server's range);
- an empty measurement, tag key, tag value or field key, and an empty field set;
- names (measurement, tag keys and values, field keys) containing a newline or a carriage
  return (they end the line), NUL (the parser skips it as whitespace and InfluxQL reads it
  as the end of the query, so such a name could not even be queried), or ending in a
  backslash (it would escape the separator that follows, and the server then misparses
  or rejects the line);
- in measurements and field keys, a backslash right before ``,``, ``=``, space or ``"``:
  the server's scanners for these treat ``\\x`` pairs as escapes and its unescaping also
  drops the backslash of ``\\=`` and ``\\"``, so no encoding round-trips (tag keys and
  values have no such problem: only a trailing backslash is refused there);
- a measurement starting with ``#`` (the server takes the line for a comment and silently
  drops it);
- a measurement or field key starting with a tab (the server skips leading tabs there, so
  ``"\\tx"`` would be stored as ``"x"``; tag keys and values keep them);
- tag or field keys named ``time`` (the server drops such fields and rejects such tags);
- text that is not encodable as UTF-8 (lone surrogates).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral

import msgspec

from aggregator.influx.errors import LineProtocolError

FieldValue = float | int | bool | str

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TIME_MIN_NS = INT64_MIN + 2  # models.MinNanoTime in InfluxDB 1.x
TIME_MAX_NS = INT64_MAX - 1  # models.MaxNanoTime

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})
_BACKSLASH_BEFORE_SPECIAL = re.compile(r'\\[,= "]')
_CACHE_LIMIT = 100_000  # escaped names kept per kind; cleared whole when exceeded


@dataclass(frozen=True, slots=True)
class Point:
    """One point to write: nanosecond timestamp, tags (strings) and at least one field."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int


def _bad_name(name: object, what: str, *, strict_backslash: bool) -> str | None:
    """Why ``name`` cannot be a measurement, key or tag value, or None if it can."""
    if not isinstance(name, str):
        return f"{what} must be a str, not {type(name).__name__}"
    if not name:
        return f"{what} is empty"
    if "\n" in name or "\r" in name:
        return f"{what} {name!r} contains a line break"
    if "\x00" in name:
        return f"{what} {name!r} contains NUL, which InfluxDB cannot parse or query"
    if name.endswith("\\"):
        return f"{what} {name!r} ends with a backslash, which line protocol cannot represent"
    if strict_backslash and _BACKSLASH_BEFORE_SPECIAL.search(name):
        return (
            f'{what} {name!r} has a backslash before one of , = space ", which InfluxDB '
            "1.x reads as an escape in measurements and field keys"
        )
    return None


class _Escaper:
    """Validates and escapes one kind of name, remembering the names already seen."""

    __slots__ = ("_cache", "_leading_tab_ok", "_reserved", "_strict_backslash", "_table", "_what")

    def __init__(
        self,
        what: str,
        table: dict[int, str],
        reserved: frozenset[str],
        *,
        strict_backslash: bool,
        leading_tab_ok: bool = True,
    ) -> None:
        self._what = what
        self._table = table
        self._reserved = reserved
        self._leading_tab_ok = leading_tab_ok
        self._strict_backslash = strict_backslash
        self._cache: dict[str, str] = {}

    def __call__(self, name: str, measurement: str) -> str:
        escaped = self._cache.get(name)
        if escaped is not None:
            return escaped
        problem = _bad_name(name, self._what, strict_backslash=self._strict_backslash)
        if problem is None and name in self._reserved:
            problem = f"{self._what} {name!r} is reserved by InfluxDB"
        if problem is None and not self._leading_tab_ok and name.startswith("\t"):
            problem = f"{self._what} {name!r} starts with a tab, which the server skips"
        if problem is not None:
            raise LineProtocolError(f"measurement {measurement!r}: {problem}")
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        escaped = self._cache[name] = name.translate(self._table)
        return escaped


_escape_tag_key = _Escaper("tag key", _KEY_ESCAPES, frozenset({"time"}), strict_backslash=False)
_escape_tag_value = _Escaper("tag value", _KEY_ESCAPES, frozenset(), strict_backslash=False)
_escape_field_key = _Escaper(
    "field key", _KEY_ESCAPES, frozenset({"time"}), strict_backslash=True, leading_tab_ok=False
)
_measurements: dict[str, str] = {}


def _escape_measurement(measurement: str) -> str:
    escaped = _measurements.get(measurement)
    if escaped is not None:
        return escaped
    problem = _bad_name(measurement, "measurement", strict_backslash=True)
    if problem is None and measurement.startswith("#"):
        problem = f"measurement {measurement!r} starts with '#', which marks a comment line"
    if problem is None and measurement.startswith("\t"):
        problem = f"measurement {measurement!r} starts with a tab, which the server skips"
    if problem is not None:
        raise LineProtocolError(problem)
    if len(_measurements) >= _CACHE_LIMIT:
        _measurements.clear()
    escaped = _measurements[measurement] = measurement.translate(_MEASUREMENT_ESCAPES)
    return escaped


def _field_value(value: object, measurement: str, key: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(
                f"measurement {measurement!r}: field {key!r}: {value!r} is not representable "
                "(InfluxDB floats must be finite)"
            )
        return repr(value if type(value) is float else float(value))  # numpy repr differs
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | Integral):  # Integral: numpy integers
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise LineProtocolError(f"measurement {measurement!r}: field {key!r}: {number} is outside int64")
        return f"{number}i"
    if isinstance(value, str):
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    raise LineProtocolError(
        f"measurement {measurement!r}: field {key!r}: {type(value).__name__} is not a "
        "field type (float, int, bool or str)"
    )


_FLOAT_LIST = msgspec.json.Encoder().encode


def float_texts(values: list[float]) -> list[str]:
    """``[repr(v) for v in values]`` (floats), in one call into C for a whole batch's values.

    msgspec writes the same shortest round-trip digits as ``repr``; it spells only exponents
    (``1e16`` for ``1e+16``, ``0.00001`` for ``1e-05``) and non-finite values (``null``)
    otherwise. Those are seen in its output (an ``e``, an ``n``, a ``0.0000``: nothing else in
    a list of floats has them) and then every value is written by ``repr``."""
    text = _FLOAT_LIST(values)
    if b"e" in text or b"n" in text or b"0.0000" in text or not values:
        return [repr(v) for v in values]
    return text[1:-1].decode("ascii").split(",")


def encode_point(point: Point) -> str:
    """The line for ``point``, without the trailing newline."""
    measurement = point.measurement
    line = [_escape_measurement(measurement)]
    tags = point.tags
    if tags:
        for key in sorted(tags):
            line.append(f",{_escape_tag_key(key, measurement)}={_escape_tag_value(tags[key], measurement)}")
    fields = point.fields
    if not fields:
        raise LineProtocolError(f"measurement {measurement!r}: a point needs at least one field")
    separator = " "
    for key, value in fields.items():
        line.append(
            f"{separator}{_escape_field_key(key, measurement)}={_field_value(value, measurement, key)}"
        )
        separator = ","
    time_ns = point.time_ns
    if type(time_ns) is not int or not TIME_MIN_NS <= time_ns <= TIME_MAX_NS:
        raise LineProtocolError(
            f"measurement {measurement!r}: time_ns {time_ns!r} is not an int in "
            f"[{TIME_MIN_NS}, {TIME_MAX_NS}]"
        )
    line.append(f" {time_ns}")
    return "".join(line)


def encode_points(points: Iterable[Point]) -> bytes:
    """One request body: every point's line, newline-terminated, UTF-8."""
    lines = [encode_point(point) for point in points]
    text = "\n".join(lines)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        _raise_unencodable(lines)
        raise
    return body + b"\n" if body else body


def _raise_unencodable(lines: list[str]) -> None:
    for line in lines:
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as exc:
            name = line.split(" ", 1)[0].split(",", 1)[0]
            raise LineProtocolError(
                f"measurement {name!r}: text is not encodable as UTF-8 ({exc.reason}: "
                f"{exc.object[exc.start : exc.end]!r})"
            ) from exc
