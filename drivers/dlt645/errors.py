"""Errors of a DL/T 645-2007 exchange.

::

    DriverError                         (drivers.errors)
    ├── LineError                       (drivers.line.contract) timeout, unreachable line
    └── Dlt645Error                     a DL/T 645 frame or answer that cannot be used
        ├── FrameError                  not a frame: start, length, checksum or end byte wrong
        ├── UnexpectedAnswer            a valid frame, but from another address, for another
        │                               identifier or with another control code
        └── ErrorAnswer                 the meter answered 0xD1 (abnormal) with an error byte

Messages name the meter address and the data identifier. A BCD value that does not
decode is not an error: the source returns an :class:`~drivers.contract.Invalid` sample.
"""

from __future__ import annotations

from drivers.errors import DriverError

# Error byte of an abnormal answer (DL/T 645-2007, the error information word 错误信息字 ERR).
ERROR_BITS: dict[int, str] = {
    0: "other error",
    1: "no such data (the meter has no value for this identifier)",
    2: "password or authorisation error",
    3: "communication rate cannot be changed",
    4: "annual time zones exceed the limit",
    5: "daily time periods exceed the limit",
    6: "tariffs exceed the limit",
}


def error_meanings(code: int) -> list[str]:
    """What each set bit of an error byte means (bit 7 is reserved)."""
    meanings = [text for bit, text in ERROR_BITS.items() if code & (1 << bit)]
    return meanings or [f"reserved error bits 0x{code:02X}"]


class Dlt645Error(DriverError):
    """A DL/T 645 frame or answer that cannot be used."""


class FrameError(Dlt645Error, ValueError):
    """Bytes that are not a DL/T 645 frame (start byte, length, checksum or end byte)."""


class UnexpectedAnswer(Dlt645Error):
    """A valid frame that does not answer the request (another meter, identifier or code)."""


class ErrorAnswer(Dlt645Error):
    """The meter answered with an abnormal frame (control code bit 6 set) and an error byte."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
