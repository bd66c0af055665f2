"""Gateway registry: enrol from the self-signed document, key validity by seq and time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.config import load_config
from aggregator.errors import AlreadyEnrolled, ConfigError, NotEnrolled, RevokedKey, UnknownKey
from aggregator.registry import GatewayRegistry
from aggregator.store import SQLiteEvidenceStore
from evidence import BatchHeader, KeyRotationRecord, generate_key
from evidence.errors import BadSignature, KeyMismatch, MalformedMessage, MalformedRecord
from evidence.keys import key_id, public_key_b64
from tests.aggregator.ingest_support import SimGateway


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[GatewayRegistry]:
    store = SQLiteEvidenceStore(tmp_path / "e.sqlite3")
    yield GatewayRegistry(store)
    store.close()


def _header(gw: str, kid: str, seq: int, created_ms: int = 1000) -> BatchHeader:
    return BatchHeader(gw, kid, seq, "0" * 64, created_ms, 0, "0" * 64)


def test_enrol_list_and_key_validity(registry: GatewayRegistry) -> None:
    gw = SimGateway("gw-1")
    entry = registry.enrol(gw.enrolment(), at_ms=5)
    assert sorted(m.meter for m in entry.meters) == ["hm-01", "pv-01"]
    assert [g.gateway for g in registry.gateways()] == ["gw-1"]
    assert key_id(registry.key_for(_header("gw-1", gw.key.key_id, 1))) == gw.key.key_id
    assert (
        registry.enrol(gw.enrolment(rated_kw=3.0), at_ms=6).meters[0].rated_power_kw == 3.0
    )  # same key: update
    with pytest.raises(NotEnrolled):
        registry.key_for(_header("gw-2", gw.key.key_id, 1))
    with pytest.raises(UnknownKey):
        registry.key_for(_header("gw-1", generate_key().key_id, 1))


def test_forged_enrolment_is_refused(registry: GatewayRegistry) -> None:
    data = bytearray(SimGateway("gw-1").enrolment())
    data[40] ^= 1
    with pytest.raises((BadSignature, MalformedMessage, KeyMismatch)):
        registry.enrol(bytes(data), at_ms=0)
    assert registry.gateways() == []


def test_revoke_from_a_time_and_re_enrol_with_a_new_key(registry: GatewayRegistry) -> None:
    gw = SimGateway("gw-1")
    registry.enrol(gw.enrolment(), at_ms=0)
    other = SimGateway("gw-1")
    with pytest.raises(AlreadyEnrolled):
        registry.enrol(other.enrolment(), at_ms=1)
    registry.revoke("gw-1", from_ms=2000)
    registry.key_for(_header("gw-1", gw.key.key_id, 3, created_ms=1999))
    with pytest.raises(RevokedKey, match="revoked from 2000"):
        registry.key_for(_header("gw-1", gw.key.key_id, 3, created_ms=2000))
    registry.enrol(other.enrolment(), at_ms=3)  # every key revoked: a new one may come
    assert registry.key_for(_header("gw-1", other.key.key_id, 1))  # nothing stored: valid from seq 1


def test_rotation_supersedes_the_old_key_from_effective_seq(registry: GatewayRegistry) -> None:
    gw = SimGateway("gw-1")
    registry.enrol(gw.enrolment(), at_ms=0)
    new = generate_key()
    record = KeyRotationRecord(new.key_id, public_key_b64(new.public_key), 5)
    entry = registry.rotation_entry(_header("gw-1", gw.key.key_id, 4), record, 10)
    assert entry is not None and entry.valid_from_seq == 5
    with pytest.raises(MalformedRecord, match="effective_seq"):
        registry.rotation_entry(_header("gw-1", gw.key.key_id, 5), record, 10)
    with pytest.raises(MalformedRecord, match="not the key's id"):
        registry.rotation_entry(
            _header("gw-1", gw.key.key_id, 4), KeyRotationRecord("00" * 16, record.new_public_key, 5), 1
        )
    registry._store.add_key(entry)
    registry.refresh()
    registry.key_for(_header("gw-1", gw.key.key_id, 4))
    with pytest.raises(RevokedKey, match="superseded from seq 5"):
        registry.key_for(_header("gw-1", gw.key.key_id, 5))
    with pytest.raises(UnknownKey, match="valid from seq 5"):
        registry.key_for(_header("gw-1", new.key_id, 4))
    assert key_id(registry.key_for(_header("gw-1", new.key_id, 5))) == new.key_id


def test_config_errors_name_the_file_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "agg.yaml"
    path.write_text(
        "mqtt: {insecure: true}\nstore: {path: e.db}\ninflux: {url: ftp://x, database: d, retry_max: 3}\n"
        "key_file: k.pem\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"{path}: influx.url:" in text and f"{path}: influx.retry_max: unknown key" in text
    path.write_text(
        "mqtt: {insecure: true}\nstore: {path: e.db}\n"
        "influx: {url: 'http://x', database: d}\nkey_file: k.pem\n"
    )
    config = load_config(path)
    assert config.store.path == tmp_path / "e.db" and config.key_file == tmp_path / "k.pem"
    path.write_text("store: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
