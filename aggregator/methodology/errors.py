"""Errors of the methodology engine.

::

    MethodologyError
    ├── ParameterSetError         a parameter file is unreadable or invalid (names file and path)
    ├── BaselineFileError         a heating baseline file is unreadable or invalid
    ├── ComputationError          a statement cannot be computed as asked
    │   ├── IneligibleSubject     a meter breaks an eligibility rule (size cap, crediting life,
    │   │                         programme region, calibration, meter class)
    │   └── PerSessionCounter     an EV meter has only a per-session counter and the set refuses it
    ├── DoubleClaim               intervals already credited by a stored statement
    ├── StatementFormatError      a statement document is malformed or not canonical
    └── VerificationFailed        signature, evidence or recomputation does not match

Data problems of single intervals (gaps, flags, implausible values) are not errors: the
interval is excluded, counted under its reason and reported in the statement.
"""

from __future__ import annotations


class MethodologyError(Exception):
    """Base class of every error raised by :mod:`aggregator.methodology`."""


class ParameterSetError(MethodologyError, ValueError):
    """A parameter set file cannot be read or fails validation."""


class BaselineFileError(MethodologyError, ValueError):
    """A heating baseline file (recorded household coal use) cannot be read or fails validation."""


class ComputationError(MethodologyError, ValueError):
    """A statement cannot be computed for the subject and period asked for."""


class IneligibleSubject(ComputationError):
    """A meter is outside the programme's eligibility rules."""


class PerSessionCounter(ComputationError):
    """An EV meter delivers only a per-session counter and the parameter set refuses it."""


class DoubleClaim(MethodologyError):
    """Some intervals of a statement were already credited by a stored statement."""


class StatementFormatError(MethodologyError, ValueError):
    """A statement document is not in the canonical ``puhui-statement/1`` form."""


class VerificationFailed(MethodologyError):
    """A statement does not verify: signature, evidence or recomputed figures differ."""


class ReceiptRefused(MethodologyError):
    """A platform receipt that cannot be taken: unknown statement, out of order, a
    different document under a receipt id already taken, more than was issued."""
