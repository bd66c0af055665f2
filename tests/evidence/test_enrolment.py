"""Enrolment documents: canonical, self-signed, and every alteration refused."""

from __future__ import annotations

import json

import pytest

from evidence.enrolment import EnrolledMeter, make_enrolment, parse_enrolment
from evidence.errors import BadSignature, KeyMismatch, MalformedEnrolment, MalformedMessage
from evidence.keys import generate_key, key_id, load_public_key, public_key_b64

KEY = generate_key()
METERS = (
    EnrolledMeter("pv-01", "pv", 5.0, "1"),
    EnrolledMeter("hm-01", "clean_heating", 12.5, "2"),
)


def _doc(**changes: object) -> bytes:
    args: dict[str, object] = {
        "gateway": "gw-1",
        "site": "zjk-village",
        "meters": METERS,
        "created_ms": 1_767_225_600_000,
        "region": "north",
    }
    args.update(changes)
    return make_enrolment(KEY, **args).to_bytes()  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_the_exact_bytes() -> None:
    data = _doc()
    doc = parse_enrolment(data)
    assert doc.to_bytes() == data
    assert (doc.gateway, doc.site, doc.region, doc.key_id) == ("gw-1", "zjk-village", "north", KEY.key_id)
    assert doc.meters == METERS
    assert key_id(doc.verifying_key()) == KEY.key_id
    assert doc.body.startswith(b'{"format":"puhui-enrolment/1","gateway":"gw-1","site":"zjk-village"')


def test_region_is_optional_and_integer_power_is_written_as_float() -> None:
    doc = parse_enrolment(_doc(region=None, meters=(EnrolledMeter("ev-1", "ev_charging", 7, "1"),)))
    assert doc.region is None
    assert doc.meters[0].rated_power_kw == 7.0
    assert b'"rated_power_kw":7.0' in doc.body


@pytest.mark.parametrize("position", range(0, 400, 7))
def test_any_flipped_byte_is_refused(position: int) -> None:
    data = bytearray(_doc())
    position %= len(data) - 1  # not the final newline
    data[position] ^= 0x01
    with pytest.raises((MalformedMessage, BadSignature, KeyMismatch)):
        parse_enrolment(bytes(data))


def test_signed_by_another_key_than_announced_is_refused() -> None:
    other = generate_key()
    body, _, _ = _doc().partition(b"\n")
    forged = make_enrolment(other, gateway="gw-1", site="s", meters=METERS, created_ms=1)
    with pytest.raises(BadSignature, match="not signed by the key it announces"):
        parse_enrolment(body + b"\n" + forged.to_bytes().split(b"\n")[1] + b"\n")


def test_key_id_must_be_the_announced_keys_id() -> None:
    obj = json.loads(_doc().split(b"\n")[0])
    other = generate_key()
    obj["public_key"] = public_key_b64(other.public_key)  # key_id still names KEY
    body = json.dumps(obj, separators=(",", ":")).encode()
    from evidence.batch import signature_line

    data = body + b"\n" + signature_line(other.sign(body)) + b"\n"
    with pytest.raises(KeyMismatch, match="is not the id of the key"):
        parse_enrolment(data)


def _resigned(mutate: object) -> bytes:
    from evidence.batch import signature_line

    obj = json.loads(_doc().split(b"\n")[0])
    mutate(obj)  # type: ignore[operator]
    body = json.dumps(obj, separators=(",", ":")).encode()
    return body + b"\n" + signature_line(KEY.sign(body)) + b"\n"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o["meters"][0].update(scenario="wind"), r"scenario: 'wind' is not one of"),
        (lambda o: o["meters"][0].update(rated_power_kw=0.0), "rated_power_kw"),
        (lambda o: o["meters"][0].update(rated_power_kw=5), "rated_power_kw"),
        (lambda o: o["meters"].append(dict(o["meters"][0])), "appears twice"),
        (lambda o: o.update(meters=[]), "non-empty list"),
        (lambda o: o.update(gateway="gw/1"), "gateway"),
        (lambda o: o.update(format="puhui-enrolment/2"), "format"),
        (lambda o: o.update(extra=1), "keys must be"),
        (lambda o: o.update(created_ms=-1), "created_ms"),
    ],
)
def test_invalid_fields_are_named(mutate: object, match: str) -> None:
    with pytest.raises(MalformedEnrolment, match=match):
        parse_enrolment(_resigned(mutate))


def test_non_canonical_body_is_refused_even_when_signed() -> None:
    from evidence.batch import signature_line

    body = json.dumps(json.loads(_doc().split(b"\n")[0]), separators=(", ", ":")).encode()
    with pytest.raises(MalformedEnrolment, match="canonical"):
        parse_enrolment(body + b"\n" + signature_line(KEY.sign(body)) + b"\n")


def test_framing() -> None:
    with pytest.raises(MalformedEnrolment, match="body line and a signature line"):
        parse_enrolment(_doc().rstrip(b"\n"))
    with pytest.raises(MalformedEnrolment, match="not JSON"):
        parse_enrolment(b"{\n{}\n")


def test_make_refuses_invalid_meters() -> None:
    with pytest.raises(MalformedEnrolment, match="scenario"):
        _doc(meters=(EnrolledMeter("m", "wind", 1.0, "1"),))  # type: ignore[arg-type]
    assert load_public_key(parse_enrolment(_doc()).public_key)
