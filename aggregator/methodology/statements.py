"""Reduction statements (``puhui-statement/1``): canonical JSON signed by the aggregator.

A statement document is two lines, each ending in ``\\n``::

    line 1  body: canonical JSON (sorted keys, no spaces, ASCII, shortest float repr, no NaN)
    line 2  {"alg":"ECDSA-P256-SHA256","key_id":KID,"sig":BASE64(DER)}

The signature (ECDSA P-256, SHA-256, RFC 6979) is over the exact bytes of line 1. The
statement id is the hex SHA-256 of line 1. A parser rebuilds both lines from what it read
and refuses any other spelling, as the batch format does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aggregator.methodology.engine import Computation, EarlierClaims
from aggregator.methodology.errors import StatementFormatError
from aggregator.methodology.meter_signed import SESSION_LEDGER, chain_sessions_json
from aggregator.methodology.params import Factor
from evidence.keys import SIGNATURE_ALGORITHM, GatewayKey

FORMAT = "puhui-statement/1"
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False, sort_keys=True)


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj``."""
    return _ENCODER.encode(obj).encode("ascii")


@dataclass(frozen=True, slots=True)
class Statement:
    """A signed statement: the body's exact bytes, the parsed body and the signature."""

    body_bytes: bytes
    body: dict[str, Any]
    key_id: str
    signature: bytes

    @property
    def id(self) -> str:
        return hashlib.sha256(self.body_bytes).hexdigest()

    def to_bytes(self) -> bytes:
        return self.body_bytes + b"\n" + signature_line(self.key_id, self.signature) + b"\n"

    @property
    def er_tco2e(self) -> float:
        return float(self.body["result"]["er_tco2e"])

    @property
    def gateway(self) -> str:
        return str(self.body["subject"]["gateway"])

    def credited_runs(self) -> list[tuple[str, str, int, int]]:
        """(meter, quantity, start, end) of every credited run: the ledger entries. A credited
        OCPP session record is one too, ``(meter, "ocpp_session", start, stop)`` (seconds,
        rounded outwards): a second statement crediting it is a double claim."""
        runs = [
            (s["meter"], s["quantity"], int(a), int(b))
            for s in self.body["evidence"]["series"]
            for a, b in s["credited_runs"]
        ]
        chain = self.body["evidence"].get("chain_sessions") or {}
        return runs + [
            (str(i["meter"]), SESSION_LEDGER, int(i["start_ms"]) // 1000, -(-int(i["stop_ms"]) // 1000))
            for i in chain.get("items", [])
            if i.get("status") == "credited"
        ]


def earlier_claims(statement: Statement) -> EarlierClaims:
    """What ``statement`` credited, for a supplementary statement of its subject and period."""
    b = statement.body
    return EarlierClaims(
        statement=statement.id,
        er_tco2e=statement.er_tco2e,
        runs=tuple(statement.credited_runs()),
        unit_be={u["id"]: float(u["be_tco2e"]) for u in b["units"]},
    )


def signature_line(key_id: str, signature: bytes) -> bytes:
    sig = base64.b64encode(signature).decode("ascii")
    return _ENCODER.encode({"alg": SIGNATURE_ALGORITHM, "key_id": key_id, "sig": sig}).encode("ascii")


def sign_statement(body: dict[str, Any], key: GatewayKey) -> Statement:
    """Encode ``body`` canonically and sign it."""
    if body.get("issuer", {}).get("key_id") != key.key_id:
        raise StatementFormatError("body.issuer.key_id must name the signing key")
    data = canonical(body)
    return Statement(data, json.loads(data), key.key_id, key.sign(data))


def issue_statement(
    comp: Computation,
    key: GatewayKey,
    *,
    created_ms: int,
    selection: Mapping[str, Any] | None = None,
    production: bool = False,
) -> Statement:
    """Build and sign the statement for a computation (``selection``, ``production``: see
    :func:`build_body`)."""
    body = build_body(
        comp, issuer_key_id=key.key_id, created_ms=created_ms, selection=selection, production=production
    )
    return sign_statement(body, key)


def parse_statement(data: bytes) -> Statement:
    """Split and validate a statement document (not its signature: see :mod:`.verify`)."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise StatementFormatError(
            "a statement is a body line and a signature line, each ending in a newline"
        )
    body_bytes, sig_bytes = lines[0], lines[1]
    try:
        body = json.loads(body_bytes)
        sig = json.loads(sig_bytes)
        signature = base64.b64decode(sig["sig"], validate=True)
        key_id = str(sig["key_id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise StatementFormatError(f"statement is not valid: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise StatementFormatError(f"statement body format is not {FORMAT!r}")
    if canonical(body) != body_bytes or signature_line(key_id, signature) != sig_bytes:
        raise StatementFormatError("statement is not in canonical form")
    if sig.get("alg") != SIGNATURE_ALGORITHM or body.get("issuer", {}).get("key_id") != key_id:
        raise StatementFormatError("signature line does not match the body's issuer key")
    return Statement(body_bytes, body, key_id, signature)


def build_body(
    comp: Computation,
    *,
    issuer_key_id: str,
    created_ms: int,
    selection: Mapping[str, Any] | None = None,
    production: bool = False,
    assurance: bool = True,
) -> dict[str, Any]:
    """The statement body for a computation (the verifier rebuilds it and compares).

    ``selection``: how the precedence rule picked the set (:meth:`.filing.Selection.to_json`);
    ``production``: the set was checked as filed and valid for the period (:mod:`.filing`);
    ``assurance``: show what each evidence assurance level contributed (issue 24: every new
    statement does; the verifier rebuilds a statement signed before it without)."""
    r = comp.result
    be, pe, le = r.totals_be_pe_le
    p = comp.params.params
    units = [_unit(comp, i) for i in range(len(comp.subject.units))]
    subject: dict[str, Any] = {
        "gateway": comp.subject.gateway,
        "units": [{"id": u.id, "meters": list(u.meters)} for u in comp.subject.units],
    }
    if comp.beneficiary is not None:
        subject["beneficiary"] = comp.beneficiary
    body = {
        "format": FORMAT,
        "issuer": {"key_id": issuer_key_id},
        "created_ms": created_ms,
        "subject": subject,
        "period": {"start": comp.period.start, "end": comp.period.end, "interval_s": comp.interval_s},
        "methodology": _methodology(comp, selection, production),
        "parameters": _parameters(comp),
        "activity": {role: float(t.sum()) for role, t in r.totals.items()},
        "result": {
            "unit": "tCO2e",
            "be_tco2e": be,
            "pe_tco2e": pe,
            "le_tco2e": le,
            "er_tco2e": r.er,
            "er_floored_at_zero": be - pe - le < 0,
            "estimated_activity": bool((r.estimated & r.credited).any()),
        },
        "completeness": {
            "value": float(r.completeness.mean()) if len(units) else 0.0,
            "threshold": p.completeness.threshold,
            "units_below_threshold": [u["id"] for u in units if not u["credited"]],
        },
        "units": units,
        "meters": [_meter(comp, m) for m in comp.subject.meters],
        "evidence": _evidence(comp),
    }
    if assurance and comp.assurance is not None:
        body["assurance"] = _assurance(comp)
        evidence = body["evidence"]
        if comp.assurance.sessions and isinstance(evidence, dict):
            evidence["sessions"] = _sessions(comp)
        if comp.assurance.chain_considered and isinstance(evidence, dict):
            evidence["chain_sessions"] = chain_sessions_json(comp.assurance.chain)
    if comp.earlier:
        # A supplementary statement: late evidence for a period already stated. It credits
        # only what these did not, and says so; they stay as they were.
        body["supplements"] = [{"statement": e.statement, "er_tco2e": e.er_tco2e} for e in comp.earlier]
    return body


# Keys added for the 2.0.0 parameter sets appear only when the set (or the unit) uses them, so
# a statement signed with a 1.0.0 set rebuilds to the same body and stays verifiable.


def _methodology(comp: Computation, selection: Mapping[str, Any] | None, production: bool) -> dict[str, Any]:
    p = comp.params.params
    out: dict[str, Any] = {
        "scenario": p.method.scenario,
        "title": p.title,
        "programme": p.programme,
        "parameter_set": comp.params.reference(),
    }
    if p.filing is not None:  # the filing keys (issue 18) likewise appear only when used
        out["filing"] = p.filing.model_dump(mode="json")
    if selection is not None:
        out["selection"] = dict(selection)
    if production:
        out["production"] = True
    return out


def _unit(comp: Computation, i: int) -> dict[str, Any]:
    r = comp.result
    out = {
        "id": comp.subject.units[i].id,
        "completeness": float(r.completeness[i]),
        "credited": bool(r.credited[i]),
        "estimated": bool(r.estimated[i]),
        "activity": {role: float(t[i]) for role, t in r.totals.items()},
        "grid_factor": comp.grid[i].to_json(),
        "be_tco2e": float(r.be[i]),
        "pe_tco2e": float(r.pe[i]),
        "le_tco2e": float(r.le[i]),
    }
    if r.bounds is not None:
        out["activity_at_mpe"] = {
            "for_be": {role: float(t[i]) for role, t in r.bounds.low.items()},
            "for_pe": {role: float(t[i]) for role, t in r.bounds.high.items()},
        }
    if comp.earlier:
        uid = comp.subject.units[i].id
        out["be_credited_earlier_tco2e"] = sum(e.unit_be.get(uid, 0.0) for e in comp.earlier)
    use = comp.baselines.get(comp.subject.units[i].id)
    if use is not None and comp.be_cap is not None and r.capped is not None:
        out["baseline_cap"] = {
            **use.to_json(),
            "cap_tco2e": float(comp.be_cap[i]),
            "binding": bool(r.capped[i]),
        }
    return out


def _meter(comp: Computation, meter: str) -> dict[str, Any]:
    m = comp.meters[meter]
    out: dict[str, Any] = {
        "meter": m.meter,
        "scenario": m.scenario,
        "rated_power_kw": m.rated_power_kw,
        "meter_class": m.meter_class,
        "region": m.region,
    }
    acc = comp.params.params.meter_accuracy
    if acc is not None:
        out["calibrated_until"] = None if m.calibrated_until is None else m.calibrated_until.isoformat()
        mpe = acc.mpe.get(m.meter_class)
        out["mpe"] = None if mpe is None or not acc.discount else mpe.value
    return out


def _parameters(comp: Computation) -> dict[str, Any]:
    p = comp.params.params
    method = p.method.model_dump(mode="json", exclude_none=True)
    assumed = sorted(name for name, v in p.method if isinstance(v, Factor) and v.confidence == "assumed") + (
        ["completeness.threshold"] if p.completeness.confidence == "assumed" else []
    )
    out = {
        "method": method,
        "completeness_threshold": p.completeness.threshold,
        "data_policy": dict(sorted(p.data_policy.flags.items())),
        "assumed": assumed,
    }
    if p.scope is not None:
        out["scope"] = p.scope.model_dump(mode="json")
    if p.meter_accuracy is not None:
        out["meter_accuracy"] = p.meter_accuracy.model_dump(mode="json")
    if p.refused_assurance:
        out["refused_assurance"] = list(p.refused_assurance)
    return out


def _assurance(comp: Computation) -> dict[str, Any]:
    """Credited activity (kWh for electricity) and BE, PE, LE per evidence assurance level."""
    split = comp.assurance
    assert split is not None
    return {
        "levels": {lv.level: lv.to_json() for lv in split.levels},
        "refused": list(comp.params.params.refused_assurance),
        "strongest_first": [lv.level for lv in split.levels],
    }


def _sessions(comp: Computation) -> dict[str, Any]:
    split = comp.assurance
    assert split is not None
    counts: dict[str, int] = {}
    for u in split.sessions:
        counts[u.status] = counts.get(u.status, 0) + 1
    return {
        "network": split.network,
        "assurance": "platform_attested",
        "by_status": dict(sorted(counts.items())),
        "items": [u.to_json() for u in split.sessions],
    }


def _evidence(comp: Computation) -> dict[str, Any]:
    r, ev = comp.result, comp.evidence
    seqs = sorted(ev.batches)
    series = [
        {"meter": k.meter, "quantity": k.quantity, "role": k.role, "credited_runs": [list(x) for x in runs]}
        for k, runs in zip(comp.series.keys, r.runs, strict=True)
    ]
    return {
        "gateway": comp.subject.gateway,
        "seq_first": seqs[0] if seqs else None,
        "seq_last": seqs[-1] if seqs else None,
        "batches": [
            {"seq": s, "header_sha256": b.header_sha256, "root": b.root, "key_id": b.key_id}
            for s, b in ((s, ev.batches[s]) for s in seqs)
        ],
        "intervals_used": r.used,
        "intervals_excluded": sum(r.excluded.values()),
        "excluded_by_reason": dict(sorted(r.excluded.items())),
        "intervals_missing": r.missing,
        "implausible": [
            {"meter": m, "quantity": q, "start": s, "issues": list(i)} for m, q, s, i in ev.implausible
        ],
        "series": series,
    }
