"""Evidence assurance levels: who vouches for a credited kWh (issue 24).

Every quantity a methodology credits comes from evidence at one of these levels, strongest
first. Records, statements and docs name the level with these exact strings; a parameter set
may refuse a level (its methodology then credits nothing from evidence at that level and
says so).

- ``meter_signed``: the register readings were signed inside the meter (OCMF, carried in
  OCPP's SignedMeterValue) and verify with the meter's public key pinned at enrolment. The
  gateway's signature covers the signed blob too, but the reading's authenticity does not
  depend on the gateway.
- ``gateway_signed``: read by a puhui gateway from the meter (Modbus, DL/T 645, M-Bus, MQTT,
  OCPP without a valid meter signature) and signed by the gateway's enrolled key.
- ``platform_attested``: imported from the network's own platform (charging orders), signed
  only by the network's import manifest: nothing puhui or the meter measured.
"""

from __future__ import annotations

from typing import Literal, get_args

Assurance = Literal["meter_signed", "gateway_signed", "platform_attested"]

LEVELS: tuple[Assurance, ...] = get_args(Assurance)
"""Strongest first."""

MEANINGS: dict[Assurance, str] = {
    "meter_signed": "signed inside the meter (OCMF) and verified with the meter's pinned key",
    "gateway_signed": "read and signed by an enrolled puhui gateway",
    "platform_attested": "imported from the network's platform, signed by its import manifest",
}


def rank(level: Assurance) -> int:
    """0 for the strongest level; a larger number is weaker."""
    return LEVELS.index(level)


def weakest(levels: tuple[Assurance, ...] | list[Assurance]) -> Assurance:
    """The weakest of ``levels`` (what a quantity built from all of them can claim)."""
    if not levels:
        raise ValueError("weakest() of no levels")
    return max(levels, key=rank)
