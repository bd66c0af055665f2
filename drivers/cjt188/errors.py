"""Errors of the CJ/T 188 driver.

::

    DriverError (drivers.errors)
    └── Cjt188Error                 anything CJ/T 188 about one request or answer
        ├── FrameError              bytes that are not a well-formed CJ/T 188 frame
        │   └── ChecksumError       the CS byte does not match the bytes it covers
        ├── UnexpectedAnswer        a well-formed frame that does not answer our request
        │                           (another address, meter type, control code or identifier)
        ├── AbnormalAnswer          the meter answered "abnormal" (control bit 6) with its status
        └── LayoutError             a data block of another length than its identifier's layout

A line that cannot carry the request raises :mod:`drivers.line.contract`'s ``LineError``;
this driver passes those through. Undecodable *values* (non-BCD digits, unknown unit codes)
are not errors: the decoder returns :class:`drivers.contract.Invalid` for that field.
"""

from __future__ import annotations

from drivers.errors import DriverError


class Cjt188Error(DriverError):
    """A CJ/T 188 request or answer that cannot be used; the message names the meter."""


class FrameError(Cjt188Error):
    """Bytes that are not a well-formed CJ/T 188 frame (start, length, end byte)."""


class ChecksumError(FrameError):
    """The frame's CS byte differs from the sum of the bytes it covers."""


class UnexpectedAnswer(Cjt188Error):
    """A frame that does not answer the request (another address, type, control or identifier)."""


class AbnormalAnswer(Cjt188Error):
    """The meter set the abnormal bit (C = request | 0xC0) and sent its status bytes."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class LayoutError(Cjt188Error):
    """A data block whose length does not fit the layout of its data identifier."""
