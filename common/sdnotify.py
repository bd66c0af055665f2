"""systemd's service notification (``sd_notify``): readiness and the watchdog, stdlib only.

A ``Type=notify`` unit passes ``NOTIFY_SOCKET`` (a unix datagram socket; ``@`` marks an
abstract one) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The protocol is one datagram of
``KEY=value`` lines per message (sd_notify(3)); no library is needed for that. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing, so the same code runs in a shell.

:class:`ServiceNotifier` is the one object a long-running command uses: ``ready()`` once it
serves, ``stopping()`` when it shuts down, and as an async context manager a watchdog task
that sends ``WATCHDOG=1`` at half the interval systemd asked for, while the event loop runs
(a blocked loop stops the pings and systemd restarts the service).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)


class NotifyError(OSError):
    """``NOTIFY_SOCKET`` is set but the message could not be sent (names the socket)."""


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address systemd gave (abstract ``@name`` as ``\\0name``), or None."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        raise NotifyError(f"NOTIFY_SOCKET={path!r}: not an absolute path or @abstract name")
    return path


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings systemd asked for (``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID``, when set, must be this process (a child must not ping for its parent).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError as exc:
        raise NotifyError(f"WATCHDOG_USEC={usec!r}: not a number of microseconds") from exc
    return value / 1e6 if value > 0 else None


def send(address: str | None, message: str) -> bool:
    """Send one notification datagram; False when there is no socket (not under systemd)."""
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            shown = "@" + address[1:] if address.startswith("\0") else address
            raise NotifyError(f"NOTIFY_SOCKET {shown}: cannot send {message!r}: {exc}") from exc
    return True


class ServiceNotifier:
    """READY=1, STOPPING=1, STATUS= and the watchdog pings of one service process."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env)
        self.watchdog_s = watchdog_interval(env)
        self._task: asyncio.Task[None] | None = None

    def ready(self, status: str = "") -> bool:
        """Tell systemd the service is up (and what it is doing)."""
        return send(self.address, "READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """The one-line status ``systemctl status`` shows."""
        return send(self.address, f"STATUS={text}")

    def stopping(self) -> bool:
        return send(self.address, "STOPPING=1")

    async def __aenter__(self) -> ServiceNotifier:
        if self.address is not None and self.watchdog_s is not None:
            self._task = asyncio.create_task(self._pings(self.watchdog_s / 2), name="sd-watchdog")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # our cancellation of it, not the caller's, ends here

    async def _pings(self, every_s: float) -> None:
        while True:
            try:
                send(self.address, "WATCHDOG=1")
            except NotifyError as exc:
                # systemd will time the service out and restart it: say why, once.
                log.error("watchdog pings stopped: %s", exc)
                return
            await asyncio.sleep(every_s)


__all__ = ["NotifyError", "ServiceNotifier", "notify_address", "send", "watchdog_interval"]
