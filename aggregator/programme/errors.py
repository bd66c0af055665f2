"""Errors of the programme layer (units, beneficiaries, scheduled statements, records)."""

from __future__ import annotations


class ProgrammeError(ValueError):
    """A unit, beneficiary or schedule request that cannot be done; the message says why."""
