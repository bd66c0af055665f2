"""A stand-in charging network platform: a simulated week of charging orders, exported as a
session file (JSON or CSV, docs/ev-sessions.md) with the network's signed import manifest.

Each connector is an :class:`~firmware_sim.physics.ev.EvModel` socket stepped once a minute;
a session runs from the car's arrival to its departure, its readings are the connector's
lifetime register (rounded to 0.01 kWh, as platforms store them) and its energy is their
difference. ``truth_wh`` holds the unrounded energy each session delivered. The manifest is
written here from the documented format, independently of the aggregator's code.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey
from firmware_sim.physics.ev import EvModel

CHINA = timezone(timedelta(hours=8))
SESSION_FORMAT = "puhui-ev-sessions/1"
MANIFEST_FORMAT = "puhui-session-manifest/1"
COLUMNS = (
    "network", "session_id", "charger", "connector", "start", "stop",
    "start_reading", "stop_reading", "energy", "unit", "nameplate_kw",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Order:
    """One charging order as the platform holds it (readings and energy in kWh)."""

    network: str
    session_id: str
    charger: str
    connector: str
    start: datetime
    stop: datetime
    start_kwh: float
    stop_kwh: float
    energy_kwh: float
    nameplate_kw: float
    truth_wh: float  # ground truth: what the simulated socket delivered

    def row(self) -> dict[str, Any]:
        return {
            "network": self.network, "session_id": self.session_id, "charger": self.charger,
            "connector": self.connector, "start": self.start.isoformat(), "stop": self.stop.isoformat(),
            "start_reading": self.start_kwh, "stop_reading": self.stop_kwh, "energy": self.energy_kwh,
            "unit": "kWh", "nameplate_kw": self.nameplate_kw,
        }  # fmt: skip


@dataclass
class StandInPlatform:
    """A network of ``chargers`` chargers with ``connectors`` connectors each."""

    network: str = "net-demo"
    chargers: int = 10
    connectors: int = 2
    power_kw: float = 11.0
    seed: int = 24
    step_s: int = 60

    def week(self, start: datetime) -> list[Order]:
        """The orders of the week from ``start`` (sessions that end within it)."""
        return self.orders(start, start + timedelta(days=7))

    def orders(self, start: datetime, end: datetime) -> list[Order]:
        out: list[Order] = []
        for c in range(self.chargers):
            for k in range(self.connectors):
                out += self._connector(
                    f"CP-{c + 1:03d}", str(k + 1), start, end, self.seed * 1000 + c * 10 + k
                )
        return sorted(out, key=lambda o: (o.stop, o.session_id))

    def _connector(
        self, charger: str, connector: str, start: datetime, end: datetime, seed: int
    ) -> list[Order]:
        model = EvModel(power_limit_kw=self.power_kw, seed=seed)
        register_wh = 1_000_000.0 * (seed % 7 + 1)  # a lifetime register, not zero at the start
        t0, steps = start.timestamp(), int((end - start).total_seconds()) // self.step_s
        out: list[Order] = []
        current: tuple[int, float, float] | None = None  # session number, start t, start register
        for i in range(steps):
            t = t0 + i * self.step_s
            s = model.sample(t, self.step_s)
            number = s.session if s.ev_state != "A" else None
            if current is not None and number != current[0]:
                out.append(self._order(charger, connector, current, t, register_wh))
                current = None
            if number is not None and current is None:
                current = (number, t, register_wh)
            register_wh += s.power_w * self.step_s / 3600.0
        return out  # a session still running at the end is exported next week

    def _order(
        self, charger: str, connector: str, cur: tuple[int, float, float], t: float, reg: float
    ) -> Order:
        number, t_start, reg_start = cur
        a, b = round(reg_start / 1000.0, 2), round(reg / 1000.0, 2)
        return Order(
            self.network, f"{self.network}-{charger}-{connector}-{number:05d}", charger, connector,
            datetime.fromtimestamp(t_start, CHINA), datetime.fromtimestamp(t, CHINA),
            a, b, round(b - a, 2), self.power_kw, reg - reg_start,
        )  # fmt: skip


def to_json(orders: list[Order]) -> bytes:
    return json.dumps({"format": SESSION_FORMAT, "sessions": [o.row() for o in orders]}, indent=1).encode()


def to_csv(orders: list[Order]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    for o in orders:
        w.writerow(o.row())
    return buf.getvalue().encode()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest(
    key: GatewayKey, network: str, data: bytes, records: int, start: datetime, end: datetime,
    created: datetime | None = None,
) -> bytes:  # fmt: skip
    """The signed two-line manifest for ``data`` (docs/ev-sessions.md, *Manifest*)."""
    body = {
        "format": MANIFEST_FORMAT,
        "network": network,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "records": records,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "created": (created or end).astimezone(UTC).isoformat(),
    }
    line = _canonical(body)
    sig = base64.b64encode(key.sign(line)).decode("ascii")
    return line + b"\n" + _canonical({"alg": SIGNATURE_ALGORITHM, "key_id": key.key_id, "sig": sig}) + b"\n"


def tampered(order: Order, **changes: Any) -> Order:
    """A copy of ``order`` with fields changed (tests: an inconsistent record)."""
    return replace(order, **changes)


def main(argv: list[str] | None = None) -> int:
    """``python -m firmware_sim.ev_platform --key network.pem --out DIR [--start 2026-03-02]``:
    write a week of orders (``week.json``, ``week.csv``) and a manifest for each."""
    import argparse
    import sys
    from pathlib import Path

    from evidence.errors import EvidenceError
    from evidence.keys import load_private_key

    p = argparse.ArgumentParser(prog="python -m firmware_sim.ev_platform", description=main.__doc__)
    p.add_argument(
        "--key", type=Path, required=True, help="the network's private key (PKCS#8 PEM, mode 0600)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--network", default="net-demo")
    p.add_argument("--chargers", type=int, default=10)
    p.add_argument("--start", default="2026-03-02", help="first day of the week (China time)")
    args = p.parse_args(argv)
    try:
        key = load_private_key(args.key)
        start = datetime.fromisoformat(args.start).replace(tzinfo=CHINA)
    except (EvidenceError, ValueError) as exc:
        print(f"firmware_sim.ev_platform: {exc}", file=sys.stderr)
        return 2
    orders = StandInPlatform(args.network, chargers=args.chargers).week(start)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("week.json", to_json(orders)), ("week.csv", to_csv(orders))):
        (args.out / name).write_bytes(data)
        body = manifest(key, args.network, data, len(orders), start, start + timedelta(days=7))
        (args.out / f"{name}.manifest").write_bytes(body)
    truth = sum(o.truth_wh for o in orders) / 1000
    print(
        f"{len(orders)} sessions, {sum(o.energy_kwh for o in orders):.2f} kWh "
        f"(truth {truth:.3f} kWh) in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
