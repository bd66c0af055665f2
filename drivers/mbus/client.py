"""M-Bus requests over a shared :class:`~drivers.line.contract.Line`.

Reading a meter takes two exchanges, each one frame and its answer through
``line.exchange`` (the line serialises every protocol's frames and discards stale input):

- by primary address A: SND_NKE to A (``10 40 A CS 16``), answered E5, then REQ_UD2 to A
  (``10 5B A CS 16``), answered by RSP_UD from A;
- by secondary address: SND_UD with CI = 52 to address FD selects the meter (E5; every
  other meter deselects itself), then REQ_UD2 to FD; the answer's identification number
  must match the selection.

The line's errors (``LineTimeout``: no answer, ``LineUnreachable``) pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.line.contract import Line
from drivers.mbus.errors import UnexpectedAnswer
from drivers.mbus.frame import (
    CI_VARIABLE,
    REQ_UD2,
    RSP_UD,
    SELECTED,
    SND_NKE,
    LongFrame,
    SecondaryAddress,
    decode_answer,
    read_answer,
    select_frame,
    short_frame,
)

if TYPE_CHECKING:
    from drivers.mbus.heat import HeatData
    from drivers.mbus.records import Telegram


@dataclass(frozen=True, slots=True)
class Target:
    """One meter: by primary address (0-250) or by secondary address."""

    primary: int | None = None
    secondary: SecondaryAddress | None = None

    def __post_init__(self) -> None:
        if (self.primary is None) == (self.secondary is None):
            raise ValueError("give a primary or a secondary address, not both")
        if self.primary is not None and not 0 <= self.primary <= 250:
            raise ValueError(f"primary address {self.primary} is not 0-250")

    @property
    def name(self) -> str:
        if self.secondary is not None:
            return f"M-Bus meter {self.secondary.text} (secondary)"
        return f"M-Bus meter {self.primary}"

    @property
    def address(self) -> int:
        """The A field of REQ_UD2: the primary address, or FD for the selected meter."""
        return SELECTED if self.primary is None else self.primary

    def label(self, line: Line) -> str:
        return f"{self.name} on line {line.id}"


async def exchange(
    line: Line, target: Target, request: bytes, what: str, timeout_s: float
) -> LongFrame | None:
    """Send ``request``; the answer's long frame, or None for E5 (checksum and form checked)."""
    raw = await line.exchange(request, read_answer, timeout_s=timeout_s, label=f"{target.name} {what}")
    return decode_answer(raw)


async def wake(line: Line, target: Target, *, timeout_s: float) -> None:
    """SND_NKE (primary) or the selection SND_UD (secondary); the meter must answer E5."""
    if target.secondary is not None:
        request, what = select_frame(target.secondary).encode(), "select"
    else:
        request, what = short_frame(SND_NKE, target.address), "SND_NKE"
    answer = await exchange(line, target, request, what, timeout_s)
    if answer is not None:
        raise UnexpectedAnswer(f"{what} answered by a long frame (C = {answer.control:02X}), not E5")


async def read_telegram(line: Line, target: Target, *, timeout_s: float) -> Telegram:
    """Wake or select the meter, REQ_UD2, check its RSP_UD and split it into records."""
    await wake(line, target, timeout_s=timeout_s)
    answer = await exchange(line, target, short_frame(REQ_UD2, target.address), "REQ_UD2", timeout_s)
    return check_rsp_ud(target, answer)


async def read_heat(line: Line, target: Target, *, timeout_s: float) -> HeatData:
    """Wake or select the meter, REQ_UD2, check and decode its RSP_UD."""
    from drivers.mbus.heat import decode_heat  # the M-Bus library only when a meter is read

    return decode_heat(await read_telegram(line, target, timeout_s=timeout_s))


def check_rsp_ud(target: Target, answer: LongFrame | None) -> Telegram:
    """The telegram of ``answer`` once it is an RSP_UD from the meter asked (else raises)."""
    if answer is None:
        raise UnexpectedAnswer("REQ_UD2 answered E5, not RSP_UD")
    if answer.function != RSP_UD:
        raise UnexpectedAnswer(f"answer with C = {answer.control:02X}, RSP_UD is 08 (18, 28, 38)")
    if target.primary is not None and answer.address != target.primary:
        raise UnexpectedAnswer(f"answer from primary address {answer.address}, asked {target.primary}")
    if answer.ci != CI_VARIABLE:
        raise UnexpectedAnswer(f"answer with CI = {answer.ci:02X}, not 72 (variable data, long header)")
    from drivers.mbus.records import parse_variable_data  # the M-Bus library only when read

    telegram = parse_variable_data(answer.data)
    header = telegram.header
    if target.secondary is not None and not target.secondary.matches(
        header.identification, header.manufacturer + bytes([header.version, header.medium])
    ):
        raise UnexpectedAnswer(
            f"answer from secondary address {header.secondary_address}, selected {target.secondary.text}"
        )
    return telegram
