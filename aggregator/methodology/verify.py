"""Standalone verification of a reduction statement.

:func:`verify_statement` trusts nothing the statement says about its figures:

1. the document is canonical and its signature verifies with the issuer's public key;
2. the parameter set named by id and version is found and hashes to the named sha256;
3. every batch the statement lists, and every batch the evidence source holds with an
   interval of the subject in the period, is re-read as bytes and verified (signature with
   the gateway's key, record count, Merkle root); its header hash and root must match;
4. the intervals are re-derived from those bytes (plausibility verdicts from the source),
   the statement is recomputed with the engine and its body rebuilt;
5. the rebuilt body must equal the signed one (numbers within a relative 1e-9).

Imported sessions a statement credits (``evidence.sessions``, issue 24) are re-read from the
session store (``sessions``): each must be held with the digest the statement names, and the
file it was imported from must be kept; the recomputation credits them again.

Two inputs come from the signed statement itself, because they describe the period and may
have changed since: a meter's calibration date (a recalibrated meter is enrolled again with a
later date; an enrolment naming an *earlier* date, or none, is a problem) and a heating
unit's recorded historical fuel use (``units[].baseline_cap``: it can only lower BE; the
verifier checks the record it names).

A statement that claims ``methodology.production`` must name a set that is filed and valid for
the whole period; one with ``methodology.selection`` must name the set the precedence rule
picks when run again over the candidates it lists, found by id, version and sha256 among
``candidates`` (default: the sets of ``params_dir``) and the given set (:mod:`.filing`).

Any tampering with the stored statement (signature, step 1), with the parameter file
(step 2), with a batch it names (step 3) or with the evidence's verdicts or coverage
(step 5) makes verification fail, and every problem is reported.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

from aggregator.methodology.assurance import SessionReader, reread_sessions
from aggregator.methodology.baseline import HistoricalUse
from aggregator.methodology.engine import EarlierClaims, check_eligibility, compute_from
from aggregator.methodology.errors import MethodologyError, StatementFormatError
from aggregator.methodology.filing import (
    PRODUCTION_NEEDS,
    RULE,
    FilingError,
    NoApplicableSet,
    Selection,
    explain,
    production_problem,
    select_for_unit,
    unit_region,
)
from aggregator.methodology.meter_signed import ChainLookup, read_chain_sessions
from aggregator.methodology.params import (
    PARAMS_DIR,
    LoadedParameterSet,
    find_parameter_set,
    list_parameter_sets,
)
from aggregator.methodology.source import EvidenceSource
from aggregator.methodology.statements import (
    Statement,
    build_body,
    canonical,
    earlier_claims,
    parse_statement,
)
from aggregator.methodology.subject import Period, Subject, Unit
from aggregator.view import AttestedInterval, BatchRef, ChainSession, MeterInfo
from evidence.batch import verify_batch
from evidence.errors import EvidenceError
from evidence.keys import PublicKey, key_id, verify_signature
from evidence.records import IntervalRecord, SessionRecord, decode_record

REL_TOL = 1e-9


@dataclass(slots=True)
class VerificationReport:
    statement_id: str
    problems: list[str] = field(default_factory=list)
    batches_checked: int = 0
    recomputed_er_tco2e: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return (
                f"OK statement {self.statement_id}: signature, {self.batches_checked} batches and "
                f"recomputed ER {self.recomputed_er_tco2e!r} tCO2e verified"
            )
        return f"NOT VERIFIED statement {self.statement_id}:\n  " + "\n  ".join(self.problems)


def verify_statement(
    document: bytes,
    *,
    issuer_key: PublicKey,
    source: EvidenceSource,
    params: LoadedParameterSet | None = None,
    params_dir: Path = PARAMS_DIR,
    earlier: Callable[[str], bytes | None] | None = None,
    candidates: Sequence[LoadedParameterSet] | None = None,
    sessions: SessionReader | None = None,
) -> VerificationReport:
    """Verify a statement document; the report lists every problem found. ``earlier`` finds
    the documents of the statements a supplementary statement supplements (by id): what they
    credited is rebuilt as not credited again (verify them on their own). ``candidates``: the
    sets a ``methodology.selection`` may name (default: every set of ``params_dir``);
    ``sessions``: where the imported sessions a statement credits are re-read (issue 24)."""
    try:
        st = parse_statement(document)
    except StatementFormatError as exc:
        return VerificationReport("?", [f"format: {exc}"])
    report = VerificationReport(st.id)
    if not _signature_ok(st, issuer_key, report):
        return report
    loaded = _parameter_set(st, params, params_dir, report)
    if loaded is None:
        return report
    filing_problems: list[str] = []
    try:
        claims = _filing_claims(st, loaded, source, params_dir, candidates, filing_problems)
        _recompute(st, loaded, source, report, claims, earlier, sessions)
    except MethodologyError as exc:
        report.problems.append(f"recomputation: {exc}")
    report.problems[:0] = filing_problems
    return report


def _signature_ok(st: Statement, key: PublicKey, report: VerificationReport) -> bool:
    if st.key_id != key_id(key):
        report.problems.append(
            f"signature: statement names issuer key {st.key_id}, offered key {key_id(key)}"
        )
        return False
    try:
        verify_signature(key, st.signature, st.body_bytes)
    except EvidenceError as exc:
        report.problems.append(f"signature: {exc}")
        return False
    return True


def _parameter_set(
    st: Statement, params: LoadedParameterSet | None, directory: Path, report: VerificationReport
) -> LoadedParameterSet | None:
    ref = st.body["methodology"]["parameter_set"]
    if params is None:
        try:
            return find_parameter_set(ref["id"], ref["version"], ref["sha256"], directory)
        except MethodologyError as exc:
            report.problems.append(f"parameter set: {exc}")
            return None
    if (params.id, params.version, params.sha256) != (ref["id"], ref["version"], ref["sha256"]):
        report.problems.append(
            f"parameter set: statement names {ref['id']} {ref['version']} sha256 {ref['sha256']}, "
            f"given {params.id} {params.version} sha256 {params.sha256}"
        )
        return None
    return params


def _filing_claims(
    st: Statement,
    loaded: LoadedParameterSet,
    source: EvidenceSource,
    directory: Path,
    candidates: Sequence[LoadedParameterSet] | None,
    problems: list[str],
) -> dict[str, Any]:
    """Check ``methodology.production`` and ``methodology.selection``; the keyword arguments
    the body is rebuilt with (the selection as the rule makes it again, where it can)."""
    m, b = st.body["methodology"], st.body["period"]
    period = Period(b["start"], b["end"])
    production = m.get("production", False)
    if production is not False and production is not True:
        problems.append(f"production: methodology.production is {production!r}, not true")
    elif production and (why := production_problem(loaded, period)) is not None:
        problems.append(f"production: {explain(loaded, why, None, period)}: {PRODUCTION_NEEDS}")
    claims: dict[str, Any] = {"production": production is True}
    if "selection" not in m:
        return claims
    claims["selection"] = m["selection"]  # rebuilt as signed unless the rule can be re-run
    try:
        pool = list(candidates) if candidates is not None else list_parameter_sets(directory)
    except MethodologyError as exc:
        problems.append(f"selection: cannot read the candidate sets: {exc}")
        return claims
    where = "the candidate sets given" if candidates is not None else str(directory)
    again = _reselect(m["selection"], st.body, loaded, source, [*pool, loaded], where, problems)
    if again is not None:
        claims["selection"] = again.to_json()
    return claims


def _reselect(
    signed: Any,
    body: dict[str, Any],
    loaded: LoadedParameterSet,
    source: EvidenceSource,
    pool: list[LoadedParameterSet],
    where: str,
    problems: list[str],
) -> Selection | None:
    """The precedence rule run again over the candidates the statement lists."""
    try:
        rule, scenario, region = signed["rule"], signed["scenario"], signed["region"]
        named = {k: signed["chosen"][k] for k in ("id", "version", "sha256")}
        listed = [(e["id"], e["version"], e["sha256"]) for e in signed["candidates"]]
        if not isinstance(scenario, str) or not (region is None or isinstance(region, str)):
            raise TypeError("scenario or region")
    except (KeyError, TypeError) as exc:
        problems.append(f"selection: not a selection record ({exc!r} missing or malformed)")
        return None
    ref = {k: loaded.reference()[k] for k in ("id", "version", "sha256")}
    if named != ref:
        problems.append(f"selection: chooses {named}, the statement is computed with {ref}")
    if rule != RULE:
        problems.append(f"selection: rule {rule!r} is unknown (this verifier knows {RULE!r})")
        return None
    _check_region(body, source, region, problems)
    index = {(s.id, s.version, s.sha256): s for s in pool}
    missing = [f"{i} {v} sha256 {h}" for i, v, h in listed if (i, v, h) not in index]
    if missing:
        problems.append(f"selection: candidates {missing} are not in {where}: the rule cannot be re-run")
        return None
    period = Period(body["period"]["start"], body["period"]["end"])
    production = body["methodology"].get("production") is True
    try:
        again = select_for_unit([index[k] for k in listed], scenario, region, period, production)
    except NoApplicableSet as exc:
        problems.append(f"selection: {exc}")
        return None
    if again.chosen.reference() != loaded.reference():
        problems.append(
            f"selection: rule {RULE} picks {again.chosen.id} {again.chosen.version} among the candidates, "
            f"the statement is computed with {loaded.id} {loaded.version}"
        )
    return again


def _check_region(
    body: dict[str, Any], source: EvidenceSource, region: str | None, problems: list[str]
) -> None:
    gateway, meters = body["subject"]["gateway"], {m for u in body["subject"]["units"] for m in u["meters"]}
    try:
        enrolled = unit_region(
            m.region for m in source.meters() if m.gateway == gateway and m.meter in meters
        )
    except FilingError as exc:
        problems.append(f"selection: {exc}")
        return
    if enrolled != region:
        problems.append(
            f"selection: made for region {region!r}, the subject's meters are enrolled in {enrolled!r}"
        )


def _recompute(
    st: Statement,
    loaded: LoadedParameterSet,
    source: EvidenceSource,
    report: VerificationReport,
    claims: Mapping[str, Any],
    find: Callable[[str], bytes | None] | None = None,
    session_reader: SessionReader | None = None,
) -> None:
    body = st.body
    subject = Subject(
        body["subject"]["gateway"], tuple(Unit(u["id"], tuple(u["meters"])) for u in body["subject"]["units"])
    )
    period = Period(body["period"]["start"], body["period"]["end"])
    known = {m.meter: m for m in source.meters() if m.gateway == subject.gateway}
    missing = [m for m in subject.meters if m not in known]
    if missing:
        report.problems.append(f"meters: {missing} are not enrolled at gateway {subject.gateway}")
        return
    infos = _signed_calibration({m: known[m] for m in subject.meters}, body, report)
    if report.problems:
        return
    check_eligibility(loaded.params, infos, period, {})
    held = list(
        source.attested_intervals(
            gateway=subject.gateway, meters=subject.meters, start=period.start, end=period.end
        )
    )
    issues = {(ai.batch.seq, ai.index): ai.issues for ai in held}
    listed = {int(b["seq"]): b for b in body["evidence"]["batches"]}
    seqs = {seq: listed.get(seq, {}) for seq in set(listed) | {ai.batch.seq for ai in held}}
    intervals: list[AttestedInterval] = []
    for seq in sorted(seqs):
        intervals += _rederive(subject, seq, seqs[seq], issues, source, report)
    if report.problems:
        return
    supplemented = _supplemented(st, find, report)
    listed = body["evidence"].get("sessions")
    sessions = (
        [] if listed is None else reread_sessions(listed, session_reader, subject, period, report.problems)
    )
    chain = _chain_lookup(body, source, subject, period, report)
    if report.problems:
        return
    comp = compute_from(
        intervals, infos, loaded, subject, period, baselines=_signed_baselines(body), earlier=supplemented,
        beneficiary=body["subject"].get("beneficiary"), sessions=sessions, chain=chain,
    )  # fmt: skip
    # statements signed before issue 24 carry no assurance section: they rebuild without one
    rebuilt = json.loads(
        canonical(
            build_body(
                comp,
                issuer_key_id=st.key_id,
                created_ms=body["created_ms"],
                assurance="assurance" in body,
                **claims,
            )
        )
    )
    report.recomputed_er_tco2e = comp.result.er
    _compare(body, rebuilt, "", report.problems)


def _supplemented(
    st: Statement, find: Callable[[str], bytes | None] | None, report: VerificationReport
) -> list[EarlierClaims]:
    """The statements a supplementary statement names, as it was computed against them."""
    out: list[EarlierClaims] = []
    for entry in st.body.get("supplements", []):
        sid = str(entry.get("statement"))
        document = None if find is None else find(sid)
        if document is None:
            report.problems.append(f"supplements: statement {sid} is not available to the verifier")
            continue
        try:
            earlier = parse_statement(document)
        except StatementFormatError as exc:
            report.problems.append(f"supplements: statement {sid}: {exc}")
            continue
        if earlier.id != sid:
            report.problems.append(f"supplements: the document found for {sid} is statement {earlier.id}")
            continue
        same = (earlier.body["subject"]["gateway"], earlier.body["period"]) == (
            st.body["subject"]["gateway"],
            st.body["period"],
        )
        if not same:
            report.problems.append(f"supplements: statement {sid} is not of the same gateway and period")
            continue
        out.append(earlier_claims(earlier))
    return out


def _signed_calibration(
    infos: Mapping[str, MeterInfo], body: dict[str, Any], report: VerificationReport
) -> dict[str, MeterInfo]:
    """The enrolled meters with the calibration dates the statement was computed with."""
    out = dict(infos)
    for entry in body.get("meters", []):
        meter, signed = entry.get("meter"), entry.get("calibrated_until")
        if "calibrated_until" not in entry or meter not in out:
            continue
        day = None if signed is None else _date(signed, f"meters: {meter}.calibrated_until")
        now = out[meter].calibrated_until
        if day is not None and (now is None or now < day):
            report.problems.append(
                f"meters: {meter}: the statement credits readings under a calibration valid until "
                f"{signed}, the enrolment names {now.isoformat() if now else 'no date'}"
            )
        out[meter] = replace(out[meter], calibrated_until=day)
    return out


def _signed_baselines(body: dict[str, Any]) -> dict[str, HistoricalUse]:
    try:
        return {
            u["id"]: HistoricalUse.from_json(u["baseline_cap"]) for u in body["units"] if "baseline_cap" in u
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StatementFormatError(f"units[].baseline_cap is not a historical-use record: {exc!r}") from exc


def _date(text: Any, where: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise StatementFormatError(f"{where}: {text!r} is not a date (YYYY-MM-DD)") from exc


def _rederive(
    subject: Subject,
    seq: int,
    listed: dict[str, Any],
    issues: dict[tuple[int, int], tuple[str, ...]],
    source: EvidenceSource,
    report: VerificationReport,
) -> list[AttestedInterval]:
    gw, label = subject.gateway, f"batch {subject.gateway}#{seq}"
    data = source.batch_bytes(gw, seq)
    if data is None:
        report.problems.append(f"evidence: {label} is not in the evidence store")
        return []
    kid = listed.get("key_id") or _header_key_id(data)
    key = source.gateway_public_key(gw, kid)
    if key is None:
        report.problems.append(f"evidence: {label}: gateway key {kid} is unknown")
        return []
    try:
        verified = verify_batch(data, key)
    except EvidenceError as exc:
        report.problems.append(f"evidence: {exc}")
        return []
    report.batches_checked += 1
    h = verified.header
    ref = BatchRef(gw, h.seq, verified.sealed.header_sha256, h.root, h.key_id)
    if listed and (listed.get("header_sha256"), listed.get("root")) != (ref.header_sha256, ref.root):
        report.problems.append(f"evidence: {label}: header hash or root differs from the statement's")
    meters = set(subject.meters)
    out = []
    for i, raw in enumerate(verified.sealed.records):
        try:
            rec = decode_record(raw)
        except EvidenceError as exc:
            report.problems.append(f"evidence: {label} record {i}: {exc}")
            continue
        if isinstance(rec, IntervalRecord) and rec.meter in meters:
            out.append(AttestedInterval(ref, i, rec, issues.get((seq, i), ())))
    return out


def _chain_lookup(
    body: Mapping[str, Any],
    source: EvidenceSource,
    subject: Subject,
    period: Period,
    report: VerificationReport,
) -> ChainLookup | None:
    """The chain sessions as the statement considered them: looked up again where the source
    can (a store), else the ones it lists, read from their batches (a package). Each one it
    credits must sit, with the same bytes, in a batch that verifies with its gateway's key."""
    listed = body["evidence"].get("chain_sessions")
    if listed is None:  # signed before meter-signed crediting
        return None
    if not listed.get("looked_up"):
        return ChainLookup(None)
    items = [i for i in listed.get("items", []) if isinstance(i, dict)]
    found = read_chain_sessions(source, subject, period)
    if found.sessions is None:
        return ChainLookup(tuple(_listed_sessions(items, source, report)))
    credited = {(i.get("seq"), i.get("index")) for i in items if i.get("status") == "credited"}
    leaves: dict[tuple[str, int], list[bytes] | None] = {}
    for s in found.sessions:
        if (s.batch.seq, s.index) not in credited:
            continue
        held = _leaves(leaves, s.batch.gateway, s.batch.seq, source, report)
        if held is not None and (s.index >= len(held) or sha256(held[s.index]).hexdigest() != s.sha256):
            report.problems.append(f"chain_sessions: {s.batch.gateway}#{s.batch.seq} record {s.index}: "
                                   "not the record its verified batch holds")  # fmt: skip
    return found


