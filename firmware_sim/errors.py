"""Errors raised by firmware_sim.

::

    SimError                      base of everything firmware_sim raises on purpose
    ├── FleetConfigError          a fleet file does not validate (lists every problem)
    ├── UnknownDeviceError        a name that no device in the fleet has
    ├── UnknownChannelError       a device has no energy channel of that name
    ├── ServeError                a Modbus server, pty or broker connection could not start
    └── ControlError              the control endpoint refused or could not parse a request
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of firmware_sim errors."""


class FleetConfigError(SimError):
    """A fleet file is invalid; ``problems`` holds one ``path: message`` line per error."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class UnknownDeviceError(SimError, KeyError):
    """No simulated device has that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown device"


class UnknownChannelError(SimError, KeyError):
    """A device has no energy channel of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown channel"


class ServeError(SimError):
    """A listener, serial port or broker connection could not be set up."""


class ControlError(SimError):
    """The control endpoint rejected a request."""
