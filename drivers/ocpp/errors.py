"""Errors of the OCPP driver (tap, local controller, OCMF).

::

    OcppDriverError (drivers.errors.DriverError)
    ├── OcmfError                   an OCMF record that cannot be used
    │   ├── OcmfFormatError         malformed: the message names the section or field (``RD[2].TM``)
    │   ├── OcmfAlgorithmError      a signature algorithm (SA) that is not supported
    │   └── OcmfKeyError            a public or private key that cannot be read, or does not fit SA
    └── OcppConfigError             a tap or controller setting that cannot be used at start

A signature that does not match is not an error: :func:`drivers.ocpp.ocmf.verify` returns
False. Problems with OCPP frames on the wire are not raised either: they are reported to the
sink as :class:`drivers.ocpp.metering.FrameProblem` and the frame is forwarded unchanged.
"""

from __future__ import annotations

from drivers.errors import DriverError


class OcppDriverError(DriverError):
    """Base class of every error raised by :mod:`drivers.ocpp`."""


class OcmfError(OcppDriverError, ValueError):
    """An OCMF record that cannot be parsed, verified or built."""


class OcmfFormatError(OcmfError):
    """Malformed OCMF; ``field`` is the section or field at fault (``SD``, ``RD[0].RV``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"OCMF {field}: {problem}")
        self.field = field
        self.problem = problem


class OcmfAlgorithmError(OcmfError):
    """A signature algorithm (SA) this implementation does not support."""


class OcmfKeyError(OcmfError):
    """A key that cannot be read, or whose curve is not the one the record's SA names."""


class OcppConfigError(OcppDriverError):
    """A setting of the tap or the controller that cannot be used (named in the message)."""