def _listed_sessions(
    items: Sequence[Mapping[str, Any]], source: EvidenceSource, report: VerificationReport
) -> list[ChainSession]:
    """The session records a statement lists, each read from its verified batch."""
    leaves: dict[tuple[str, int], list[bytes] | None] = {}
    refs: dict[tuple[str, int], BatchRef] = {}
    out = []
    for item in items:
        gw, seq, index = str(item.get("gateway")), item.get("seq"), item.get("index")
        where = f"chain_sessions: {gw}#{seq} record {index}"
        if not isinstance(seq, int) or not isinstance(index, int):
            report.problems.append(f"{where}: seq and index must be integers")
            continue
        held = _leaves(leaves, gw, seq, source, report, refs)
        if held is None:
            continue
        if not 0 <= index < len(held) or sha256(held[index]).hexdigest() != item.get("sha256"):
            report.problems.append(f"{where}: not the record the statement names")
            continue
        try:
            record = decode_record(held[index])
        except EvidenceError as exc:
            report.problems.append(f"{where}: {exc}")
            continue
        if not isinstance(record, SessionRecord):
            report.problems.append(f"{where}: a {record.type} record, not a session")
            continue
        out.append(ChainSession(refs[(gw, seq)], index, record, str(item.get("sha256"))))
    return out


