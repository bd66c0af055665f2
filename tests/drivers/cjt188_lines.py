"""In-test lines for the CJ/T 188 tests: byte pipes only, no timing.

The real line owner (serial port, serial server) is another module's; these stand in for
the byte pipe so the driver's framing, checks and policy can be tested against exact
frames (``ReplayLine``) or firmware_sim responders (``ResponderLine``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.line.contract import AnswerReader, LineTimeout
from firmware_sim.line_contract import LineResponder


class _Bytes:
    """A ReadExactly over the bytes that came back; running out is the line's timeout."""

    def __init__(self, data: bytes, label: str) -> None:
        self._data, self._pos, self._label = data, 0, label

    async def __call__(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            got = len(self._data) - self._pos
            raise LineTimeout(f"{self._label}: no complete answer (got {got} of {n} bytes)")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk


@dataclass
class ReplayLine:
    """Answers one expected request with one recorded answer; records what was sent."""

    request: bytes
    answer: bytes
    id: str = "replay"
    sent: list[bytes] = field(default_factory=list)

    async def exchange(
        self, request: bytes, read_answer: AnswerReader, *, timeout_s: float, label: str
    ) -> bytes:
        self.sent.append(request)
        reply = self.answer if request == self.request else b""
        return await read_answer(_Bytes(reply, label))

    async def send(self, request: bytes, *, label: str) -> None:
        self.sent.append(request)


@dataclass
class ResponderLine:
    """Hands each request to every responder (sim time ``now``); answers that overlap
    collide (bytewise AND, as dominant zeros win on a shared pair)."""

    responders: list[LineResponder]
    now: float = 0.0
    id: str = "test-line"
    exchanges: int = 0

    async def exchange(
        self, request: bytes, read_answer: AnswerReader, *, timeout_s: float, label: str
    ) -> bytes:
        self.exchanges += 1
        return await read_answer(_Bytes(self._answers(request), label))

    async def send(self, request: bytes, *, label: str) -> None:
        self._answers(request)

    def _answers(self, request: bytes) -> bytes:
        answers: list[bytes] = []
        for responder in self.responders:
            taken = responder.take(request, self.now)
            if taken is not None and taken.answer is not None:
                answers.append(taken.answer)
        if not answers:
            return b""
        wire = bytearray(answers[0])
        for other in answers[1:]:
            wire = bytearray(a & b for a, b in zip(wire, other, strict=False)) + wire[len(other) :]
        return bytes(wire)
