"""Filing (issue 18): the ``filing`` section's validation, the production check, the directory
loader, and what statements say about filing and selection and how the verifier checks it.
Filing numbers in these tests are fictitious."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aggregator.methodology import compute, issue_statement, load_parameter_set, verify_statement
from aggregator.methodology.errors import ParameterSetError
from aggregator.methodology.filing import (
    FilingError,
    NotFiled,
    require_filed,
    select_for_unit,
    unit_region,
)
from aggregator.methodology.params import PARAMS_DIR, list_parameter_sets
from aggregator.methodology.statements import sign_statement
from evidence import generate_key

from .filing_fixture import EV_V2, Spec, filed_bytes, filed_set, write_sets
from .test_golden import PERIOD
from .test_golden_v2 import EV, ev_source

KEY = generate_key()
FILING = """filing:
  status: filed
  tier: local
  standard: DB11/T 3043-2024
  authority: 北京市生态环境局
  number: TEST-0001 (fictitious)
  regions: [beijing]
  valid_from: 2024-07-01
  valid_to: 2029-06-30
  source: test fixture (the number is fictitious)
"""


def _write(tmp_path: Path, filing: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_bytes(EV_V2.read_bytes() + filing.encode("utf-8"))
    return path


def test_the_documented_sample_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "methodologies.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Filing and precedence") :]
    sample = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml"))]
    f = load_parameter_set(_write(tmp_path, sample)).params.filing
    assert f is not None and (f.status, f.tier, f.number) == ("filed", "local", "TEST-0001 (fictitious)")


def test_a_filing_section_loads(tmp_path: Path) -> None:
    f = load_parameter_set(_write(tmp_path, FILING)).params.filing
    assert f is not None
    assert (f.status, f.tier, f.standard, f.regions, str(f.valid_to)) == (
        "filed",
        "local",
        "DB11/T 3043-2024",
        ["beijing"],
        "2029-06-30",
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  number: TEST-0001 (fictitious)\n",
            "",
            "filing: number (备案号) is required when status is 'filed'",
        ),
        ("  number:", "  numbre:", "filing.numbre: unknown key"),
        ("tier: local", "tier: provincial", "filing.tier: Input should be 'national', 'local'"),
        ("status: filed", "status: approved", "filing.status: Input should be 'unfiled', 'pending'"),
        ("  regions: [beijing]\n", "", "filing: regions: a local standard names the regions it applies in"),
        ("tier: local", "tier: national", "regions: a national standard applies everywhere"),
        ("  standard: DB11/T 3043-2024\n", "", "standard (the standard's code) is required for tier 'local'"),
        ("status: filed", "status: unfiled", "filing: number: a set with status 'unfiled' has no 备案号"),
        (
            "valid_to: 2029-06-30",
            "valid_to: 2023-06-30",
            "valid_to 2023-06-30 is before valid_from 2024-07-01",
        ),
        (
            "valid_from: 2024-07-01",
            "valid_from: 1 July 2024",
            "filing.valid_from: Input should be a valid date",
        ),
        (
            "[beijing]",
            "[shanghai]",
            "filing.regions ['shanghai'] are not in scope.regions (['beijing', 'hebei'])",
        ),
        ("[beijing]", "[Beijing]", "filing.regions[0]: String should match pattern"),
    ],
)
def test_filing_errors_name_the_file_and_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in FILING
    path = _write(tmp_path, FILING.replace(old, new))
    with pytest.raises(ParameterSetError) as err:
        load_parameter_set(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_production_refuses_unfiled_pending_withdrawn_and_out_of_date_sets() -> None:
    shipped = load_parameter_set(EV_V2)
    with pytest.raises(NotFiled) as err:
        require_filed(shipped, PERIOD)
    assert str(err.value) == (
        "ev-charging-jjj 2.0.0: not filed (no filing section, or filing.status 'unfiled'): "
        "production signs only with a filed set valid for the whole period"
    )
    cases = {
        Spec(
            "ev-p", "group", status="pending"
        ): "ev-p 2.0.0: its filing with 生态环境部 is pending (no 备案号 yet)",
        Spec(
            "ev-w", "group", status="withdrawn"
        ): "ev-w 2.0.0: filing TEST-ev-w-2.0.0 (fictitious) (生态环境部) is withdrawn",
        Spec(
            "ev-n", "group", since="2025-07-01"
        ): "ev-n 2.0.0: filing TEST-ev-n-2.0.0 (fictitious) (生态环境部) "
        "is valid from 2025-07-01 (China time), the period starts 2025-06-21T08:00+08:00",
        Spec(
            "ev-x", "group", until="2025-06-20"
        ): "ev-x 2.0.0: filing TEST-ev-x-2.0.0 (fictitious) (生态环境部) "
        "is valid through 2025-06-20 (China time), the period ends 2025-06-21T18:00+08:00",
        Spec("ev-u", "local", status="unfiled", regions=("hebei",)): "ev-u 2.0.0: not filed",
    }
    for spec, message in cases.items():
        with pytest.raises(NotFiled) as err:
            require_filed(filed_set(spec), PERIOD)
        assert str(err.value).startswith(message), spec
        assert isinstance(err.value, FilingError)
    require_filed(filed_set(Spec("ev-ok", "group", until="2025-06-21")), PERIOD)  # through the period's day


def test_the_directory_loader_lists_every_version_and_refuses_two_files_for_one(tmp_path: Path) -> None:
    shipped = list_parameter_sets(PARAMS_DIR)
    assert len(shipped) == len(list(PARAMS_DIR.glob("*.yaml")))
    assert {(s.id, s.version) for s in shipped} >= {
        ("ev-charging-jjj", "1.0.0"),
        ("ev-charging-jjj", "2.0.0"),
    }
    write_sets(tmp_path, Spec("ev-a", "group"), Spec("ev-a", "group", version="2.1.0"))
    assert [(s.id, s.version) for s in list_parameter_sets(tmp_path)] == [
        ("ev-a", "2.0.0"),
        ("ev-a", "2.1.0"),
    ]
    (tmp_path / "zz-copy.yaml").write_bytes(filed_bytes(Spec("ev-a", "national")))
    with pytest.raises(
        ParameterSetError, match=r"zz-copy.yaml: parameter set ev-a 2.0.0 is also .*ev-a-2.0.0"
    ):
        list_parameter_sets(tmp_path)
    with pytest.raises(ParameterSetError, match="not a directory of parameter sets"):
        list_parameter_sets(tmp_path / "missing")


def test_unit_region() -> None:
    assert unit_region(["Beijing", None, "beijing"]) == "beijing"
    assert unit_region([None, ""]) is None
    with pytest.raises(FilingError, match=r"several regions \['beijing', 'hebei'\]: select per region"):
        unit_region(["beijing", "hebei"])


# -- statements and verification -----------------------------------------------------------------

LOCAL = Spec("ev-bj-local", "local", regions=("beijing",))
GROUP = Spec("ev-group", "group")


def _verify(document: bytes, **kw: Any) -> list[str]:
    return verify_statement(
        document, issuer_key=KEY.public_key, source=ev_source_for(document), **kw
    ).problems


_SOURCES: dict[bytes, Any] = {}


def ev_source_for(document: bytes) -> Any:
    return _SOURCES[document]


def _signed(params: Any, **claims: Any) -> tuple[bytes, dict[str, Any]]:
    src = ev_source()
    st = issue_statement(compute(src, params, EV, PERIOD), KEY, created_ms=0, **claims)
    _SOURCES[st.to_bytes()] = src
    return st.to_bytes(), st.body


def test_statements_of_unfiled_sets_keep_their_form() -> None:
    doc, body = _signed(load_parameter_set(EV_V2))
    assert set(body["methodology"]) == {"scenario", "title", "programme", "parameter_set"}
    assert _verify(doc) == []


def test_a_filed_set_is_named_with_its_filing_and_production_verifies() -> None:
    local = filed_set(LOCAL)
    doc, body = _signed(local, production=True)
    assert body["methodology"]["production"] is True
    assert body["methodology"]["filing"] == {
        "status": "filed",
        "tier": "local",
        "standard": "DB11/T 3043-2024",
        "authority": "北京市生态环境局",
        "number": "TEST-ev-bj-local-2.0.0 (fictitious)",
        "regions": ["beijing"],
        "valid_from": "2024-01-01",
        "valid_to": None,
        "source": "test fixture",
        "note": "",
    }
    assert _verify(doc, params=local) == []


def test_a_production_claim_with_an_unfiled_set_does_not_verify() -> None:
    doc, _ = _signed(load_parameter_set(EV_V2), production=True)  # signed past the CLI's check
    assert _verify(doc) == [
        "production: ev-charging-jjj 2.0.0: not filed (no filing section, or filing.status 'unfiled'): "
        "production signs only with a filed set valid for the whole period"
    ]
    expired = filed_set(Spec("ev-x", "group", until="2025-06-20"))
    doc, _ = _signed(expired, production=True)
    assert _verify(doc, params=expired)[0].startswith("production: ev-x 2.0.0: filing TEST-ev-x-2.0.0")


def test_a_selection_verifies_when_the_rule_picks_the_named_set_again(tmp_path: Path) -> None:
    local, group = filed_set(LOCAL), filed_set(GROUP)
    sel = select_for_unit([group, local], "ev_charging", "beijing", PERIOD, production=True)
    assert sel.chosen == local
    doc, body = _signed(local, selection=sel.to_json(), production=True)
    assert body["methodology"]["selection"]["reason"] == "tier"
    assert _verify(doc, params=local, candidates=[local, group]) == []
    write_sets(tmp_path, LOCAL, GROUP)
    assert _verify(doc, params_dir=tmp_path) == []  # found by id, version and sha256 in a directory
    problems = _verify(doc, params=local, candidates=[local])
    assert problems == [
        f"selection: candidates ['ev-group 2.0.0 sha256 {group.sha256}'] are not in the candidate sets "
        "given: the rule cannot be re-run"
    ]


def test_a_selection_that_names_the_losing_set_does_not_verify() -> None:
    local, group = filed_set(LOCAL), filed_set(GROUP)
    sel = select_for_unit([group, local], "ev_charging", "beijing", PERIOD)
    doc, _ = _signed(group, selection=sel.to_json())  # computed with the set the rule did not pick
    problems = _verify(doc, params=group, candidates=[local, group])
    ref = {"id": "ev-group", "version": "2.0.0", "sha256": group.sha256}
    assert problems[:2] == [
        f"selection: chooses {{'id': 'ev-bj-local', 'version': '2.0.0', 'sha256': '{local.sha256}'}}, "
        f"the statement is computed with {ref}",
        "selection: rule puhui-precedence/1 picks ev-bj-local 2.0.0 among the candidates, "
        "the statement is computed with ev-group 2.0.0",
    ]


def test_a_selection_for_another_region_or_rule_does_not_verify() -> None:
    group, national = filed_set(GROUP), filed_set(Spec("ev-national", "national"))
    sel = select_for_unit([group], "ev_charging", "hebei", PERIOD)
    doc, _ = _signed(group, selection=sel.to_json())
    assert _verify(doc, params=group, candidates=[group]) == [
        "selection: made for region 'hebei', the subject's meters are enrolled in 'beijing'",
    ]
    other = sel.to_json() | {"rule": "puhui-precedence/0"}
    doc, _ = _signed(group, selection=other)
    assert _verify(doc, params=group, candidates=[group]) == [
        "selection: rule 'puhui-precedence/0' is unknown (this verifier knows 'puhui-precedence/1')"
    ]
    # a forged record that marks the outranked set as chosen: the rule, run again, disagrees
    sel = select_for_unit([group, national], "ev_charging", "beijing", PERIOD)
    forged = sel.to_json() | {"chosen": {"id": group.id, "version": group.version, "sha256": group.sha256}}
    forged["candidates"] = [
        c | {"reason": "chosen"} if c["id"] == "ev-group" else c for c in forged["candidates"]
    ]
    doc, _ = _signed(group, selection=forged)
    problems = _verify(doc, params=group, candidates=[group, national])
    assert problems[0] == (
        "selection: rule puhui-precedence/1 picks ev-national 2.0.0 among the candidates, "
        "the statement is computed with ev-group 2.0.0"
    )
    assert any(p.startswith("recomputed: .methodology.selection.") for p in problems)


def test_a_changed_candidate_file_is_named(tmp_path: Path) -> None:
    local, group = filed_set(LOCAL), filed_set(GROUP)
    sel = select_for_unit([group, local], "ev_charging", "beijing", PERIOD)
    doc, _ = _signed(local, selection=sel.to_json())
    write_sets(tmp_path, LOCAL, GROUP)
    path = tmp_path / "ev-group-2.0.0.yaml"
    path.write_bytes(path.read_bytes() + b"# edited\n")
    problems = _verify(doc, params_dir=tmp_path)
    assert problems == [
        f"selection: candidates ['ev-group 2.0.0 sha256 {group.sha256}'] are not in {tmp_path}: "
        "the rule cannot be re-run"
    ]


def test_the_filing_in_a_statement_must_be_the_sets() -> None:
    local = filed_set(LOCAL)
    doc, body = _signed(local, production=True)
    body["methodology"]["filing"]["number"] = "TEST-9999 (fictitious)"
    resigned = sign_statement(body, KEY).to_bytes()  # by the aggregator's own key
    _SOURCES[resigned] = ev_source_for(doc)
    assert _verify(resigned, params=local) == [
        "recomputed: .methodology.filing.number is 'TEST-9999 (fictitious)' in the statement, "
        "'TEST-ev-bj-local-2.0.0 (fictitious)' recomputed"
    ]
