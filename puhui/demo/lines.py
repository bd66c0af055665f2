"""What ``puhui demo`` shows of its shared RS-485 lines (DL/T 645, CJ/T 188, RTU over TCP).

Printed only for gateways whose site config has ``lines:``, so fleets without a line
(``demo.yaml``) print what they always did:

- :func:`print_line_reads`: per line, its meters by protocol and how each was read (the
  gateway's own poll counters at the period's end);
- :func:`print_dead_on_line`: a meter dead on a line costs the meters queued behind it on
  the line at most its own timeout per poll. Measured on the evidence: each interval
  record's closing reading (taken by the poll at the interval's end) against that end,
  for the line's other meters, inside and outside the dead window.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from puhui.demo.model import Fault, Run

if TYPE_CHECKING:
    from aggregator.store import SQLiteEvidenceStore
    from puhui.demo.setup import GatewayRun

PROTOCOL = {"dlt645": "DL/T 645", "cjt188": "CJ/T 188", "modbus_rtu": "Modbus RTU"}


def line_of(gw: GatewayRun, meter: str) -> dict[str, Any] | None:
    """The ``lines:`` entry ``meter`` hangs on in ``gw``'s site config (None: not on a line)."""
    cfg = next((m for m in gw.config.get("meters", []) if m["id"] == meter), None)
    line = ((cfg or {}).get("connection") or {}).get("line")
    return next((entry for entry in gw.config.get("lines", []) if entry["id"] == line), None)


def on_line(gw: GatewayRun, line: str) -> list[dict[str, Any]]:
    """The meters of ``gw``'s site config on line ``line``."""
    return [m for m in gw.config.get("meters", []) if (m.get("connection") or {}).get("line") == line]


def protocol(gw: GatewayRun, meter: str) -> str:
    """The protocol ``meter`` is read with, as a person names it."""
    cfg: dict[str, Any] = next((m for m in gw.config.get("meters", []) if m["id"] == meter), {})
    return PROTOCOL.get(cfg.get("driver", ""), "Modbus")


def _where(entry: dict[str, Any]) -> str:
    if entry["kind"] == "tcp_server":
        return f"transparent serial server {entry['host']}:{entry['port']}"
    return f"serial port {entry['port']}"


def print_line_reads(run: Run) -> None:
    """Per shared line: its meters by protocol and the gateway's polls of each."""
    for gw in run.gateways:
        for entry in gw.config.get("lines", []):
            meters = on_line(gw, entry["id"])
            kinds = Counter(PROTOCOL[m["driver"]] for m in meters)
            devices = (gw.final_status or {}).get("devices") or {}
            health = [devices.get(m["id"]) or {} for m in meters]
            read = sum(1 for h in health if int(h.get("ok", 0)) > 0)
            ok = [int(h.get("ok", 0)) for h in health]
            failed, skipped = (sum(int(h.get(k, 0)) for h in health) for k in ("failed", "skipped"))
            print(
                f"\nshared line {entry['id']} of {gw.id} ({_where(entry)}, "
                f"{entry['baudrate']} baud, timeout {entry['timeout_s'] * 1000:.0f} ms a request): "
                f"{len(meters)} meters ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})"
            )
            if not devices:
                print("  the gateway's status was not available at the period's end: reads not counted")
                continue
            print(
                f"  meters read: {read}/{len(meters)}; polls answered per meter {min(ok)}..{max(ok)}, "
                f"failed {failed}, skipped by an open breaker {skipped} (all meters, whole run)"
            )


def print_dead_on_line(run: Run, f: Fault, gw: GatewayRun, source: SQLiteEvidenceStore) -> None:
    """How long the dead meter made the others on its line wait (nothing if not on a line)."""
    entry = line_of(gw, f.target)
    if entry is None:
        return
    others = [m["id"] for m in on_line(gw, entry["id"]) if m["id"] != f.target]
    counted = {m["id"]: set(m.get("counts", [])) for m in on_line(gw, entry["id"])}
    inside: list[float] = []
    outside: list[float] = []
    late = 0
    p0, p1 = run.period
    for ai in source.attested_intervals(gateway=gw.id, meters=others, start=p0, end=p1):
        r = ai.record
        if r.counter_end_time_ms is None or r.quantity not in counted.get(r.meter, ()):
            continue
        offset = r.counter_end_time_ms / 1000 - r.end
        if offset >= run.poll_s:  # the boundary poll brought no reading: a later poll's closes it
            late += 1
            continue
        (inside if f.start < r.end <= f.end else outside).append(offset)
    timeout = float(entry["timeout_s"])
    cost = timeout * run.factor  # one timeout, in simulated seconds
    print(
        f"    the {len(others)} other meters on line {entry['id']} kept being read: its timeout is "
        f"{timeout * 1000:.0f} ms of wall time a request, {cost:.0f} s simulated at x{run.factor:g}"
    )
    if not inside or not outside:
        print("    no closing readings to compare inside and outside the dead window")
        return
    a, b = np.array(inside), np.array(outside)
    bound = float(b.max()) + cost
    verdict = "NOT DELAYED BEYOND ITS TIMEOUT" if a.max() <= bound else "DELAYED BEYOND ITS TIMEOUT"
    print(
        f"    their closing readings after the slot end: dead window median {np.median(a):+.0f} s, max "
        f"{a.max():+.0f} s ({a.size} readings); rest of the period median {np.median(b):+.0f} s, max "
        f"{b.max():+.0f} s ({b.size}); max {a.max():+.0f} s <= {b.max():+.0f} s + {cost:.0f} s: {verdict}"
        + (f" ({late} closed by a later poll, left out)" if late else "")
    )
