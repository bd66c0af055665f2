"""OCPP driver: a transparent tap and a local controller that read metering from OCPP 1.6J /
2.0.1 traffic, and OCMF signed meter values (parse, verify, build). docs/ocpp.md has the modes."""

from drivers.ocpp.config import ChargerConfig, ControllerConfig, Listen, TapConfig
from drivers.ocpp.controller import OcppController
from drivers.ocpp.metering import (
    ENERGY,
    CollectingSink,
    FrameProblem,
    MeteringReader,
    MeteringSink,
    SessionEvent,
    SignedValue,
    is_meter_signed,
)
from drivers.ocpp.tap import LinkStats, OcppTap

__all__ = [
    "ENERGY",
    "ChargerConfig",
    "CollectingSink",
    "ControllerConfig",
    "FrameProblem",
    "LinkStats",
    "Listen",
    "MeteringReader",
    "MeteringSink",
    "OcppController",
    "OcppTap",
    "SessionEvent",
    "SignedValue",
    "TapConfig",
    "is_meter_signed",
]
