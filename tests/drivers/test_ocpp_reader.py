"""The metering reader on hand-written OCPP 1.6J and 2.0.1 frames: samples, sessions, signed
values, problems that name the field, and a fuzz in which no frame ever raises."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from drivers.ocpp import ocmf
from drivers.ocpp.metering import CollectingSink, MeteringReader, MeterKeys, is_meter_signed

T0 = 1_741_565_700.0  # 2025-03-10T00:15:00Z
TS = "2025-03-10T00:15:00.000Z"


def frame(*parts: Any) -> str:
    return json.dumps(list(parts))


def reader(
    version: str = "ocpp1.6", key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[MeteringReader, CollectingSink]:
    sink = CollectingSink()
    keys = MeterKeys({None: key.public_key()}) if key is not None else None
    r = MeteringReader("CP-1", sink, ManualClock(T0), keys=keys, meter_ids={2: "depot-cp1-right"})
    r.open(version)  # type: ignore[arg-type]
    return r, sink


def signed_record(
    key: ec.EllipticCurvePrivateKey,
    wh: int,
    tx: str = "E",
    t: float = T0,
    algorithm: str = ocmf.DEFAULT_ALGORITHM,
) -> str:
    body = {
        "FV": "1.0",
        "PG": "T1",
        "MS": "M1",
        "IS": False,
        "IT": "NONE",
        "RD": [
            {
                "TM": ocmf.format_time(t),
                "TX": tx,
                "RV": Decimal(wh).scaleb(-3),
                "RI": "01-00:01.08.00*FF",
                "RU": "kWh",
                "ST": "G",
            }
        ],
    }
    return ocmf.build(body, key, algorithm)


# -- OCPP 1.6J ------------------------------------------------------------------------------------------


def test_a_16_transaction_gives_register_samples_and_a_session() -> None:
    r, sink = reader()
    r.from_charger(
        frame(
            2,
            "a1",
            "StartTransaction",
            {"connectorId": 2, "idTag": "TAG", "meterStart": 5000, "timestamp": TS},
        )
    )
    assert not sink.sessions  # the id comes with the CSMS's answer
    r.from_csms(frame(3, "a1", {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}))
    mv = {
        "connectorId": 2,
        "transactionId": 77,
        "meterValue": [
            {
                "timestamp": "2025-03-10T00:30:00Z",
                "sampledValue": [
                    {
                        "value": "5.75",
                        "measurand": "Energy.Active.Import.Register",
                        "unit": "kWh",
                        "context": "Sample.Clock",
                    },
                    {"value": "7400", "measurand": "Power.Active.Import", "unit": "W"},
                    {"value": "2500", "measurand": "Power.Active.Import", "unit": "W", "phase": "L1"},
                    {"value": "230.1", "measurand": "Voltage"},
                ],
            }
        ],
    }
    r.from_charger(frame(2, "a2", "MeterValues", mv))
    r.from_charger(
        frame(
            2,
            "a3",
            "StopTransaction",
            {
                "transactionId": 77,
                "meterStop": 6100,
                "timestamp": "2025-03-10T01:00:00Z",
                "reason": "EVDisconnected",
            },
        )
    )
    got = [(s.meter, s.quantity, s.value, s.time - T0, s.source) for s in sink.sample_list]
    assert got == [
        ("depot-cp1-right", "energy_delivered", 5000.0, 0.0, "ocpp1.6"),
        ("depot-cp1-right", "energy_delivered", 5750.0, 900.0, "ocpp1.6"),
        ("depot-cp1-right", "power", 7400.0, 900.0, "ocpp1.6"),
        ("depot-cp1-right", "energy_delivered", 6100.0, 2700.0, "ocpp1.6"),
    ]
    start, stop = sink.sessions
    assert (start.kind, start.transaction_id, start.connector, start.meter_wh, start.id_tag) == (
        "start",
        "77",
        2,
        5000.0,
        "TAG",
    )
    assert (stop.kind, stop.transaction_id, stop.meter, stop.meter_wh, stop.reason) == (
        "stop",
        "77",
        "depot-cp1-right",
        6100.0,
        "EVDisconnected",
    )
    assert not sink.problems


def test_a_stop_for_a_transaction_never_seen_is_an_event_and_a_problem() -> None:
    r, sink = reader()
    r.from_charger(frame(2, "x", "StopTransaction", {"transactionId": 5, "meterStop": 10, "timestamp": TS}))
    assert [(e.kind, e.connector) for e in sink.sessions] == [("stop", None)]
    assert not sink.sample_list and "connector unknown" in sink.problems[0].problem


def test_the_transaction_connector_is_learnt_from_meter_values_after_a_restart() -> None:
    r, sink = reader()
    r.from_charger(frame(2, "m", "MeterValues", {"connectorId": 1, "transactionId": 9, "meterValue": []}))
    r.from_charger(frame(2, "s", "StopTransaction", {"transactionId": 9, "meterStop": 10, "timestamp": TS}))
    assert [s.meter for s in sink.sample_list] == ["CP-1.1"] and not sink.problems


@pytest.mark.parametrize("as_json", [False, True])
def test_16_signed_data_verifies_and_becomes_a_meter_signed_reading(as_json: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    r, sink = reader(key=key)
    record = signed_record(key, 6_100_000)
    value = record
    if as_json:
        value = json.dumps(
            {"signedMeterData": base64.b64encode(record.encode()).decode(), "encodingMethod": "OCMF"}
        )
    data = [
        {
            "timestamp": TS,
            "sampledValue": [{"value": value, "format": "SignedData", "context": "Transaction.End"}],
        }
    ]
    r.from_charger(frame(2, "m", "MeterValues", {"connectorId": 1, "transactionId": 3, "meterValue": data}))
    [sample] = sink.sample_list
    assert (sample.value, sample.source, is_meter_signed(sample)) == (6_100_000.0, "ocpp1.6+ocmf", True)
    [signed] = sink.signed_values
    assert (signed.status, signed.transaction_id, signed.context, signed.record) == (
        "verified",
        "3",
        "Transaction.End",
        record,
    )
    assert signed.carried == value


@pytest.mark.parametrize(
    ("pinned", "status"),
    [("other", "signature_failed"), ("none", "no_pinned_key"), ("p384", "key_mismatch")],
)
def test_a_signed_value_that_does_not_verify_is_read_but_not_meter_signed(pinned: str, status: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = {
        "other": ec.generate_private_key(ec.SECP256R1()),
        "none": None,
        "p384": ec.generate_private_key(ec.SECP384R1()),
    }[pinned]
    r, sink = reader(key=other)
    data = [
        {"timestamp": TS, "sampledValue": [{"value": signed_record(key, 6_100_000), "format": "SignedData"}]}
    ]
    r.from_charger(frame(2, "m", "MeterValues", {"connectorId": 1, "meterValue": data}))
    [sample] = sink.sample_list
    assert sample.source == "ocpp1.6" and not is_meter_signed(sample)
    assert [s.status for s in sink.signed_values] == [status]
    assert r.counts.signed_failed == 1 and r.counts.signed_verified == 0


def test_a_record_without_obis_is_the_sampled_registers_and_other_registers_are_not_read() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    r, sink = reader(key=key)
    rd = [
        {"TM": ocmf.format_time(T0), "TX": "C", "RV": Decimal("6100.000"), "RU": "kWh", "ST": "G"},
        {"RV": Decimal("12.5"), "RI": "01-00:B2.08.00*FF"},
        {"RV": Decimal("5.5"), "RI": "1-0:1.8.0", "ST": "E"},
    ]
    record = ocmf.build({"PG": "F3", "MS": "M1", "RD": rd}, key)
    data = [{"timestamp": TS, "sampledValue": [{"value": record, "format": "SignedData"}]}]
    r.from_charger(frame(2, "m", "MeterValues", {"connectorId": 1, "meterValue": data}))
    assert [(s.value, s.source) for s in sink.sample_list] == [
        (6_100_000.0, "ocpp1.6+ocmf"),
        (5500.0, "ocpp1.6"),
    ]


def test_a_tampered_record_fails_and_its_reading_is_not_meter_signed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    r, sink = reader(key=key)
    tampered = signed_record(key, 6_100_000).replace('"RV":6100.000', '"RV":6600.000')
    data = [{"timestamp": TS, "sampledValue": [{"value": tampered, "format": "SignedData"}]}]
    r.from_charger(frame(2, "m", "MeterValues", {"connectorId": 1, "meterValue": data}))
    assert [(s.value, s.source) for s in sink.sample_list] == [(6_600_000.0, "ocpp1.6")]
    assert sink.signed_values[0].status == "signature_failed"


# -- OCPP 2.0.1 -----------------------------------------------------------------------------------------


def test_a_201_transaction_with_signed_values_replaces_the_plain_register_reading() -> None:
    key = ec.generate_private_key(ec.BrainpoolP256R1())
    r, sink = reader("ocpp2.0.1", key)

    def value(wh: int, ctx: str, signed: bool) -> dict[str, Any]:
        v: dict[str, Any] = {"value": wh / 1000, "context": ctx, "unitOfMeasure": {"unit": "kWh"}}
        if signed:
            record = signed_record(key, wh, algorithm="ECDSA-brainpool256r1-SHA256")
            v["signedMeterValue"] = {
                "signedMeterData": base64.b64encode(record.encode()).decode(),
                "signingMethod": "",
                "encodingMethod": "OCMF",
                "publicKey": "",
            }
        return v

    def event(kind: str, wh: int, **extra: Any) -> str:
        body = {
            "eventType": kind,
            "timestamp": TS,
            "triggerReason": "MeterValueClock",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-9", **extra.pop("info", {})},
            "meterValue": [
                {
                    "timestamp": TS,
                    "sampledValue": [
                        value(wh, "Transaction.Begin", kind != "Updated"),
                        {"value": 11000, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}},
                    ],
                }
            ],
            **extra,
        }
        return frame(2, kind, "TransactionEvent", body)

    r.from_charger(
        event(
            "Started", 5_000_000, evse={"id": 2, "connectorId": 1}, idToken={"idToken": "T", "type": "Local"}
        )
    )
    r.from_charger(event("Updated", 5_500_000))
    r.from_charger(event("Ended", 6_000_000, info={"stoppedReason": "EVDisconnected"}))
    energy = [(s.value, s.source) for s in sink.sample_list if s.quantity == "energy_delivered"]
    assert energy == [(5e6, "ocpp2.0.1+ocmf"), (5.5e6, "ocpp2.0.1"), (6e6, "ocpp2.0.1+ocmf")]
    assert [s.meter for s in sink.sample_list] == ["depot-cp1-right"] * 6
    assert [(e.kind, e.meter_wh, e.id_tag, e.reason) for e in sink.sessions] == [
        ("start", 5e6, "T", None),
        ("stop", 6e6, None, "EVDisconnected"),
    ]
    assert [v.status for v in sink.signed_values] == ["verified", "verified"] and not sink.problems


def test_a_plain_value_that_disagrees_with_its_signed_one_is_reported() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    r, sink = reader("ocpp2.0.1", key)
    smv = {
        "signedMeterData": base64.b64encode(signed_record(key, 6_000_000).encode()).decode(),
        "signingMethod": "",
        "encodingMethod": "OCMF",
        "publicKey": "",
    }
    mv = [{"timestamp": TS, "sampledValue": [{"value": 6500000, "signedMeterValue": smv}]}]
    r.from_charger(frame(2, "m", "MeterValues", {"evseId": 1, "meterValue": mv}))
    assert [(s.value, s.source) for s in sink.sample_list] == [(6e6, "ocpp2.0.1+ocmf")]
    assert "differs from the meter-signed" in sink.problems[0].problem


def test_201_multiplier_and_an_unknown_unit() -> None:
    r, sink = reader("ocpp2.0.1")
    mv = [
        {
            "timestamp": TS,
            "sampledValue": [
                {"value": 5.5, "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
                {"value": 1, "unitOfMeasure": {"unit": "MWh"}},
            ],
        }
    ]
    r.from_charger(frame(2, "m", "MeterValues", {"evseId": 0, "meterValue": mv}))
    assert [(s.meter, s.value) for s in sink.sample_list] == [("CP-1.0", 5500.0)]
    assert sink.problems[0].problem == "meterValue[0].sampledValue[1].unit: 'MWh' is not one of Wh, kWh"


# -- problems -------------------------------------------------------------------------------------------

BAD = [
    ("not json", "not JSON"),
    ('{"a": 1}', "not an OCPP-J message"),
    (
        frame(2, "x", "StartTransaction", {"connectorId": "one", "meterStart": 1, "timestamp": TS}),
        "StartTransaction: connectorId: 'one' is not a non-negative integer",
    ),
    (
        frame(2, "x", "StartTransaction", {"connectorId": 1, "meterStart": 1, "timestamp": "yesterday"}),
        "StartTransaction: timestamp: 'yesterday' is not an RFC 3339 time",
    ),
    (
        frame(
            2,
            "x",
            "MeterValues",
            {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": "12,5"}]}]},
        ),
        "meterValue[0].sampledValue[0].value: '12,5' is not a number",
    ),
    (
        frame(
            2,
            "x",
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {"timestamp": TS, "sampledValue": [{"value": "OCMF|{}|{}", "format": "SignedData"}]}
                ],
            },
        ),
        None,
    ),
    (
        frame(2, "x", "MeterValues", [1, 2]),
        "MeterValues: frame: expected [2, <unique id>, <action>, {payload}]",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BAD)
def test_malformed_frames_are_reported_naming_the_field(text: str, problem: str | None) -> None:
    r, sink = reader()
    r.from_charger(text)
    if problem is None:  # a malformed signed value is a SignedValue with status malformed
        detail = "OCMF SD: missing or not a non-empty string"
        assert [(v.status, v.detail) for v in sink.signed_values] == [("malformed", detail)]
        return
    [reported] = sink.problems
    assert reported.problem.startswith(problem) and reported.direction == "charger" and reported.time == T0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
KEYS = [
    "connectorId",
    "transactionId",
    "meterValue",
    "timestamp",
    "sampledValue",
    "value",
    "unit",
    "measurand",
    "format",
    "meterStart",
    "meterStop",
    "transactionData",
    "evse",
    "evseId",
    "eventType",
    "transactionInfo",
    "signedMeterValue",
    "signedMeterData",
    "unitOfMeasure",
    "multiplier",
    "phase",
    "location",
]


def plausible() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.one_of(
        JSON, st.sampled_from(["SignedData", TS, "OCMF|{}|{}", "Energy.Active.Import.Register", "1e999"])
    )
    return st.recursive(
        st.dictionaries(st.sampled_from(KEYS), leaf, max_size=5),
        lambda inner: st.dictionaries(st.sampled_from(KEYS), inner | st.lists(inner, max_size=2), max_size=5),
        max_leaves=20,
    )


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["ocpp1.6", "ocpp2.0.1"]),
    st.sampled_from(["StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent", "Heartbeat"]),
    plausible(),
    st.one_of(JSON, st.text(max_size=5)),
)
def test_no_frame_makes_the_reader_raise(
    version: str, action: str, payload: dict[str, Any], result: Any
) -> None:
    r, sink = reader(version, ec.generate_private_key(ec.SECP256R1()))
    r.from_charger(frame(2, "u1", action, payload))
    r.from_charger(
        frame(2, "u2", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 1, "timestamp": TS})
    )
    r.from_csms(frame(3, "u2", result))
    r.from_csms(json.dumps(result))
    for s in sink.sample_list:
        assert isinstance(s.value, float) and s.meter.startswith(("CP-1.", "depot-cp1-right"))


def test_a_binary_frame_is_a_problem() -> None:
    r, sink = reader()
    r.from_charger(b"\x00\xff")
    assert sink.problems[0].problem == "binary frame (OCPP-J frames are text)"
