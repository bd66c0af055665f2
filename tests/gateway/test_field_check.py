"""``gateway check`` on sites of the Chinese field's devices: what a profile could not confirm
about a counted quantity is said at check time, not discovered in the evidence."""

from __future__ import annotations

from typing import Any

from drivers.modbus.profiles import load_profiles
from gateway.cli import unconfirmed_notes
from gateway.config import parse_site

PROFILES = load_profiles()


def _meter(id_: str, profile: str, counts: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": id_, "driver": "modbus_tcp", "connection": {"host": "127.0.0.1"}, "unit_id": 1,
            "profile": profile, "scenario": "pv", "nameplate": {"rated_power_kw": 10, "meter_class": "1"},
            "counts": counts, **extra}  # fmt: skip


def test_check_notes_unconfirmed_counted_quantities_only() -> None:
    site = parse_site(
        {"gateway": {"id": "gw", "site": "s"}, "meters": [
            _meter("grid", "chint-dtsu666", ["energy_import", "power"]),
            _meter("roof", "sungrow-sg", ["energy_generated_kwh"]),
            _meter("old", "sungrow-sg", ["energy_generated"], enabled=False),
            _meter("sdm", "sdm630", ["energy_import"]),
        ]},
        "site.yaml", PROFILES,
    )  # fmt: skip
    notes = unconfirmed_notes(site, PROFILES)
    assert len(notes) == 1, notes
    assert notes[0].startswith("grid counts energy_import: profile chint-dtsu666 says it is unconfirmed")
