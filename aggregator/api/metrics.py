"""``/metrics``: the aggregator's state in the Prometheus text exposition format (0.0.4).

Store-derived gauges are read at scrape time (the store is the source of truth, shared with
``aggregator run``); API request counts and a latency histogram are kept in process.
Per enrolled gateway: when its latest batch arrived, how far its evidence reaches, its
highest seq and its chain gaps, for the alert rules in packaging/prometheus/ (docs/monitoring.md).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from evidence.chain import ChainVerdict
from evidence.wire import RejectReason

if TYPE_CHECKING:
    from aggregator.store import Gap, GatewayEntry

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsSource(Protocol):
    def verdict_counts(self) -> dict[str, int]: ...
    def rejection_counts(self) -> dict[str, int]: ...
    def influx_backlog(self) -> tuple[int, int]: ...
    def gateways(self) -> list[GatewayEntry]: ...
    def evidence_reach(self, gateway: str, meters: Collection[str]) -> tuple[int, int]: ...
    def highest_seq(self, gateway: str) -> int: ...
    def gaps(self, gateway: str | None = None) -> list[Gap]: ...


# Every reason and stored verdict is served from the start, at 0: a series that first appears
# at 1 has no earlier sample, and delta() in an alert would miss that first fork.
STORED_VERDICTS = tuple(v.value for v in ChainVerdict if v.accepted)
REJECT_REASONS = tuple(r.value for r in RejectReason)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """API request counts and latency per (method, route, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._buckets: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            hk = (method, route)
            counts = self._buckets.setdefault(hk, [0] * (len(BUCKETS) + 1))
            counts[bisect_left(BUCKETS, seconds)] += 1
            self._sums[hk] = self._sums.get(hk, 0.0) + seconds

    def render(self, store: MetricsSource) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("puhui_batches_stored", "gauge", "Batches held in the evidence store, by verdict.")
        verdicts = dict.fromkeys(STORED_VERDICTS, 0) | store.verdict_counts()
        for verdict, n in sorted(verdicts.items()):
            out.append(f'puhui_batches_stored{{verdict="{_label(verdict)}"}} {n}')
        family("puhui_rejections", "gauge", "Refused payloads by reason (repeats and overflow counted).")
        for reason, n in sorted((dict.fromkeys(REJECT_REASONS, 0) | store.rejection_counts()).items()):
            out.append(f'puhui_rejections{{reason="{_label(reason)}"}} {n}')
        pending, failed = store.influx_backlog()
        family("puhui_influx_outbox_batches", "gauge", "Batches not yet in InfluxDB, by state.")
        out.append(f'puhui_influx_outbox_batches{{state="pending"}} {pending}')
        out.append(f'puhui_influx_outbox_batches{{state="failed"}} {failed}')
        _gateway_families(store, family, out)
        with self._lock:
            requests = dict(self._requests)
            buckets = {k: list(v) for k, v in self._buckets.items()}
            sums = dict(self._sums)
        family("puhui_api_requests_total", "counter", "API requests answered, by method, route and status.")
        for (method, route, status), n in sorted(requests.items()):
            out.append(
                f'puhui_api_requests_total{{method="{method}",route="{_label(route)}",status="{status}"}} {n}'
            )
        family("puhui_api_request_seconds", "histogram", "API request latency in seconds.")
        for (method, route), counts in sorted(buckets.items()):
            labels = f'method="{method}",route="{_label(route)}"'
            running = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'puhui_api_request_seconds_bucket{{{labels},le="{le}"}} {running}')
            out.append(f"puhui_api_request_seconds_sum{{{labels}}} {sums[(method, route)]!r}")
            out.append(f"puhui_api_request_seconds_count{{{labels}}} {running}")
        return "\n".join(out) + "\n"


def _gateway_families(store: MetricsSource, family: Callable[[str, str, str], None], out: list[str]) -> None:
    """Per enrolled gateway (labels gateway, site): what the silent-gateway, lag and gap alerts read."""
    gaps: dict[tuple[str, str], int] = {}
    for gap in store.gaps():
        if gap.filled_ms is None:
            state = "open" if gap.explained_by_seq is None else "explained"
            gaps[(gap.gateway, state)] = gaps.get((gap.gateway, state), 0) + 1
    rows = []
    for entry in store.gateways():
        end_s, received_ms = store.evidence_reach(entry.gateway, [m.meter for m in entry.meters])
        labels = f'gateway="{_label(entry.gateway)}",site="{_label(entry.site)}"'
        rows.append((entry.gateway, labels, received_ms / 1000, end_s, store.highest_seq(entry.gateway)))
    family("puhui_gateway_last_batch_received_seconds", "gauge",
           "When the aggregator stored the gateway's latest batch, Unix time (0: none yet).")  # fmt: skip
    out.extend(f"puhui_gateway_last_batch_received_seconds{{{labels}}} {received!r}"
               for _, labels, received, _, _ in rows)  # fmt: skip
    family("puhui_gateway_last_interval_end_seconds", "gauge",
           "End of the latest interval stored from the gateway, Unix time (0: none yet).")  # fmt: skip
    out.extend(f"puhui_gateway_last_interval_end_seconds{{{labels}}} {end}" for _, labels, _, end, _ in rows)
    family("puhui_gateway_highest_seq", "gauge", "Highest batch seq stored from the gateway (0: none yet).")
    out.extend(f"puhui_gateway_highest_seq{{{labels}}} {seq}" for _, labels, _, _, seq in rows)
    family("puhui_gateway_chain_gaps", "gauge",
           "Batch seqs missing from the gateway's chain: open (not yet arrived) or explained "
           "(the gateway reported them dropped).")  # fmt: skip
    for gateway, labels, *_ in rows:
        for state in ("open", "explained"):
            n = gaps.get((gateway, state), 0)
            out.append(f'puhui_gateway_chain_gaps{{{labels},state="{state}"}} {n}')
