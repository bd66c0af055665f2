"""Line protocol encoding and InfluxQL quoting: exact strings, and a round trip through a
real InfluxDB 1.x for arbitrary names and values (hypothesis)."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aggregator.influx import (
    InfluxV1Client,
    LineProtocolError,
    Point,
    encode_point,
    encode_points,
    quote_ident,
    quote_literal,
)
from aggregator.influx.lineprotocol import INT64_MAX, INT64_MIN, TIME_MAX_NS, TIME_MIN_NS
from testbed.servers import PrivateInfluxDB


def line(measurement: str, tags: dict[str, str], fields: dict[str, Any], t: int = 7) -> str:
    return encode_point(Point(measurement, tags, fields, t))


# -- exact encodings --------------------------------------------------------------------


def test_plain_point() -> None:
    assert line("energy", {"meter": "m1"}, {"kwh": 1.5}) == "energy,meter=m1 kwh=1.5 7"


def test_tags_are_sorted_by_key_and_fields_keep_order() -> None:
    encoded = line("m", {"z": "1", "a": "2", "M": "3"}, {"b": 1, "a": 2})
    assert encoded == "m,M=3,a=2,z=1 b=1i,a=2i 7"


def test_measurement_escapes_comma_and_space_only() -> None:
    assert line("my meas,ure=x", {}, {"v": 1}) == "my\\ meas\\,ure=x v=1i 7"


def test_keys_and_tag_values_escape_comma_equals_space() -> None:
    encoded = line("m", {"ta g,=": "v a,l=ue"}, {"fi eld,=": True})
    assert encoded == "m,ta\\ g\\,\\==v\\ a\\,l\\=ue fi\\ eld\\,\\==true 7"


def test_backslashes_inside_names_are_kept_as_is() -> None:
    assert line("a\\b", {"k\\x": "v\\,w"}, {"f": 1}) == "a\\b,k\\x=v\\\\,w f=1i 7"


def test_string_field_escapes_quote_and_backslash() -> None:
    encoded = line("m", {}, {"s": 'say "hi" \\ now\nnext'})
    assert encoded == 'm s="say \\"hi\\" \\\\ now\nnext" 7'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (2.0, "2.0"),
        (-0.0, "-0.0"),
        (1e300, "1e+300"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0, "0i"),
        (INT64_MIN, "-9223372036854775808i"),
        (INT64_MAX, "9223372036854775807i"),
        (True, "true"),
        (False, "false"),
        ("", '""'),
    ],
)
def test_field_value_forms(value: Any, text: str) -> None:
    assert line("m", {}, {"f": value}) == f"m f={text} 7"


def test_numpy_scalars_encode_as_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    assert line("m", {}, {"f": np.float64(1.5), "i": np.int64(3)}) == "m f=1.5,i=3i 7"


def test_time_bounds_are_the_servers() -> None:
    assert line("m", {}, {"f": 1}, TIME_MIN_NS).endswith(" -9223372036854775806")
    assert line("m", {}, {"f": 1}, TIME_MAX_NS).endswith(" 9223372036854775806")


def test_encode_points_is_one_newline_terminated_utf8_body() -> None:
    points = [Point("m", {"site": "上海"}, {"v": 1}, 1), Point("m", {}, {"v": 2}, 2)]
    assert encode_points(points) == "m,site=上海 v=1i 1\nm v=2i 2\n".encode()
    assert encode_points([]) == b""


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (Point("m", {}, {"f": math.nan}, 1), "'m': field 'f': nan is not representable"),
        (Point("m", {}, {"f": -math.inf}, 1), "field 'f': -inf is not representable"),
        (Point("m", {}, {"f": 2**63}, 1), "field 'f': 9223372036854775808 is outside int64"),
        (Point("m", {}, {"f": INT64_MIN - 1}, 1), "is outside int64"),
        (Point("m", {}, {"f": None}, 1), "field 'f': NoneType is not a field type"),  # type: ignore[dict-item]
        (Point("m", {}, {"f": b"x"}, 1), "bytes is not a field type"),  # type: ignore[dict-item]
        (Point("m", {}, {}, 1), "'m': a point needs at least one field"),
        (Point("m", {"t": ""}, {"f": 1}, 1), "'m': tag value is empty"),
        (Point("m", {"": "v"}, {"f": 1}, 1), "tag key is empty"),
        (Point("m", {}, {"": 1}, 1), "field key is empty"),
        (Point("", {}, {"f": 1}, 1), "measurement is empty"),
        (Point("m", {"t": 5}, {"f": 1}, 1), "tag value must be a str, not int"),  # type: ignore[dict-item]
        (Point("a\nb", {}, {"f": 1}, 1), "contains a line break"),
        (Point("m", {"t": "a\rb"}, {"f": 1}, 1), "tag value 'a\\rb' contains a line break"),
        (Point("m", {}, {"f\n": 1}, 1), "field key 'f\\n' contains a line break"),
        (Point("m\\", {}, {"f": 1}, 1), "ends with a backslash"),
        (Point("m", {"t": "v\\"}, {"f": 1}, 1), "tag value 'v\\\\' ends with a backslash"),
        (Point("#m", {}, {"f": 1}, 1), "starts with '#'"),
        (Point("a\\,b", {}, {"f": 1}, 1), "measurement 'a\\\\,b' has a backslash before"),
        (Point("a\\=b", {}, {"f": 1}, 1), 'has a backslash before one of , = space "'),
        (Point("m", {}, {'a\\"b': 1}, 1), "field key 'a\\\\\"b' has a backslash before"),
        (Point("m", {}, {"a\\ b": 1}, 1), "field key 'a\\\\ b' has a backslash before"),
        (Point("\tm", {}, {"f": 1}, 1), "measurement '\\tm' starts with a tab"),
        (Point("m", {}, {"\tf": 1}, 1), "field key '\\tf' starts with a tab"),
        (Point("m", {"k": "a\x00"}, {"f": 1}, 1), "tag value 'a\\x00' contains NUL"),
        (Point("m", {"time": "x"}, {"f": 1}, 1), "tag key 'time' is reserved"),
        (Point("m", {}, {"time": 1}, 1), "field key 'time' is reserved"),
        (Point("m", {}, {"f": 1}, TIME_MAX_NS + 1), "time_ns 9223372036854775807 is not"),
        (Point("m", {}, {"f": 1}, TIME_MIN_NS - 1), "time_ns -9223372036854775807 is not"),
        (Point("m", {}, {"f": 1}, 1.0), "time_ns 1.0 is not an int"),  # type: ignore[arg-type]
    ],
)
def test_unrepresentable_points_are_refused(point: Point, expected: str) -> None:
    with pytest.raises(LineProtocolError) as info:
        encode_point(point)
    assert expected in str(info.value)


def test_lone_surrogate_is_refused_naming_the_measurement() -> None:
    points = [Point("ok", {}, {"f": 1}, 1), Point("bad", {}, {"s": "\ud800"}, 1)]
    with pytest.raises(LineProtocolError, match="measurement 'bad': text is not encodable"):
        encode_points(points)


def test_line_protocol_error_is_a_value_error() -> None:
    assert issubclass(LineProtocolError, ValueError)


# -- InfluxQL quoting -------------------------------------------------------------------


def test_quote_ident_and_literal() -> None:
    assert quote_ident('we"ird\\name\nx') == '"we\\"ird\\\\name\\nx"'
    assert quote_ident("it's") == '"it\'s"'
    assert quote_literal('it\'s \\ "q"\n') == "'it\\'s \\\\ \"q\"\\n'"


# -- round trip through the real server ---------------------------------------------------

# Any text, with the characters that need care drawn often.
_name_chars = st.one_of(
    st.characters(codec="utf-8", exclude_characters="\n\r\x00"),
    st.sampled_from(list("\\,= \"#\t'")),
)
_names = st.text(_name_chars, min_size=1, max_size=10).filter(lambda s: not s.endswith("\\"))
_strict_names = _names.filter(lambda s: not re.search(r'\\[,= "]', s))
_measurements = _strict_names.filter(lambda s: not s.startswith(("#", "\t")))
_tag_keys = _names.filter(lambda s: s != "time")
_field_keys = _strict_names.filter(lambda s: s != "time" and not s.startswith("\t"))
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(INT64_MIN, INT64_MAX),
    st.booleans(),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
_database_numbers = itertools.count()


def _same(expected: Any, got: Any) -> bool:
    """Equal, and of the field's type (JSON gives integral floats back as ints)."""
    if isinstance(expected, bool | str):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, int):
        return type(got) is int and got == expected
    return type(got) in (int, float) and float(got) == expected


