"""What a protocol driver asks of a shared physical line, and the errors a line raises.

A *line* is one RS-485 pair, reached through a local serial port or a transparent TCP
serial server. Many devices, possibly speaking different protocols, hang on it; only one
frame may be on the wire at a time. The line's owner serialises :meth:`Line.exchange`
calls, keeps the configured silence between frames, enforces each request's timeout and
discards stale input before the next request, so a late answer from one device can never
be read as another's.

A protocol driver supplies the request bytes (wake-up preamble included) and an
:data:`AnswerReader` that knows its own framing: it reads the answer piece by piece with
the :data:`ReadExactly` it is given and returns the frame bytes. ``ReadExactly`` raises
:class:`LineTimeout` when the request's time is up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from drivers.errors import DriverError

ReadExactly = Callable[[int], Awaitable[bytes]]
"""Read exactly n bytes of the answer, or raise :class:`LineTimeout`."""

AnswerReader = Callable[[ReadExactly], Awaitable[bytes]]
"""A protocol's framing: read one whole answer frame and return its bytes."""


class LineError(DriverError):
    """A request could not be exchanged on a line; the message names the line and device."""


class LineUnreachable(LineError):
    """The serial port cannot be opened, or the serial server cannot be reached."""


class LineTimeout(LineError):
    """No complete answer within the request's timeout (the device is silent or dead)."""


class Line(Protocol):
    """One physical line, shared by every device on it."""

    @property
    def id(self) -> str:
        """The line's id as the site config names it."""
        ...

    async def exchange(
        self, request: bytes, read_answer: AnswerReader, *, timeout_s: float, label: str
    ) -> bytes:
        """Put ``request`` on the wire in turn and return the answer frame ``read_answer`` reads.

        ``label`` names the device and request for errors and logs. Raises
        :class:`LineTimeout`, :class:`LineUnreachable`, or what ``read_answer`` raises
        (a protocol's framing error), which the line passes through unchanged.
        """
        ...

    async def send(self, request: bytes, *, label: str) -> None:
        """Put a frame that expects no answer (a broadcast) on the wire in turn."""
        ...
