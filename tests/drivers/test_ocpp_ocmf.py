"""OCMF: golden records, signing and verifying on every supported curve, errors that name the
field, a fuzz that never gets anything but :class:`OcmfError`, and cross-checks with the
simulated meter's own signer and with ``pyocmf``."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

import drivers.ocpp
from drivers.ocpp import ocmf
from drivers.ocpp.errors import OcmfAlgorithmError, OcmfError, OcmfFormatError, OcmfKeyError
from firmware_sim.ocmf_meter import OcmfMeter

CASES = Path(drivers.ocpp.__file__).parent / "testcases" / "ocmf"
SIGNED = ["secp256r1", "brainpool256r1", "secp384r1-sha512"]
ALGORITHMS = [
    (ec.SECP256R1(), "ECDSA-secp256r1-SHA256"),
    (ec.SECP256R1(), "ECDSA-secp256r1-SHA512"),
    (ec.SECP384R1(), "ECDSA-secp384r1-SHA256"),
    (ec.SECP384R1(), "ECDSA-secp384r1-SHA512"),
    (ec.BrainpoolP256R1(), "ECDSA-brainpool256r1-SHA256"),
    (ec.BrainpoolP256R1(), "ECDSA-brainpoolP256r1-SHA256"),
    (ec.BrainpoolP384R1(), "ECDSA-brainpool384r1-SHA256"),
    (ec.BrainpoolP384R1(), "ECDSA-brainpool384r1-SHA512"),
]


def payload(rv: str = "2935.600") -> dict[str, object]:
    return {
        "FV": "1.0",
        "PG": "T1",
        "MS": "M1",
        "IS": False,
        "IT": "NONE",
        "RD": [
            {
                "TM": "2018-07-24T13:22:04,000+0200 S",
                "TX": "B",
                "RV": Decimal(rv),
                "RI": "01-00:01.08.00*FF",
                "RU": "kWh",
                "RT": "AC",
                "EF": "",
                "ST": "G",
            },
            {"TM": "2018-07-24T13:26:04,000+0200 S", "TX": "E", "RV": Decimal("2965.100")},
        ],
    }


# -- golden records -------------------------------------------------------------------------------------


def test_the_specification_example_parses_with_its_whitespace_and_inherited_fields() -> None:
    text = (CASES / "spec-example.txt").read_text(encoding="utf-8")
    record = ocmf.parse(text)
    assert "\n" in record.payload_text and record.payload["PG"] == "T12345"
    assert len(record.readings) == 6
    first, second, last = record.readings[0], record.readings[1], record.readings[-1]
    when = datetime.datetime(2018, 7, 24, 13, 22, 4, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert (first.time, first.time_status, first.transaction) == (when.timestamp(), "S", "B")
    assert str(first.value) == "2935.600" and first.wh == 2_935_600.0  # written decimals kept
    assert second.cumulated_loss == Decimal("0.5") and second.transaction == "E"
    assert first.is_import_register and not last.is_import_register  # B3 is transaction energy
    assert last.value == Decimal("29.000") and last.current_type == "DC"
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert ocmf.verify(record, key) is False  # its SD is a placeholder


@pytest.mark.parametrize("name", SIGNED)
def test_golden_signed_records_verify_with_their_key_and_keep_their_decimals(name: str) -> None:
    record = ocmf.parse((CASES / f"signed-{name}.txt").read_text(encoding="utf-8"))
    key = ocmf.load_public_key((CASES / f"signed-{name}.pub").read_text(encoding="utf-8"))
    assert ocmf.verify(record, key)
    assert [str(r.value) for r in record.readings] == ["1234.560", "1251.07"]
    assert [r.wh for r in record.readings] == [1_234_560.0, 1_251_070.0]
    assert record.readings[1].obis == "01-00:01.08.00*FF" and record.readings[1].unit == "kWh"  # inherited
    assert record.readings[1].time - record.readings[0].time == 6450.5


@pytest.mark.parametrize("name", SIGNED)
def test_one_changed_character_breaks_a_golden_signature(name: str) -> None:
    text = (CASES / f"signed-{name}.txt").read_text(encoding="utf-8")
    key = ocmf.load_public_key((CASES / f"signed-{name}.pub").read_text(encoding="utf-8"))
    for old, new in (("1251.07", "1251.08"), ("1234.560", "1234.56"), ('"PG":"T7"', '"PG":"T8"')):
        assert old in text
        assert not ocmf.verify(ocmf.parse(text.replace(old, new, 1)), key), (old, new)


# -- signing and verifying ------------------------------------------------------------------------------


@pytest.mark.parametrize(("curve", "name"), ALGORITHMS, ids=[a for _, a in ALGORITHMS])
def test_build_and_verify_on_every_curve_and_hash(curve: ec.EllipticCurve, name: str) -> None:
    key = ec.generate_private_key(curve)
    record = ocmf.parse(ocmf.build(payload(), key, name))
    assert record.algorithm.name == name
    assert ocmf.verify(record, key.public_key())
    assert not ocmf.verify(record, ec.generate_private_key(curve).public_key())  # another meter's key
    tampered = record.raw.replace("2965.100", "2975.100")
    assert not ocmf.verify(ocmf.parse(tampered), key.public_key())


def test_a_key_on_another_curve_is_an_error_not_a_false() -> None:
    record = ocmf.parse(ocmf.build(payload(), ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(OcmfKeyError, match="secp256r1 key, the pinned key is secp384r1"):
        ocmf.verify(record, ec.generate_private_key(ec.SECP384R1()).public_key())


def test_a_key_appended_as_fourth_section_is_kept_but_never_used() -> None:
    signer, forger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    forged = ocmf.build(payload("9999.000"), forger) + "|" + ocmf.public_key_text(forger.public_key())
    record = ocmf.parse(forged)
    assert record.embedded_key == ocmf.public_key_text(forger.public_key())
    assert not ocmf.verify(record, signer.public_key())  # only the pinned key counts


def test_public_keys_load_from_hex_base64_and_pem() -> None:
    key = ec.generate_private_key(ec.BrainpoolP384R1()).public_key()
    hex_text = ocmf.public_key_text(key)
    b64 = ocmf.public_key_text(key, "base64")
    pem = base64.b64decode(b64)
    pem_text = (
        "-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(pem).decode() + "-----END PUBLIC KEY-----\n"
    )
    for text in (hex_text, b64, pem_text):
        assert ocmf.public_key_text(ocmf.load_public_key(text)) == hex_text
    with pytest.raises(OcmfKeyError, match="not a DER/PEM public key"):
        ocmf.load_public_key("3059301306072a8648ce3d0201")


def test_records_travel_as_text_hex_or_base64() -> None:
    text = ocmf.build(payload(), ec.generate_private_key(ec.SECP256R1()))
    for carried in (text, text.encode().hex(), base64.b64encode(text.encode()).decode()):
        assert ocmf.unwrap(carried) == text
    with pytest.raises(OcmfFormatError, match="neither 'OCMF"):
        ocmf.unwrap("not a record")


def test_time_round_trip_and_offsets() -> None:
    text = ocmf.format_time(1_741_565_700.25, "S", 480)
    assert text == "2025-03-10T08:15:00,250+0800 S"
    assert ocmf.parse_time(text) == (1_741_565_700.25, "S")
    assert ocmf.parse_time("2025-03-10T00:15:00.250+00:00 R") == (1_741_565_700.25, "R")


def test_a_session_exported_as_ocmf_verifies_and_reads_back() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    readings = [
        ocmf.ExportReading(1_741_565_700.0, Decimal(5_001_234), "B"),
        ocmf.ExportReading(1_741_573_800.0, Decimal(5_019_876), "E"),
    ]
    body = ocmf.session_payload(
        readings,
        pagination=3,
        gateway_id="gw-01",
        gateway_version="0.1",
        meter_serial="CP-001.1",
        charge_point="CP-001 1",
        utc_offset_min=480,
    )
    record = ocmf.parse(ocmf.build(body, key))
    assert ocmf.verify(record, key.public_key())
    assert [(r.transaction, r.wh, r.time) for r in record.readings] == [
        ("B", 5_001_234.0, 1_741_565_700.0),
        ("E", 5_019_876.0, 1_741_573_800.0),
    ]
    assert record.payload["CI"] == "CP-001 1" and '"RV":5001.234' in record.payload_text


# -- errors name the field --------------------------------------------------------------------------------


def good() -> str:
    return ocmf.build(payload(), ec.generate_private_key(ec.SECP256R1()))


MUTATIONS: list[tuple[Callable[[str], str], str]] = [
    (lambda s: s.replace("OCMF|", "OCMX|"), "(header)"),
    (lambda s: s + "|x|y", "(record)"),
    (lambda s: s.replace('"PG":"T1"', '"PG":"T01"'), "PG"),
    (lambda s: s.replace('"IS":false', '"IS":"no"'), "IS"),
    (lambda s: s.replace("2018-07-24T13:26:04,000+0200 S", "2018-07-24 13:26"), "RD[1].TM"),
    (lambda s: s.replace('"ST":"G"', '"ST":"OK"'), "RD[0].ST"),
    (lambda s: s.replace('"ST":"G"', '"XX":"G"'), "RD[0].ST"),
    (lambda s: s.replace('"RU":"kWh"', '"RU":"MWh"'), "RD[0].RU"),
    (lambda s: s.replace('"EF":""', '"EF":"Q"'), "RD[0].EF"),
    (lambda s: s.replace('"RV":2965.100', '"RV":"2965.100"'), "RD[1].RV"),
    (lambda s: s.replace('"RV":2965.100', '"RV":1e99'), "RD[1].RV"),
    (lambda s: s.replace('"RD":[', '"RD":[7,'), "RD[0]"),
    (lambda s: s.replace('"MS":"M1"', '"MS":"M1","MS":"M2"'), "payload"),
    (lambda s: s.replace('"SA":"ECDSA-secp256r1-SHA256"', '"SA":"ECDSA-secp192k1-SHA256"'), "SA"),
    (lambda s: s.replace('"SD":"30', '"SD":"zz'), "SD"),
    (lambda s: s.replace('"SD":', '"SE":"base85","SD":'), "SE"),
]


@pytest.mark.parametrize(("mutate", "field"), MUTATIONS, ids=[f for _, f in MUTATIONS])
def test_malformed_records_raise_an_error_naming_the_field(mutate: Callable[[str], str], field: str) -> None:
    text = mutate(good())
    with pytest.raises(OcmfError) as info:
        ocmf.parse(text)
    assert str(info.value).startswith(f"OCMF {field}:"), str(info.value)


def test_unknown_algorithm_is_its_own_error() -> None:
    with pytest.raises(OcmfAlgorithmError, match="ECDSA-secp192k1-SHA256"):
        ocmf.algorithm("ECDSA-secp192k1-SHA256")


def test_a_float_reading_is_refused_when_building() -> None:
    body = payload()
    body["RD"][0]["RV"] = 2935.6  # type: ignore[index]
    with pytest.raises(OcmfFormatError, match="Decimal"):
        ocmf.build(body, ec.generate_private_key(ec.SECP256R1()))


# -- fuzz -------------------------------------------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "FV",
    "PG",
    "IS",
    "IF",
    "MS",
    "RD",
    "TM",
    "TX",
    "RV",
    "RI",
    "RU",
    "RT",
    "EF",
    "ST",
    "CL",
    "SA",
    "SE",
    "SD",
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_ocmf_error(text: str) -> None:
    for candidate in (text, "OCMF|" + text, "OCMF|{}|" + text, "OCMF|" + text + '|{"SD":"00"}'):
        with contextlib.suppress(OcmfError):
            ocmf.parse(candidate)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FIELDS), JSONISH, st.booleans())
def test_any_value_in_any_field_parses_or_raises_ocmf_error(
    field: str, value: object, in_reading: bool
) -> None:
    body = json.loads(ocmf.dump_payload(payload()), parse_float=Decimal)
    sig = {"SA": "ECDSA-secp256r1-SHA256", "SD": "3006020101020101"}
    target = body["RD"][1] if in_reading else (sig if field.startswith("S") and len(field) == 2 else body)
    target[field] = value
    text = "OCMF|" + json.dumps(body, default=str) + "|" + json.dumps(sig, default=str)
    try:
        record = ocmf.parse(text)
    except OcmfError:
        return
    for r in record.readings:  # what parsed is usable without surprises
        assert r.wh is None or isinstance(r.wh, float)
        assert isinstance(r.is_import_register, bool) and isinstance(r.usable, bool)


def test_hostile_inputs_are_ocmf_errors() -> None:
    for text in (
        "OCMF|" + "[" * 100_000 + "|{}",
        "OCMF|{" + '"a":' * 5000 + "1" + "}" * 5000 + "|{}",
        'OCMF|{"RD":[{"TM":"2018-07-24T13:22:04,000+0200 S","RV":' + "9" * 5000 + "}]}|{}",
        "OCMF|" + "x" * 70_000 + "|{}",
        'OCMF|{"RD":[{"TM":"2018-02-30T13:22:04,000+0200 S"}]}|{}',
    ):
        with pytest.raises(OcmfError):
            ocmf.parse(text)


# -- cross-checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    [
        "ECDSA-secp256r1-SHA256",
        "ECDSA-secp384r1-SHA512",
        "ECDSA-brainpool256r1-SHA256",
        "ECDSA-brainpool384r1-SHA256",
    ],
)
def test_records_of_the_simulated_meter_verify_here(algorithm: str) -> None:
    meter = OcmfMeter("SIM000042", algorithm)
    text = meter.sign_reading(1_741_565_700.0, 5_001_234, "B", "TAG1", "CP-001")
    record = ocmf.parse(text)
    assert ocmf.verify(record, ocmf.load_public_key(meter.public_key_hex()))
    assert record.readings[0].wh == 5_001_234.0 and record.readings[0].usable


def test_a_tampering_meter_fails_verification_only_on_what_it_changed() -> None:
    meter = OcmfMeter("SIM000043", tamper_wh=500)
    key = ocmf.load_public_key(meter.public_key_hex())
    begin = ocmf.parse(meter.sign_reading(1_741_565_700.0, 5_001_234, "B", "TAG1", "CP-001"))
    end = ocmf.parse(meter.sign_reading(1_741_573_800.0, 5_019_876, "E", "TAG1", "CP-001"))
    assert ocmf.verify(begin, key) and not ocmf.verify(end, key)
    assert end.readings[0].wh == 5_020_376.0


pyocmf = pytest.importorskip("pyocmf")


@pytest.mark.parametrize("algorithm", ["ECDSA-secp256r1-SHA256", "ECDSA-secp384r1-SHA512"])
def test_pyocmf_agrees_on_our_records_and_the_simulated_meters(algorithm: str) -> None:
    curve = ec.SECP256R1() if "256" in algorithm else ec.SECP384R1()
    key = ec.generate_private_key(curve)
    ours = ocmf.build(payload(), key, algorithm)
    meter = OcmfMeter("SIM000044", algorithm)
    sims = meter.sign_reading(1_741_565_700.0, 5_001_234, "C", "TAG1", "CP-001")
    for text, pub in ((ours, ocmf.public_key_text(key.public_key())), (sims, meter.public_key_hex())):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyocmf warns about fields it would like (not errors)
            theirs = pyocmf.OCMF.from_string(text)
        assert theirs.verify_signature(pub) is True
        assert [r.RV for r in theirs.payload.RD] == [r.value for r in ocmf.parse(text).readings]


def test_pyocmf_still_rejects_the_specifications_brainpool_name() -> None:
    """Why drivers/ocpp/ocmf.py exists: if this starts failing, pyocmf may be usable again."""
    key = ec.generate_private_key(ec.BrainpoolP256R1())
    text = ocmf.build(payload(), key, "ECDSA-brainpool256r1-SHA256")
    assert ocmf.verify(ocmf.parse(text), key.public_key())
    with pytest.raises(pyocmf.exceptions.SignatureVerificationError, match="curve mismatch"):
        pyocmf.OCMF.from_string(text).verify_signature(ocmf.public_key_text(key.public_key()))