@pytest.mark.integration
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    measurement=_measurements,
    tags=st.dictionaries(_tag_keys, _names, max_size=3),
    fields=st.dictionaries(_field_keys, _values, min_size=1, max_size=3),
    time_ns=st.integers(TIME_MIN_NS, TIME_MAX_NS),
)
async def test_round_trip_through_influxdb(
    influxdb: PrivateInfluxDB,
    measurement: str,
    tags: dict[str, str],
    fields: dict[str, Any],
    time_ns: int,
) -> None:
    assume(not set(tags) & set(fields))  # SELECT * would rename a clashing column
    database = f"roundtrip_{next(_database_numbers)}"
    async with InfluxV1Client(influxdb.url, database) as influx:
        await influx.create_database()
        try:
            await influx.write_points([Point(measurement, tags, fields, time_ns)])
            [series] = await influx.query(f"SELECT * FROM {quote_ident(measurement)} GROUP BY *")
        finally:
            await influx.drop_database()
    assert series["name"] == measurement
    assert series["tags"] == tags
    [row] = series["values"]
    got = dict(zip(series["columns"], row, strict=True))
    assert got.pop("time") == time_ns
    assert got.keys() == fields.keys()
    mismatched = {k: (v, got[k]) for k, v in fields.items() if not _same(v, got[k])}
    assert not mismatched, mismatched