def _leaves(
    cache: dict[tuple[str, int], list[bytes] | None],
    gateway: str,
    seq: int,
    source: EvidenceSource,
    report: VerificationReport,
    refs: dict[tuple[str, int], BatchRef] | None = None,
) -> list[bytes] | None:
    """The records of batch ``gateway#seq`` if it verifies with its gateway's key (once each)."""
    if (gateway, seq) in cache:
        return cache[(gateway, seq)]
    label = f"chain_sessions: batch {gateway}#{seq}"
    cache[(gateway, seq)] = None
    data = source.batch_bytes(gateway, seq)
    if data is None:
        report.problems.append(f"{label}: not in the evidence store")
        return None
    kid = _header_key_id(data)
    key = source.gateway_public_key(gateway, kid)
    if key is None:
        report.problems.append(f"{label}: gateway key {kid} is unknown")
        return None
    try:
        verified = verify_batch(data, key)
    except EvidenceError as exc:
        report.problems.append(f"{label}: {exc}")
        return None
    if refs is not None:
        h = verified.header
        refs[(gateway, seq)] = BatchRef(gateway, h.seq, verified.sealed.header_sha256, h.root, h.key_id)
    cache[(gateway, seq)] = list(verified.sealed.records)
    return cache[(gateway, seq)]


