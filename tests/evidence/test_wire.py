"""Gateway <-> aggregator messages: topics, signed acks and rejections."""

import pytest

from evidence.errors import BadSignature, MalformedMessage
from evidence.keys import generate_key
from evidence.wire import (
    Ack,
    Reject,
    RejectReason,
    ack_topic,
    batch_subscription,
    batch_topic,
    check_gateway_id,
    decode_reply,
    encode_reply,
    gateway_from_topic,
    reject_topic,
)

AGG = generate_key()


def test_topics() -> None:
    assert batch_topic("gw-1") == "puhui/v1/gw-1/batch"
    assert ack_topic("gw-1") == "puhui/v1/gw-1/ack"
    assert reject_topic("gw-1") == "puhui/v1/gw-1/reject"
    assert batch_subscription() == "$share/puhui-aggregators/puhui/v1/+/batch"
    assert gateway_from_topic("puhui/v1/gw-1/batch") == "gw-1"
    with pytest.raises(MalformedMessage):
        gateway_from_topic("puhui/v1/gw+1/batch")


@pytest.mark.parametrize("bad", ["", "a/b", "gw#", "+", "x" * 65, "-lead", "ü"])
def test_gateway_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="gateway id"):
        check_gateway_id(bad)


def test_ack_and_reject_round_trip_signed() -> None:
    ack = Ack("gw-1", 7, "ab" * 32, "stored", 1234)
    rej = Reject("gw-1", 8, None, RejectReason.UNKNOWN_KEY.value, "key 00ff is not enrolled", 1235)
    for msg in (ack, rej):
        assert decode_reply(encode_reply(msg, AGG), AGG.public_key) == msg


def test_forged_or_altered_ack_is_refused() -> None:
    data = encode_reply(Ack("gw-1", 7, "ab" * 32, "stored", 1234), AGG)
    with pytest.raises(BadSignature):
        decode_reply(data.replace(b'"seq":7', b'"seq":8'), AGG.public_key)
    forger = generate_key()
    with pytest.raises(BadSignature, match="expected"):
        decode_reply(encode_reply(Ack("gw-1", 7, "ab" * 32, "stored", 1), forger), AGG.public_key)


def test_malformed_replies() -> None:
    with pytest.raises(MalformedMessage, match="body line"):
        decode_reply(b"{}", None)
    with pytest.raises(MalformedMessage, match="reply type"):
        decode_reply(b'{"type":"nack"}\n{}\n', None)
    with pytest.raises(MalformedMessage, match="reject message"):
        decode_reply(b'{"type":"reject","reason":"because"}\n{}\n', None)


def test_reject_reasons_say_whether_retry_can_help() -> None:
    assert RejectReason.NOT_ENROLLED.retry and not RejectReason.BAD_SIGNATURE.retry


@pytest.mark.parametrize("nested", [b"[" * 100_000, b'{"a":' * 100_000])
def test_every_evidence_parser_refuses_deep_nesting_with_its_own_error(nested: bytes) -> None:
    """json.loads raises RecursionError past about 1,000 levels: each parser says malformed."""
    from evidence.batch import parse_batch, parse_header
    from evidence.enrolment import parse_enrolment
    from evidence.errors import EvidenceError
    from evidence.records import decode_record

    for parse, data in (
        (parse_header, nested),
        (parse_batch, nested + b"\nsig\nrec\n"),
        (decode_record, nested),
        (lambda d: decode_reply(d, None), nested + b"\n{}\n"),
        (parse_enrolment, nested + b"\n{}\n"),
    ):
        with pytest.raises(EvidenceError):
            parse(data)
