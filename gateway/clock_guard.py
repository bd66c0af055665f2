"""Clock discipline: the gateway stamps and seals only while its clock can be trusted.

A Raspberry Pi has no battery-backed clock: it boots at the last shutdown time (or 1970)
and is corrected once NTP answers. Intervals stamped before that would carry wrong times
under a valid signature. The :class:`ClockGuard` says whether time is good now:

- the kernel's view (``adjtimex(2)``, read only): ``TIME_ERROR`` or ``STA_UNSYNC`` means no
  time daemon has disciplined the clock (systemd-timesyncd and chrony clear it on sync);
- a floor: a clock that reads earlier than this software was built is wrong, whatever the
  kernel says (the build time the package bakes in, else :data:`SOURCE_FLOOR`).

While time is not good the gateway keeps polling (the status page shows the readings) but
takes no sample into an interval, closes no interval and seals no batch; once it is good
the interval builder continues from its last good counter readings, as after a restart.
The sync source is injected (:class:`SyncSource`), so tests drive it.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from common.clock import Clock

log = logging.getLogger(__name__)

# Earliest time any clock running this code can honestly read (a source checkout has no
# build time: this is before the code was written).
SOURCE_FLOOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised
STA_UNSYNC = 0x0040


class SyncSource(Protocol):
    """Whether the operating system considers its clock synchronised."""

    def synchronised(self) -> tuple[bool, str]:
        """(synchronised, what was seen: one line for the log and the status page)."""
        ...


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """``struct timex`` (linux/timex.h): modes, then longs, with 11 ints of padding at the end."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_padding", ctypes.c_int * 11),
    ]  # fmt: skip


class KernelSync:
    """The kernel's synchronisation state through ``adjtimex(2)`` with ``modes = 0`` (a read:
    no privilege needed, allowed by the unit's system-call filter)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def synchronised(self) -> tuple[bool, str]:
        tx = _Timex()
        state = self._libc.adjtimex(ctypes.byref(tx))
        if state < 0:
            errno = ctypes.get_errno()
            return False, f"adjtimex failed (errno {errno}): the clock's state is unknown"
        if state == TIME_ERROR or tx.status & STA_UNSYNC:
            return False, "kernel reports the clock unsynchronised (no NTP sync yet: see timedatectl)"
        return True, f"kernel reports the clock synchronised (max error {tx.maxerror / 1000:.0f} ms)"


class AssumeSynchronised:
    """For ``clock: {mode: system, require_sync: false}``: machines whose time daemon does not
    report to the kernel (the floor still applies)."""

    def synchronised(self) -> tuple[bool, str]:
        return True, "synchronisation not checked (clock.require_sync: false)"


def build_floor() -> float:
    """The time the installed package was built (gateway/build_info.json), else SOURCE_FLOOR."""
    try:
        text = resources.files("gateway").joinpath("build_info.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return SOURCE_FLOOR
    return max(SOURCE_FLOOR, float(json.loads(text)["build_time"]))


@dataclass(frozen=True)
class ClockState:
    """The last verdict: good or not, why, and since when (clock seconds)."""

    ok: bool
    detail: str
    since: float


class ClockGuard:
    """Is the clock good to stamp and seal with? Logs every change of verdict."""

    def __init__(self, clock: Clock, source: SyncSource, *, floor: float, gateway: str = "") -> None:
        self._clock, self._source, self._floor, self._gateway = clock, source, floor, gateway
        self.state: ClockState | None = None
        self.refusals = 0  # checks that said no (samples and seals held back)

    def check(self) -> ClockState:
        """Read the clock's state now (one system call)."""
        now = self._clock.now()
        ok, detail = self._source.synchronised()
        if ok and now < self._floor:
            ok = False
            detail = f"clock reads {_utc(now)}, before this software was built ({_utc(self._floor)})"
        if self.state is None or (ok, detail) != (self.state.ok, self.state.detail):
            self.state = ClockState(ok, detail, now)
            self._log_change()
        if not ok:
            self.refusals += 1
        return self.state

    def ok(self) -> bool:
        return self.check().ok

    def _log_change(self) -> None:
        assert self.state is not None
        if self.state.ok:
            log.info("gateway %s: clock good: %s; stamping and sealing", self._gateway, self.state.detail)
        else:
            log.warning(
                "gateway %s: CLOCK NOT GOOD: %s; polling continues, no interval is stamped or sealed "
                "until it is", self._gateway, self.state.detail,
            )  # fmt: skip

    def status(self) -> dict[str, object]:
        """For the status document and page."""
        state = self.state or self.check()
        return {"ok": state.ok, "detail": state.detail, "since": state.since, "held_back": self.refusals}


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = [
    "SOURCE_FLOOR",
    "AssumeSynchronised",
    "ClockGuard",
    "ClockState",
    "KernelSync",
    "SyncSource",
    "build_floor",
]
