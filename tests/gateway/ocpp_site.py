"""A site config with an OCPP endpoint and the simulated chargers' connectors as its meters
(shared by the OCPP gateway tests and their gateway child process)."""

from __future__ import annotations

from typing import Any

from firmware_sim.ocpp_charger import OcppChargerSpec

ALGORITHMS = ["ECDSA-secp256r1-SHA256", "ECDSA-brainpool256r1-SHA256", "ECDSA-secp384r1-SHA512"]


def charger_specs() -> list[OcppChargerSpec]:
    """Four chargers: 1.6J and 2.0.1, signing and not, one dishonest, one with two connectors."""
    return [
        OcppChargerSpec("CP-A16", "1.6", 2, seed=51, arrivals_per_day=12, signing=ALGORITHMS[0]),
        OcppChargerSpec("CP-B201", "2.0.1", 1, seed=52, arrivals_per_day=12, signing=ALGORITHMS[2]),
        OcppChargerSpec("CP-C16", "1.6", 1, seed=53, arrivals_per_day=12),
        OcppChargerSpec(
            "CP-LIE", "2.0.1", 1, seed=57, arrivals_per_day=12, signing=ALGORITHMS[1], tamper_wh=700
        ),
    ]


def week_fleet() -> list[OcppChargerSpec]:
    """20 chargers: odd 1.6J, even 2.0.1; every 4th has two connectors; 3 of 5 sign."""
    specs = []
    for i in range(20):
        signing = ALGORITHMS[i % 3] if i % 5 in (1, 3, 4) else None
        specs.append(
            OcppChargerSpec(
                f"CP-{i:03d}",
                "1.6" if i % 2 else "2.0.1",
                2 if i % 4 == 0 else 1,
                seed=700 + i,
                power_limit_kw=7.4 if i % 3 else 22.0,
                arrivals_per_day=3.0,
                signing=signing,
                signed_as="json" if i % 10 == 3 else "ocmf",
                quirky_json=i % 3 == 0,
            )
        )
    return specs


def ocpp_site(
    specs: list[OcppChargerSpec],
    keys: dict[str, str],
    upstream: str,
    *,
    port: int = 0,
    clock: dict[str, Any] | None = None,
    state_dir: str | None = None,
    key_file: str | None = None,
    uplink: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The site YAML (as data): one meter per connector, the tap to ``upstream``."""
    meters = [
        {
            "id": f"{s.name}.{c}",
            "driver": "ocpp",
            "scenario": "ev_charging",
            "nameplate": {"rated_power_kw": s.power_limit_kw, "meter_class": "1"},
            "counts": ["energy_delivered"],
            "connection": {"charger": s.name, "connector": c},
            "expected_period_s": s.meter_interval_s,
        }
        for s in specs
        for c in range(1, s.connectors + 1)
    ]
    site: dict[str, Any] = {
        "gateway": {"id": "gw-ocpp", "site": "depot"},
        "interval_minutes": 15,
        "grace_seconds": 300,  # on a fast clock, 300 s are 0.1 s of wall time at 3,000x
        "meters": meters,
        "ocpp": {
            "mode": "tap",
            "tap": {
                "listen": {"host": "127.0.0.1", "port": port},
                "upstream": upstream,
                "chargers": {name: {"meter_key": key} for name, key in keys.items()},
            },
        },
        "status": {"enabled": False},
    }
    if clock is not None:
        site["clock"] = clock
    if state_dir is not None and key_file is not None:
        site["evidence"] = {"state_dir": state_dir, "key_file": key_file}
    if uplink is not None:
        site["uplink"] = uplink
    return site
