"""Errors of the drivers package.

::

    DriverError
    ├── CodecError                  a register value cannot be encoded or decoded as asked
    │   └── RegisterCountError      wrong number of registers for the field's type
    ├── PlanError                   fields that cannot be read with the request limits
    │   └── ResponseLengthError     a response carries another count than requested
    ├── ProfileError                a profile file is unreadable or invalid
    │   └── UnknownProfile          a site names a profile that is not shipped
    └── SunSpecError                SunSpec discovery or model data
        ├── SunSpecNotFound         no "SunS" marker at any base address
        └── SunSpecModelError       a model block or model definition is inconsistent

Decoding problems of a *value* (NaN, not-implemented markers) are not errors: :func:`
drivers.modbus.decode.decode` returns an :class:`drivers.modbus.decode.Invalid` with the reason, and the
interval builder flags it. Errors here are about the request, the field or the data files.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base class of every error raised by :mod:`drivers`."""


class CodecError(DriverError, ValueError):
    """A value cannot be encoded into, or registers decoded as, the field's type."""


class RegisterCountError(CodecError):
    """The number of registers does not match the field's type and length."""


class PlanError(DriverError, ValueError):
    """Fields that cannot be planned into read requests (too long, duplicate keys)."""


class ResponseLengthError(PlanError):
    """A read response has a different number of registers than its request."""


class ProfileError(DriverError):
    """A profile file cannot be read or does not validate; the message names the file."""


class UnknownProfile(ProfileError, KeyError):
    """A profile name that is not among the loaded profiles."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SunSpecError(DriverError):
    """SunSpec discovery or model data."""


class SunSpecNotFound(SunSpecError):
    """No SunSpec marker ("SunS") at any of the base addresses tried."""


class SunSpecModelError(SunSpecError):
    """A model block or pysunspec2 model definition that cannot be used."""
