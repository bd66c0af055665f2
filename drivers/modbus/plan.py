"""Request planning: coalesce field reads into as few Modbus requests as possible.

Fields are grouped by (unit id, function code); within a group they are sorted by address
and cut greedily into requests. A request grows to take the next field while

- the request still spans at most ``max_registers`` (125, the Modbus limit for function
  03/04; for coils and discrete inputs, function 01/02, 2000 bits), and
- the hole between what the request covers so far and the next field is at most
  ``max_gap`` registers (unmapped registers that some devices refuse to read; 0 = only
  adjacent or overlapping fields share a request).

Each field lies entirely inside exactly one request. Greedy cutting is optimal here:
any run of consecutive fields that satisfies both limits stays valid when shortened, so
extending each request as far as it goes never costs an extra request. The plan depends
only on the set of fields, not on their input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from drivers.errors import PlanError, ResponseLengthError

MODBUS_MAX_REGISTERS = 125
MODBUS_MAX_BITS = 2000  # coils / discrete inputs per read (application protocol 6.1, 6.2)
FunctionCode = Literal[1, 2, 3, 4]
BIT_FUNCTIONS = frozenset({1, 2})


def request_limit(function: int, max_registers: int = MODBUS_MAX_REGISTERS) -> int:
    """What one read of ``function`` may cover: bits for 1/2, ``max_registers`` for 3/4."""
    return MODBUS_MAX_BITS if function in BIT_FUNCTIONS else max_registers


@dataclass(frozen=True, slots=True)
class RegisterSpan:
    """One field to read: its key, unit id, function code (1-4), address and count (registers,
    or bits for coils and discrete inputs)."""

    key: str
    unit: int
    function: FunctionCode
    address: int
    count: int

    @property
    def end(self) -> int:
        """First address after the field."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read and the fields it carries."""

    unit: int
    function: FunctionCode
    address: int
    count: int
    fields: tuple[RegisterSpan, ...]


def plan_reads(
    spans: Iterable[RegisterSpan], *, max_registers: int = MODBUS_MAX_REGISTERS, max_gap: int = 0
) -> list[ReadRequest]:
    """The fewest requests that read every span; sorted by (unit, function, address).

    Raises :class:`PlanError` for a span longer than ``max_registers``, an address out of
    the 16-bit range, duplicate keys or bad limits.
    """
    if not 1 <= max_registers <= MODBUS_MAX_REGISTERS:
        raise PlanError(f"max_registers must be 1..{MODBUS_MAX_REGISTERS}, got {max_registers}")
    if max_gap < 0:
        raise PlanError(f"max_gap must be >= 0, got {max_gap}")
    groups: dict[tuple[int, int], list[RegisterSpan]] = {}
    seen: set[str] = set()
    for span in spans:
        _check_span(span, max_registers, seen)
        groups.setdefault((span.unit, span.function), []).append(span)
    requests: list[ReadRequest] = []
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda s: (s.address, s.count, s.key))
        requests.extend(_cut(ordered, request_limit(key[1], max_registers), max_gap))
    return requests


def _check_span(span: RegisterSpan, max_registers: int, seen: set[str]) -> None:
    if span.key in seen:
        raise PlanError(f"field {span.key!r} appears twice")
    seen.add(span.key)
    limit = request_limit(span.function, max_registers)
    what = "bits" if span.function in BIT_FUNCTIONS else "registers"
    if span.count < 1 or span.count > limit:
        raise PlanError(f"field {span.key!r}: {span.count} {what} do not fit one request of {limit}")
    if span.address < 0 or span.end > 0x10000:
        raise PlanError(f"field {span.key!r}: address {span.address}+{span.count} is outside 0..65535")


def _cut(ordered: Sequence[RegisterSpan], max_registers: int, max_gap: int) -> list[ReadRequest]:
    out: list[ReadRequest] = []
    current: list[RegisterSpan] = []
    start = end = 0
    for span in ordered:
        fits = current and span.address - end <= max_gap and max(end, span.end) - start <= max_registers
        if fits:
            current.append(span)
            end = max(end, span.end)
            continue
        if current:
            out.append(_request(current, start, end))
        current, start, end = [span], span.address, span.end
    if current:
        out.append(_request(current, start, end))
    return out


def _request(spans: list[RegisterSpan], start: int, end: int) -> ReadRequest:
    first = spans[0]
    return ReadRequest(first.unit, first.function, start, end - start, tuple(spans))


def slice_response(request: ReadRequest, registers: Sequence[int]) -> dict[str, Sequence[int]]:
    """Each field's registers out of one response. Raises :class:`ResponseLengthError`."""
    if len(registers) != request.count:
        raise ResponseLengthError(
            f"unit {request.unit} fc {request.function} @{request.address}: asked for "
            f"{request.count} registers, got {len(registers)}"
        )
    base = request.address
    return {s.key: registers[s.address - base : s.end - base] for s in request.fields}
