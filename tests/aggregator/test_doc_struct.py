"""The aggregator's msgspec structs are made from the evidence declaration: a field added to
the record's dataclass is decoded and checked by the fast decoder with no other change."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.records import doc_struct
from evidence.record_fields import to_builtins
from evidence.records import IntervalRecord
from tests.evidence.test_declaration import WIDER, Grade, WiderRecord, _wider, encode_wider
from tests.evidence.test_records import interval_records

WIDER_DOC = msgspec.json.Decoder(doc_struct(WiderRecord, tag="interval"))


@given(
    interval_records(),
    st.none() | st.text(max_size=5),
    st.none() | st.sampled_from(["a", "b"]),
    st.none() | st.integers(0, 2**40),
)
def test_the_struct_decodes_a_field_added_to_the_declaration(
    rec: IntervalRecord, note: str | None, grade: Grade | None, retries: int | None
) -> None:
    wider = _wider(rec, note, grade, retries)
    doc = WIDER_DOC.decode(encode_wider(wider))
    assert msgspec.to_builtins(doc) | {"flags": list(doc.flags)} == {
        "type": "interval",
        **to_builtins(wider, WIDER),
    }


@pytest.mark.parametrize(("key", "value"), [("note", 5), ("grade", "c"), ("retries", -1), ("extra", 1)])
def test_the_struct_checks_the_added_fields(key: str, value: object) -> None:
    obj = json.loads(encode_wider(_wider(IntervalRecord("m", "q", "u", 0, 900), "n", "a", 1)))
    WIDER_DOC.decode(json.dumps(obj))
    with pytest.raises(msgspec.ValidationError):
        WIDER_DOC.decode(json.dumps({**obj, key: value}))