def _header_key_id(data: bytes) -> str:
    try:
        return str(json.loads(data.split(b"\n", 1)[0])["key_id"])
    except (ValueError, KeyError, TypeError):
        return ""


def _compare(signed: Any, rebuilt: Any, path: str, problems: list[str], limit: int = 20) -> None:
    """Record where the signed body and the recomputed one differ."""
    if len(problems) >= limit:
        return
    if isinstance(signed, dict) and isinstance(rebuilt, dict):
        for k in sorted(set(signed) | set(rebuilt)):
            if k not in signed or k not in rebuilt:
                problems.append(f"recomputed: {path}.{k} present on one side only")
            else:
                _compare(signed[k], rebuilt[k], f"{path}.{k}", problems, limit)
    elif isinstance(signed, list) and isinstance(rebuilt, list):
        if len(signed) != len(rebuilt):
            problems.append(f"recomputed: {path} has {len(signed)} items, recomputation {len(rebuilt)}")
            return
        for i, (a, b) in enumerate(zip(signed, rebuilt, strict=True)):
            _compare(a, b, f"{path}[{i}]", problems, limit)
    elif _is_number(signed) and _is_number(rebuilt):
        if not math.isclose(signed, rebuilt, rel_tol=REL_TOL, abs_tol=1e-12):
            problems.append(f"recomputed: {path} is {signed!r} in the statement, {rebuilt!r} recomputed")
    elif signed != rebuilt:
        problems.append(f"recomputed: {path} is {signed!r} in the statement, {rebuilt!r} recomputed")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
