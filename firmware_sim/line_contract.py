"""What a simulated device on a shared RS-485 line implements (Modbus RTU, DL/T 645, CJ/T 188).

A simulated line (a pty, or a simulated TCP transparent serial server) collects the bytes a
master writes and offers the buffer to each :class:`LineResponder` on it in turn. A
responder recognises frames of its own protocol only; a device that is not addressed stays
silent, as on a real line. The line drops a buffer that no responder claims after the
line's silence time, as a real device drops a garbled frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Taken:
    """A responder recognised a whole frame at the start of the buffer.

    ``consumed``: bytes of the buffer that frame (and its preamble) used.
    ``answer``: the bytes to write back, or None when the frame was not for this device
    (another address) or asks for no answer (a broadcast), or the device is dead.
    """

    consumed: int
    answer: bytes | None


class LineResponder(Protocol):
    """One simulated device on a simulated line."""

    def take(self, buffer: bytes, now: float) -> Taken | None:
        """Look at the bytes received so far (``now`` is sim clock time).

        Return None when the buffer does not (yet) start with a complete frame of this
        device's protocol; the line waits for more bytes or asks the next responder.
        """
        ...
