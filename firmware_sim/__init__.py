"""firmware_sim: the site in a box (simulated meters over Modbus TCP/RTU and MQTT).

Public API: :class:`Fleet`, :class:`Device`, :class:`FaultState`, :class:`GroundTruth`,
:func:`pty_pair`, :func:`control_request`, :func:`load_fleet`.
"""

from firmware_sim.config import FleetConfig, load_fleet, parse_fleet
from firmware_sim.control import ControlServer, control_request
from firmware_sim.device import Device, Endpoint
from firmware_sim.faults import FaultState
from firmware_sim.fleet import Fleet
from firmware_sim.meter import GroundTruth, IntervalTruth
from firmware_sim.serial import pty_pair

__all__ = [
    "ControlServer",
    "Device",
    "Endpoint",
    "FaultState",
    "Fleet",
    "FleetConfig",
    "GroundTruth",
    "IntervalTruth",
    "control_request",
    "load_fleet",
    "parse_fleet",
    "pty_pair",
]
