"""``/metrics``: the aggregator's state in the Prometheus text exposition format (0.0.4).

Store-derived gauges are read at scrape time (the store is the source of truth, shared with
``aggregator run``); API request counts and a latency histogram are kept in process.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Protocol

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsSource(Protocol):
    def verdict_counts(self) -> dict[str, int]: ...
    def rejection_counts(self) -> dict[str, int]: ...
    def influx_backlog(self) -> tuple[int, int]: ...


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
        for verdict, n in sorted(store.verdict_counts().items()):
            out.append(f'puhui_batches_stored{{verdict="{_label(verdict)}"}} {n}')
        family("puhui_rejections", "gauge", "Refused payloads by reason (repeats and overflow counted).")
        for reason, n in sorted(store.rejection_counts().items()):
            out.append(f'puhui_rejections{{reason="{_label(reason)}"}} {n}')
        pending, failed = store.influx_backlog()
        family("puhui_influx_outbox_batches", "gauge", "Batches not yet in InfluxDB, by state.")
        out.append(f'puhui_influx_outbox_batches{{state="pending"}} {pending}')
        out.append(f'puhui_influx_outbox_batches{{state="failed"}} {failed}')
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
