"""What ``puhui demo`` secures: its PKI and access list for the demo fleet, and InfluxDB
with authentication (an admin, the aggregator's writer, a reader; passwords in 0600 files)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aggregator.influx import InfluxV1Client
from aggregator.influx.errors import InfluxAuthError, InfluxError
from firmware_sim import load_fleet
from puhui.broker import access_document
from puhui.demo.security import AGGREGATOR, make_demo_site, make_influx_users
from testbed.servers import PrivateInfluxDB

DEMO_FLEET = Path(__file__).resolve().parents[2] / "config" / "fleets" / "demo.yaml"


def test_demo_site_names_every_identity_and_gives_the_plug_to_its_gateway(tmp_path: Path) -> None:
    demo = make_demo_site(tmp_path, load_fleet(DEMO_FLEET))
    gateways = ("gw-wanquan-xiaocun", "gw-pv-street", "gw-depot")
    assert demo.site.roster == (AGGREGATOR, *gateways, "sim-demo")
    [plug] = demo.site.meters
    assert (plug.topic, plug.publisher, plug.gateway) == ("tele/plug-01/SENSOR", "sim-demo", "gw-pv-street")
    assert demo.files.access == tmp_path / "servers" / "mosquitto" / "dynamic-security.json"
    assert stat.S_IMODE(demo.files.access.stat().st_mode) == 0o600
    roles = {r["rolename"] for r in access_document(demo.site)["roles"]}
    assert roles == {"aggregator:aggregator", *(f"gateway:{g}" for g in gateways), "meter:sim-demo"}
    for identity in demo.site.roster:
        tls = demo.tls(identity)
        assert stat.S_IMODE(Path(tls["key_file"]).stat().st_mode) == 0o600
        assert Path(tls["cert_file"]).is_file() and tls["ca_file"] == str(tmp_path / "pki" / "ca.crt")


@pytest.mark.integration
async def test_influxdb_users_have_exactly_their_rights(tmp_path: Path) -> None:
    with PrivateInfluxDB(tmp_path / "influxd", auth_enabled=True) as server:
        users = await make_influx_users(
            server.url, "puhui_demo", tmp_path / "aggregator" / "influx.password", tmp_path / "users"
        )
        for path in (users.admin, users.writer, users.reader):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        line = b"puhui_interval,gateway=gw-a delta=1.5 1700000000000000000"
        async with users.writing() as writer:
            await writer.write(line)
            with pytest.raises(InfluxError):  # the aggregator's user writes, and only writes
                await writer.query('SELECT * FROM "puhui_interval"')
        async with users.reading() as reader:
            [series] = await reader.query('SELECT "delta" FROM "puhui_interval"', epoch=None)
            assert series["values"] == [["2023-11-14T22:13:20Z", 1.5]]
            with pytest.raises(InfluxError):
                await reader.write(line)
        async with InfluxV1Client(server.url, "puhui_demo") as anonymous:
            for attempt in (anonymous.query('SELECT * FROM "puhui_interval"'), anonymous.write(line)):
                with pytest.raises(InfluxAuthError):
                    await attempt
        assert "$(cat " in users.curl("SHOW MEASUREMENTS")
        for path in (users.admin, users.writer, users.reader):  # never in a printed command
            assert path.read_text().strip() not in users.curl("SHOW MEASUREMENTS")
