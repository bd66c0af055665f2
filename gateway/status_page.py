"""The installer's status page: one HTML page from the status document, for a phone.

No scripts, no external assets: inline CSS, a ``refresh`` meta tag (every 10 s), server-side
rendering of :func:`gateway.status.gateway_status`'s mapping. Every value shown is escaped.
Element ids and ``data-`` attributes name what they show (``#clock``, ``#key-id``,
``#outbox``, ``#last-ack``, ``#last-interval``, ``article.meter[data-meter]``), so tests
and people can find them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from typing import Any

REFRESH_S = 10

_CSS = """
body{font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2430}
header{background:#1d2430;color:#fff;padding:12px 16px}
header h1{font-size:20px;margin:0}header p{margin:2px 0 0;color:#c9d1dc}
main{padding:8px 12px 24px;max-width:720px;margin:auto}
section,article{background:#fff;border-radius:10px;padding:10px 14px;margin:10px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 6px}h3{font-size:16px;margin:0 0 4px}
dl{display:grid;grid-template-columns:minmax(7em,auto) 1fr;gap:4px 12px;margin:0}dt{color:#5b6675}dd{margin:0}
.ok{border-left:6px solid #1f9d55}.bad{border-left:6px solid #d64545}.warn{border-left:6px solid #e0a100}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:13px;color:#fff;background:#5b6675}
.ok .badge{background:#1f9d55}.bad .badge{background:#d64545}.warn .badge{background:#e0a100}
table{border-collapse:collapse;width:100%}td,th{padding:3px 0;text-align:left;font-weight:normal}
td{text-align:right;font-variant-numeric:tabular-nums}th{color:#5b6675}
.error{color:#b02a2a;font-size:14px;word-break:break-word}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;word-break:break-all}
footer{color:#5b6675;font-size:13px;text-align:center;padding:8px}
"""


def render_page(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """The page for a status document (:func:`gateway.status.gateway_status`)."""
    now = time.time() if now is None else now
    gateway, site = str(status.get("gateway", "")), str(status.get("site", ""))
    body = [
        f"<header><h1>{escape(gateway)}</h1><p>{escape(site)}</p></header><main>",
        _clock(status.get("clock", {})),
        _evidence(status.get("evidence", {}), status.get("intervals", {})),
        _meters(status),
        "</main>",
        f"<footer>updated {escape(_when(now))} · refreshes every {REFRESH_S} s · "
        '<a href="/status">JSON</a> · <a href="/metrics">metrics</a></footer>',
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        f"<title>{escape(gateway)} · puhui gateway</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def _clock(clock: Mapping[str, Any]) -> str:
    if not clock:
        return ""
    ok = bool(clock.get("ok"))
    state = "good" if ok else "NOT GOOD: nothing is stamped or sealed"
    held = clock.get("held_back")
    extra = f"<p>{int(held)} check(s) held samples or seals back</p>" if held else ""
    return (
        f'<section id="clock" class="{"ok" if ok else "bad"}" data-ok="{str(ok).lower()}">'
        f'<h2>Clock <span class="badge">{escape(state)}</span></h2>'
        f"<p>{escape(str(clock.get('detail', '')))}</p>{extra}</section>"
    )


def _evidence(ev: Mapping[str, Any], intervals: Mapping[str, Any]) -> str:
    if not ev:
        return (
            '<section id="evidence" class="warn"><h2>Evidence <span class="badge">dry run</span></h2>'
            "<p>Intervals stay in memory: nothing is sealed or sent.</p></section>"
        )
    depth, size = ev.get("outbox_depth_batches"), ev.get("outbox_bytes")
    ack_seq, ack_at = ev.get("last_ack_seq"), ev.get("last_ack_at")
    uplink = str(ev.get("uplink", ""))
    last_end = intervals.get("last_end")
    rows = [
        ("key-id", "Key id", f'<span class="mono">{escape(str(ev.get("key_id", "?")))}</span>'),
        ("last-interval", "Last interval", escape(_when(last_end)) if last_end else "none yet"),
        ("last-sealed", "Last sealed", f"#{ev['last_seq']}" if ev.get("last_seq") else "none yet"),
        ("pending", "Waiting to be sealed", escape(str(ev.get("pending_records", 0)))),
        ("outbox", "Outbox", f"{escape(str(depth))} batch(es), {_bytes(size)}"),
        ("last-ack", "Last ack", f"#{ack_seq} at {escape(_when(ack_at))}" if ack_seq else "none yet"),
        ("uplink", "Uplink", escape(uplink)),
    ]
    good = uplink in ("connected", "disabled") and not ev.get("dropped_batches")
    items = "".join(f'<dt>{label}</dt><dd id="{i}">{value}</dd>' for i, label, value in rows)
    css = "ok" if good else "warn"
    return f'<section id="evidence" class="{css}"><h2>Evidence</h2><dl>{items}</dl></section>'


def _meters(status: Mapping[str, Any]) -> str:
    devices: Mapping[str, Any] = status.get("devices", {})
    mqtt: Mapping[str, Any] = status.get("mqtt", {})
    readings: Mapping[str, Any] = status.get("readings", {})
    names = list(dict.fromkeys([*devices, *mqtt, *readings]))
    cards = [_meter(m, devices.get(m), mqtt.get(m), readings.get(m, {})) for m in names]
    return f'<section id="meters"><h2>Meters ({len(names)})</h2></section>{"".join(cards)}'


def _meter(name: str, device: Mapping[str, Any] | None, mqtt: Mapping[str, Any] | None,
           readings: Mapping[str, Any]) -> str:  # fmt: skip
    if device is not None:
        state = str(device.get("state", "unknown"))
        breaker = f"breaker {device.get('breaker', '?')}"
        error = device.get("last_error") if state != "up" else None
    else:
        connected = bool(mqtt and mqtt.get("connected"))
        state = ("up" if readings else "waiting") if connected else "disconnected"
        breaker = f"MQTT {escape(str((mqtt or {}).get('topic', '')))}"
        error = (mqtt or {}).get("last_error")
    css = (
        "ok" if state == "up" else ("bad" if state in ("failing", "breaker_open", "disconnected") else "warn")
    )
    rows = "".join(
        f'<tr data-quantity="{escape(q)}"><th>{escape(q)}</th><td>{escape(_value(r))}</td></tr>'
        for q, r in readings.items()
    )
    table = f'<table class="readings">{rows}</table>' if rows else "<p>no reading yet</p>"
    err = f'<p class="error">{escape(str(error))}</p>' if error else ""
    return (
        f'<article class="meter {css}" data-meter="{escape(name)}" data-state="{escape(state)}">'
        f'<h3>{escape(name)} <span class="badge">{escape(state)}</span></h3>'
        f'<p class="breaker">{escape(breaker)}</p>{table}{err}</article>'
    )


def _value(reading: Mapping[str, Any]) -> str:
    value, unit = reading.get("value"), reading.get("unit") or ""
    if isinstance(value, int | float):
        text = f"{value:.7g}" if abs(value) < 1e7 else f"{value:.1f}"
        return f"{text} {unit}".strip()
    return str(value)


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{int(n)} B"


__all__ = ["REFRESH_S", "render_page"]
