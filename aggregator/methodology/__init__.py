"""Methodology engine and signed reduction statements (PV, EV charging, clean heating).

Attested intervals (:mod:`aggregator.view`) from an :class:`EvidenceSource` are turned into
verified emission reductions with a versioned parameter set, as the programme's
methodology says: ``ER = BE - PE - LE`` per subject and period, never negative, computed
only from plausible, unflagged intervals, with completeness reported and enforced. See
docs/methodologies.md.
"""

from aggregator.methodology.baseline import HistoricalUse, load_baselines
from aggregator.methodology.engine import Computation, compute, compute_from, evaluate, rules_for
from aggregator.methodology.errors import (
    BaselineFileError,
    ComputationError,
    DoubleClaim,
    IneligibleSubject,
    MethodologyError,
    ParameterSetError,
    PerSessionCounter,
    StatementFormatError,
    VerificationFailed,
)
from aggregator.methodology.evaluation import Evaluation
from aggregator.methodology.params import (
    PARAMS_DIR,
    LoadedParameterSet,
    ParameterSet,
    find_parameter_set,
    load_parameter_set,
    parse_parameter_set,
)
from aggregator.methodology.series import SeriesArrays, SeriesKey
from aggregator.methodology.source import EvidenceSource
from aggregator.methodology.statements import Statement, issue_statement, parse_statement
from aggregator.methodology.store import StatementStore, StoredStatement
from aggregator.methodology.subject import Period, Subject, Unit
from aggregator.methodology.verify import VerificationReport, verify_statement

__all__ = [
    "PARAMS_DIR",
    "BaselineFileError",
    "Computation",
    "ComputationError",
    "DoubleClaim",
    "Evaluation",
    "EvidenceSource",
    "HistoricalUse",
    "IneligibleSubject",
    "LoadedParameterSet",
    "MethodologyError",
    "ParameterSet",
    "ParameterSetError",
    "PerSessionCounter",
    "Period",
    "SeriesArrays",
    "SeriesKey",
    "Statement",
    "StatementFormatError",
    "StatementStore",
    "StoredStatement",
    "Subject",
    "Unit",
    "VerificationFailed",
    "VerificationReport",
    "compute",
    "compute_from",
    "evaluate",
    "find_parameter_set",
    "issue_statement",
    "load_baselines",
    "load_parameter_set",
    "parse_parameter_set",
    "parse_statement",
    "rules_for",
    "verify_statement",
]
