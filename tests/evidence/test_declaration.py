"""The interval record is declared once (evidence.records.IntervalRecord); the encoder, the
reference decoder, the JSON form and the docs follow that declaration, whatever it holds."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evidence import records
from evidence.errors import MalformedRecord
from evidence.record_fields import Count, compile_encoder, to_builtins, wire_fields
from evidence.records import FLAG_MEANINGS, FLAGS, INTERVAL_FIELDS, IntervalRecord
from tests.evidence.test_records import interval_records

DOC = Path(__file__).resolve().parents[2] / "docs" / "evidence-format.md"
Grade = Literal["a", "b"]


@dataclasses.dataclass(frozen=True, slots=True)
class WiderRecord(IntervalRecord):
    """The interval record with one field of each form it does not use yet, as a later
    format version might add them: the only declaration of these fields."""

    note: str | None = None
    grade: Grade | None = None
    retries: Count | None = None


def _wider(rec: IntervalRecord, note: str | None, grade: Grade | None, retries: int | None) -> WiderRecord:
    return WiderRecord(*(getattr(rec, f.name) for f in INTERVAL_FIELDS), note, grade, retries)  # type: ignore[arg-type]


WIDER = wire_fields(WiderRecord)
encode_wider = compile_encoder("interval", WIDER)
read_wider = records._object_reader(WiderRecord, WIDER, tag=("type",))


@given(
    interval_records(),
    st.none() | st.text(max_size=5),
    st.none() | st.sampled_from(["a", "b"]),
    st.none() | st.integers(0, 2**40),
)
def test_a_field_added_to_the_declaration_is_encoded_and_decoded(
    rec: IntervalRecord, note: str | None, grade: Grade | None, retries: int | None
) -> None:
    wider = _wider(rec, note, grade, retries)
    data = encode_wider(wider)
    assert (
        data == json.dumps({"type": "interval", **to_builtins(wider, WIDER)}, separators=(",", ":")).encode()
    )
    assert read_wider(records._Fields(json.loads(data), "interval")) == wider


def test_the_added_fields_are_checked_against_their_declared_form() -> None:
    base = json.loads(encode_wider(_wider(IntervalRecord("m", "q", "u", 0, 900), "n", "a", 1)))
    for key, value, message in [
        ("note", 5, r"interval\.note: expected a string"),
        ("grade", "c", r"interval\.grade: expected 'a' or 'b'"),
        ("retries", -1, r"interval\.retries: expected an integer >= 0"),
    ]:
        with pytest.raises(MalformedRecord, match=message):
            read_wider(records._Fields({**base, key: value}, "interval"))


def test_a_type_without_wire_form_is_refused_naming_the_field() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        readings: list[float]

    with pytest.raises(TypeError, match=r"Odd\.readings: type list\[float\] has no wire form"):
        wire_fields(Odd)


def _doc_section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    return text[start : text.index("\n### ", start + 1)]


def test_the_docs_table_lists_the_declared_keys_in_order() -> None:
    rows = [line for line in _doc_section("### `interval`").splitlines() if line.startswith("| `")]
    keys = [k for row in rows for k in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert keys == ["type", *(f.name for f in INTERVAL_FIELDS)]


def test_the_docs_name_every_flag_and_the_code_explains_each() -> None:
    section = _doc_section("### `interval`")
    flags_paragraph = section[section.index("Flags (version 1") :].split("\n\n")[0]
    assert set(re.findall(r"`(\w+)`", flags_paragraph)) == FLAGS == FLAG_MEANINGS.keys()
