"""CJ/T 188 requests over a shared :class:`~drivers.line.contract.Line`: read the heat
meter's data, read a meter's address, find the meters on a line.

Every function here sends one request at a time through ``line.exchange`` (the line
serialises requests of every protocol and discards stale input) and checks that the
answer is the one asked for: a meter's answer frame (bit 7), the same function, address,
meter type, identifier and SER. The line's errors (``LineTimeout``, ``LineUnreachable``)
pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.cjt188.errors import AbnormalAnswer, LayoutError, UnexpectedAnswer
from drivers.cjt188.frame import (
    ANY_TYPE,
    BROADCAST,
    DI_METERING,
    DI_READ_ADDRESS,
    READ_ADDRESS,
    Address,
    Frame,
    IdentifierOrder,
    decode_frame,
    identifier_bytes,
    read_address_request,
    read_answer,
    read_request,
)
from drivers.cjt188.heat import HeatData, Status, decode_heat_block
from drivers.line.contract import Line


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to reach one meter."""

    address: Address
    meter_type: int = 0x20
    order: IdentifierOrder = "90 1F"
    preamble: int = 2
    check_ser: bool = True

    @property
    def name(self) -> str:
        return f"CJ/T 188 meter {self.address} (type {self.meter_type:02X})"

    def label(self, line: Line) -> str:
        return f"{self.name} on line {line.id}"


async def exchange(line: Line, target: Target, request: Frame, timeout_s: float) -> Frame:
    """Send ``request``, return the checked answer frame (abnormal answers raise)."""
    raw = await line.exchange(
        request.encode(target.preamble), read_answer, timeout_s=timeout_s, label=target.name
    )
    answer = decode_frame(raw)
    check_answer(request, answer)
    return answer


def check_answer(request: Frame, answer: Frame) -> None:
    """Raise :class:`UnexpectedAnswer` or :class:`AbnormalAnswer` unless ``answer`` answers ``request``."""
    if not answer.is_answer:
        raise UnexpectedAnswer(f"a master's frame (C = {answer.control:02X}) where an answer was expected")
    if answer.function != request.function:
        raise UnexpectedAnswer(f"answer to function {answer.function:02X}, asked {request.function:02X}")
    if request.address != BROADCAST and answer.address != request.address:
        raise UnexpectedAnswer(f"answer from address {answer.address}, asked {request.address}")
    if request.meter_type != ANY_TYPE and answer.meter_type != request.meter_type:
        raise UnexpectedAnswer(
            f"answer from meter type {answer.meter_type:02X}, asked {request.meter_type:02X}"
        )
    if answer.is_abnormal:
        raise _abnormal(answer)


def _abnormal(answer: Frame) -> AbnormalAnswer:
    data = answer.data
    if len(data) == 3:  # SER ST1 ST2
        status = Status(data[1], data[2])
        return AbnormalAnswer(f"abnormal answer (C = {answer.control:02X}): {status.describe()}", status.word)
    return AbnormalAnswer(
        f"abnormal answer (C = {answer.control:02X}) with data {data.hex(' ').upper() or '(none)'}", None
    )


def check_data_head(request: Frame, answer: Frame, *, check_ser: bool) -> bytes:
    """The answer's DATA after identifier and SER, once those match the request's."""
    if len(answer.data) < 3:
        raise LayoutError(f"answer DATA of {len(answer.data)} bytes has no identifier and SER")
    if answer.data[:2] != request.data[:2]:
        got, asked = answer.data[:2].hex(" ").upper(), request.data[:2].hex(" ").upper()
        raise UnexpectedAnswer(f"answer for identifier {got}, asked {asked}")
    if check_ser and answer.data[2] != request.data[2]:
        raise UnexpectedAnswer(f"answer with SER {answer.data[2]:02X}, asked {request.data[2]:02X}")
    return answer.data[3:]


async def read_data(line: Line, target: Target, di: int, *, ser: int, timeout_s: float) -> bytes:
    """The DATA of "read data" identifier ``di`` (C = 01), after the identifier and SER."""
    request = read_request(target.meter_type, target.address, di, ser, target.order)
    answer = await exchange(line, target, request, timeout_s)
    return check_data_head(request, answer, check_ser=target.check_ser)


async def read_heat(line: Line, target: Target, *, ser: int, timeout_s: float) -> HeatData:
    """Read the current metering data (90 1F) of a heat or cooling meter."""
    return decode_heat_block(await read_data(line, target, DI_METERING, ser=ser, timeout_s=timeout_s))


@dataclass(frozen=True, slots=True)
class FoundMeter:
    address: Address
    meter_type: int


async def read_address(
    line: Line, *, meter_type: int = ANY_TYPE, order: IdentifierOrder = "90 1F", preamble: int = 2,
    ser: int = 0, timeout_s: float = 2.0,
) -> FoundMeter:  # fmt: skip
    """Ask the one meter on the line for its address (wildcard address, C = 0x03).

    With several meters on the line their answers collide: the frame fails its checks
    (a ``FrameError``) or, rarely, one answer survives. Use it on one meter at a time, or
    :func:`probe` with the addresses from the installation list.
    """
    request = read_address_request(meter_type, ser, order)
    target = Target(BROADCAST, meter_type, order, preamble)
    answer = await exchange(line, target, request, timeout_s)
    if answer.function != READ_ADDRESS or answer.data[:2] != identifier_bytes(DI_READ_ADDRESS, order):
        raise UnexpectedAnswer(f"read-address answer with DATA {answer.data.hex(' ').upper()}")
    return FoundMeter(answer.address, answer.meter_type)
