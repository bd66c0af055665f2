"""Statements signed before the 2.0.0 parameter sets still verify with today's engine.

``data/statements-v1.json`` was written by puhui at 82f3d37 (parameter sets 1.0.0, before
issue 23): three signed statements (PV, EV, heating) with the exact batch bytes, gateway keys,
enrolled meters and plausibility verdicts they were computed from. Today's verifier must find
each 1.0.0 set by id, version and sha256 among the files of config/methodologies/ (the 2.0.0
files sit beside them), recompute every figure and rebuild the same body.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.methodology import find_parameter_set, parse_statement, verify_statement
from aggregator.view import AttestedInterval, BatchRef, MeterInfo
from evidence import IntervalRecord, PublicKey, decode_record, load_public_key
from evidence.batch import verify_batch
from evidence.keys import key_id

FIXTURE = json.loads((Path(__file__).parent / "data" / "statements-v1.json").read_text())
ISSUER = load_public_key(FIXTURE["issuer_key"])


class RecordedEvidence:
    """An EvidenceSource over one recorded case: its batches, key, meters and verdicts."""

    def __init__(self, case: dict[str, Any]) -> None:
        self.gateway = case["gateway"]
        self.key = load_public_key(case["gateway_key"])
        self.batches = {int(s): base64.b64decode(b) for s, b in case["batches"].items()}
        self.infos = [MeterInfo(*m) for m in case["meters"]]
        self.issues = {(m, q, s): tuple(i) for m, q, s, i in case["issues"]}

    def meters(self) -> list[MeterInfo]:
        return list(self.infos)

    def attested_intervals(
        self,
        *,
        gateway: str | None = None,
        meters: Collection[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> Iterator[AttestedInterval]:
        for seq, data in sorted(self.batches.items()):
            v = verify_batch(data, self.key)
            ref = BatchRef(self.gateway, seq, v.sealed.header_sha256, v.header.root, v.header.key_id)
            for i, raw in enumerate(v.sealed.records):
                r = decode_record(raw)
                assert isinstance(r, IntervalRecord)
                if meters is not None and r.meter not in meters:
                    continue
                if (start is not None and r.start < start) or (end is not None and r.end > end):
                    continue
                yield AttestedInterval(ref, i, r, self.issues.get((r.meter, r.quantity, r.start), ()))

    def batch_bytes(self, gateway: str, seq: int) -> bytes | None:
        return self.batches.get(seq) if gateway == self.gateway else None

    def gateway_public_key(self, gateway: str, kid: str) -> PublicKey | None:
        return self.key if gateway == self.gateway and kid == key_id(self.key) else None


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["parameter_set"])
def test_statement_signed_with_a_1_0_0_set_verifies(case: dict[str, Any]) -> None:
    document = case["statement"].encode("ascii")
    ref = parse_statement(document).body["methodology"]["parameter_set"]
    assert ref["version"] == "1.0.0"
    assert find_parameter_set(ref["id"], ref["version"], ref["sha256"]).path.name == f"{ref['id']}.yaml"  # type: ignore[union-attr]
    report = verify_statement(document, issuer_key=ISSUER, source=RecordedEvidence(case))
    assert report.ok, str(report)
    assert report.recomputed_er_tco2e == case["er_tco2e"]  # bit for bit: the same arithmetic


def test_a_changed_figure_in_an_old_statement_is_still_caught() -> None:
    case = FIXTURE["cases"][0]
    st = parse_statement(case["statement"].encode("ascii"))
    report = verify_statement(
        st.to_bytes().replace(b'"er_tco2e":0.023877', b'"er_tco2e":0.03'),
        issuer_key=ISSUER,
        source=RecordedEvidence(case),
    )
    assert not report.ok  # the document no longer matches its signature
