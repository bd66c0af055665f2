"""Back-end session import: idempotence, per-record checks, manifests (docs/ev-sessions.md)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from aggregator.sessions.errors import ManifestRefused, SessionFileError, UnknownNetwork
from aggregator.sessions.intake import import_sessions
from evidence import generate_key, public_key_pem
from firmware_sim.ev_platform import manifest, tampered, to_json
from puhui.cli import main

from .support import NETWORK, NOW_MS, WEEK, WEEK_END, enrolled


def test_a_week_imported_twice_is_held_once(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        data, m = net.json_file()
        first = import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file")
        again = import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file")
        held = store.imported_sessions(NETWORK)
    finally:
        store.close()
    n = len(net.orders)
    assert n > 100  # 20 connectors, a week
    assert (len(first.accepted), len(first.duplicate), first.refused) == (n, 0, [])
    assert (len(again.accepted), len(again.duplicate), again.refused) == (0, n, [])
    assert len(held) == n
    truth = sum(o.truth_wh for o in net.orders)
    assert sum(s.record.energy_wh for s in held) == pytest.approx(truth, abs=10.0 * n)  # 0.01 kWh each


def test_the_same_week_as_csv_is_the_same_records(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        import_sessions(store, NETWORK, *net.json_file(), now_ms=NOW_MS, via="file")
        data, m = net.csv_file()
        report = import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file")
        assert store.session_source(report.source_sha256) == (data, m)  # the exact bytes, kept
    finally:
        store.close()
    assert (len(report.accepted), len(report.duplicate)) == (0, len(net.orders))


def _refusals(tmp_path: Path, orders: list, **kw: object) -> dict[str, tuple[str, str]]:  # type: ignore[type-arg]
    store, net = enrolled(tmp_path / "agg.db")
    try:
        report = import_sessions(store, NETWORK, *net.json_file(orders), now_ms=NOW_MS, via="file")
    finally:
        store.close()
    assert len(report.accepted) + len(report.refused) == len(orders)
    return {r.session_id: (r.field, r.reason) for r in report.refused}


def test_energy_not_matching_its_readings_is_refused_naming_session_and_field(tmp_path: Path) -> None:
    from .support import week_orders

    orders = week_orders()
    bad = tampered(orders[5], energy_kwh=orders[5].energy_kwh + 1.0)
    refused = _refusals(tmp_path, [*orders[:5], bad, *orders[6:]])
    assert list(refused) == [bad.session_id]
    field, reason = refused[bad.session_id]
    assert field == "energy" and "does not match the readings" in reason


def test_overlapping_sessions_on_a_connector_are_refused(tmp_path: Path) -> None:
    from .support import week_orders

    orders = week_orders()
    first = orders[0]
    same = [o for o in orders if (o.charger, o.connector) == (first.charger, first.connector)]
    later = same[1]
    # a second session on the connector that starts before the first ends
    overlap = tampered(
        later, session_id="net-demo-overlap",
        start=first.stop - timedelta(minutes=10), stop=first.stop + timedelta(minutes=5),
        start_kwh=first.stop_kwh, stop_kwh=first.stop_kwh + 0.5, energy_kwh=0.5,
    )  # fmt: skip
    refused = _refusals(tmp_path, [*orders, overlap])
    assert refused == {"net-demo-overlap": ("start", f"overlaps session {first.session_id} on charger "
                                            f"{first.charger} connector {first.connector}")}  # fmt: skip


def test_a_start_reading_below_the_previous_stop_is_refused(tmp_path: Path) -> None:
    from .support import week_orders

    orders = week_orders()
    first = orders[0]
    nxt = next(o for o in orders[1:] if (o.charger, o.connector) == (first.charger, first.connector))
    back = tampered(
        nxt, start_kwh=first.stop_kwh - 1.0, energy_kwh=round(nxt.stop_kwh - first.stop_kwh + 1.0, 2)
    )
    refused = _refusals(tmp_path, [back if o is nxt else o for o in orders])
    assert refused[nxt.session_id][0] == "start_reading"
    assert first.session_id in refused[nxt.session_id][1]


def test_power_above_the_nameplate_is_refused(tmp_path: Path) -> None:
    from .support import week_orders

    orders = week_orders()
    o = orders[3]
    fast = tampered(o, stop_kwh=round(o.start_kwh + 500.0, 2), energy_kwh=500.0)  # 500 kWh on 11 kW
    refused = _refusals(tmp_path, [fast if x is o else x for x in orders])
    assert refused[o.session_id][0] == "energy" and "above the nameplate 11 kW" in refused[o.session_id][1]


def test_the_same_id_with_other_content_is_refused(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        import_sessions(store, NETWORK, *net.json_file(net.orders[:10]), now_ms=NOW_MS, via="file")
        changed = tampered(net.orders[2], energy_kwh=round(net.orders[2].energy_kwh - 0.005, 3))
        report = import_sessions(
            store, NETWORK, *net.json_file([*net.orders[:2], changed]), now_ms=NOW_MS, via="http"
        )
        kept = {s.record.session_id: s.record.energy_wh for s in store.imported_sessions(NETWORK)}
    finally:
        store.close()
    assert [(r.session_id, r.field) for r in report.refused] == [(changed.session_id, "session_id")]
    assert len(report.duplicate) == 2
    assert kept[changed.session_id] == pytest.approx(net.orders[2].energy_kwh * 1000)  # the first copy stays


def test_a_manifest_that_does_not_verify_refuses_the_import_and_keeps_nothing(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        data, good = net.json_file()
        other = manifest(generate_key(), NETWORK, data, len(net.orders), WEEK, WEEK_END)
        with pytest.raises(ManifestRefused, match="pinned to"):
            import_sessions(store, NETWORK, data, other, now_ms=NOW_MS, via="file")
        with pytest.raises(ManifestRefused, match="does not match the file"):
            import_sessions(store, NETWORK, data + b" ", good, now_ms=NOW_MS, via="file")
        with pytest.raises(ManifestRefused, match="no manifest"):
            import_sessions(store, NETWORK, data, b"", now_ms=NOW_MS, via="file")
        forged = good.replace(b'"records":', b'"records": ', 1)
        with pytest.raises(ManifestRefused):
            import_sessions(store, NETWORK, data, forged, now_ms=NOW_MS, via="file")
        short = manifest(net.key, NETWORK, data, len(net.orders) - 1, WEEK, WEEK_END)
        with pytest.raises(ManifestRefused, match="names"):
            import_sessions(store, NETWORK, data, short, now_ms=NOW_MS, via="file")
        with pytest.raises(UnknownNetwork):
            import_sessions(store, "net-other", data, good, now_ms=NOW_MS, via="file")
        assert (
            store.imported_sessions(NETWORK) == []
            and store.session_source(hashlib.sha256(data).hexdigest()) is None
        )
        assert store.session_imports() == []
    finally:
        store.close()


def test_records_outside_the_manifest_period_or_for_another_network_are_refused(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        orders = net.orders[:4]
        data = to_json([*orders[:2], tampered(orders[2], network="net-x"), orders[3]])
        m = manifest(net.key, NETWORK, data, 4, WEEK, orders[3].stop - timedelta(seconds=1))
        report = import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file")
    finally:
        store.close()
    fields = {r.session_id: r.field for r in report.refused}
    assert fields == {orders[2].session_id: "network", orders[3].session_id: "stop"}


def test_not_a_session_file_is_refused_whole(tmp_path: Path) -> None:
    store, net = enrolled(tmp_path / "agg.db")
    try:
        data = b"when,what\n1,2\n"
        m = manifest(net.key, NETWORK, data, 1, WEEK, WEEK_END)
        with pytest.raises(SessionFileError, match="header must name the columns"):
            import_sessions(store, NETWORK, data, m, now_ms=NOW_MS, via="file", name="orders.csv")
    finally:
        store.close()


def _config(tmp_path: Path, **store: object) -> Path:
    cfg = tmp_path / "aggregator.yaml"
    cfg.write_text(yaml.safe_dump({
        "mqtt": {"insecure": True}, "store": {"path": str(tmp_path / "agg.db"), **store},
        "influx": {"url": "http://127.0.0.1:9", "database": "unused"}, "key_file": str(tmp_path / "k.pem"),
    }))  # fmt: skip
    return cfg


def test_the_cli_enrols_a_network_and_imports_a_week_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from .support import week_orders

    cfg = _config(tmp_path)
    key = generate_key()
    (tmp_path / "net.pub.pem").write_bytes(public_key_pem(key.public_key))
    orders = week_orders()
    data = to_json(orders)
    (tmp_path / "week.json").write_bytes(data)
    (tmp_path / "week.manifest").write_bytes(manifest(key, NETWORK, data, len(orders), WEEK, WEEK_END))
    base = ["aggregator", "networks", "--config", str(cfg)]
    assert main([*base, "add", NETWORK, "--key", str(tmp_path / "net.pub.pem")]) == 0
    imp = ["aggregator", "sessions", "--config", str(cfg), "import", str(tmp_path / "week.json"),
           "--manifest", str(tmp_path / "week.manifest"), "--network", NETWORK]  # fmt: skip
    assert main(imp) == 0
    assert main(imp) == 0
    out = capsys.readouterr().out
    assert f"{len(orders)} accepted, 0 duplicate, 0 refused" in out
    assert f"0 accepted, {len(orders)} duplicate, 0 refused" in out
    (tmp_path / "week.manifest").write_bytes(
        manifest(generate_key(), NETWORK, data, len(orders), WEEK, WEEK_END)
    )
    assert main(imp) == 1
    assert "pinned to" in capsys.readouterr().err


def test_a_postgres_store_refuses_session_import_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(
        tmp_path, postgres={"host": "127.0.0.1", "port": 9, "dbname": "x", "user": "x", "insecure": True}
    )
    (tmp_path / "k.pub.pem").write_bytes(public_key_pem(generate_key().public_key))
    rc = main(
        ["aggregator", "networks", "--config", str(cfg), "add", NETWORK, "--key", str(tmp_path / "k.pub.pem")]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "kept in the SQLite evidence store only" in err and "Traceback" not in err
