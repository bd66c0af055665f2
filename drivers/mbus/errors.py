"""Errors of the M-Bus driver.

::

    DriverError (drivers.errors)
    └── MbusError                   anything M-Bus about one request or answer
        ├── FrameError              bytes that are not a well-formed M-Bus frame (start, L, end)
        │   └── ChecksumError       the CS byte does not match the bytes it covers
        ├── UnexpectedAnswer        a well-formed frame that does not answer our request
        │                           (another address, control field, CI or identification)
        └── TelegramError           a variable data structure that cannot be decoded
            └── UnknownVif          a record whose VIF the standard's tables do not define

"No answer" is the line's ``LineTimeout`` (:mod:`drivers.line.contract`), which names the
meter and the request. ``UnknownVif`` is raised per record: the telegram decoder skips
such a record and lists it (``HeatData.ignored``); it never fails a poll by itself.
Undecodable *values* (non-BCD digits, NaN) and values the meter flags as wrong are not
errors: the decoder returns :class:`drivers.contract.Invalid` for that quantity.
"""

from __future__ import annotations

from drivers.errors import DriverError


class MbusError(DriverError):
    """An M-Bus request or answer that cannot be used."""


class FrameError(MbusError):
    """Bytes that are not a well-formed M-Bus frame (start byte, L fields, end byte)."""


class ChecksumError(FrameError):
    """The frame's CS byte differs from the sum of the bytes it covers."""


class UnexpectedAnswer(MbusError):
    """A frame that does not answer the request (another address, C field, CI, identification)."""


class TelegramError(MbusError):
    """A variable data structure (CI 72) that cannot be decoded: short header, cut record."""


class UnknownVif(TelegramError):
    """A record whose VIF (or VIFE after FB / FD) is not in the standard's tables."""
