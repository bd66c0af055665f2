"""SunSpec: discover a device's model chain and turn models into register fields.

Discovery (devices.md): at each base address in turn (40000, 0, 50000) look for the
marker "SunS" (0x5375 0x6E53); then read 2-word headers ``[model id, length L]`` (L
excludes the header) block after block until id 0xFFFF. :class:`ChainWalk` does this
without I/O: it says which registers to read next and is fed the answers, so the same
logic serves a blocking probe tool, the async driver and tests on a register image.

Model definitions come from pysunspec2's JSON files (``sunspec2/models/json``), read as
data; pysunspec2's client is not used (it is blocking and reads an acc32 of 0 as "not
implemented": here a counter of 0 is a real 0). :func:`chain_fields` produces
:class:`drivers.modbus.profiles.RegisterField` s for the mapped points of the supported models,
their scale-factor registers and the common model's identity strings.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from drivers.errors import SunSpecModelError, SunSpecNotFound
from drivers.modbus.decode import RegisterType
from drivers.modbus.profiles import RegisterField, SunSpecMapping, SunSpecPoint

MARKER = (0x5375, 0x6E53)  # "SunS"
END_ID = 0xFFFF
DEFAULT_BASES = (40000, 0, 50000)
_TYPE_MAP: dict[str, RegisterType] = {t.value: t for t in RegisterType}
_TYPE_MAP |= {
    "enum16": RegisterType.UINT16,
    "bitfield16": RegisterType.UINT16,
    "count": RegisterType.UINT16,
    "acc16": RegisterType.UINT16,
    "enum32": RegisterType.UINT32,
    "bitfield32": RegisterType.UINT32,
}
IDENTITY_POINTS = ("Mn", "Md", "Vr", "SN")


@dataclass(frozen=True, slots=True)
class PointDefinition:
    """One point of a model: offset from the block start (header included), type, size."""

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None
    units: str


@dataclass(frozen=True, slots=True)
class ModelDefinition:
    """A SunSpec model's fixed points, from pysunspec2's JSON."""

    id: int
    name: str
    points: tuple[PointDefinition, ...]

    @property
    def length(self) -> int:
        """L of the fixed block: registers after the 2-word header."""
        return sum(p.size for p in self.points) - 2


@dataclass(frozen=True, slots=True)
class ModelBlock:
    """A model found on the device: id, address of its ID register, and L."""

    id: int
    address: int
    length: int


@dataclass(frozen=True, slots=True)
class SunSpecChain:
    """Where the marker was found and the blocks after it, in order."""

    base: int
    blocks: tuple[ModelBlock, ...]


@cache
def load_model(model_id: int) -> ModelDefinition:
    """pysunspec2's definition of ``model_id`` (cached). Raises :class:`SunSpecModelError`."""
    try:
        ref = importlib.resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
        data = json.loads(ref.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as exc:
        raise SunSpecModelError(f"no usable pysunspec2 definition of model {model_id}: {exc}") from exc
    return _definition(model_id, data)


def _definition(model_id: int, data: Mapping[str, Any]) -> ModelDefinition:
    group = data.get("group")
    if not isinstance(group, dict) or group.get("groups"):
        raise SunSpecModelError(f"model {model_id}: only models without repeating groups are supported")
    points: list[PointDefinition] = []
    offset = 0
    for p in group.get("points", []):
        size = int(p["size"])
        sf = p.get("sf")
        points.append(PointDefinition(p["name"], p["type"], offset, size, sf, p.get("units", "")))
        offset += size
    return ModelDefinition(model_id, str(group.get("name", "")), tuple(points))


class ChainWalk:
    """Sans-I/O discovery of a SunSpec model chain.

    Loop ``while (req := walk.request()) is not None: walk.feed(read(*req))`` where
    ``read(address, count)`` returns the registers or ``None`` when the device answered
    with an exception (an unmapped base). Then :attr:`chain` holds the result.
    """

    def __init__(self, bases: Sequence[int] = DEFAULT_BASES, *, max_blocks: int = 64) -> None:
        self._bases = list(bases)
        self._max_blocks = max_blocks
        self._base: int | None = None
        self._next = 0
        self._blocks: list[ModelBlock] = []
        self._done = False

    def request(self) -> tuple[int, int] | None:
        """(address, count) to read next, or None when the walk is over."""
        if self._done:
            return None
        if self._base is None:
            return (self._bases[0], 2)
        return (self._next, 2)

    def feed(self, registers: Sequence[int] | None) -> None:
        """The answer to the last :meth:`request` (None: the read failed)."""
        if self._base is None:
            self._feed_marker(registers)
        else:
            self._feed_header(registers)

    def _feed_marker(self, registers: Sequence[int] | None) -> None:
        base = self._bases.pop(0)
        if registers is not None and tuple(registers) == MARKER:
            self._base, self._next = base, base + 2
        elif not self._bases:
            self._done = True

    def _feed_header(self, registers: Sequence[int] | None) -> None:
        if registers is None or len(registers) != 2:
            raise SunSpecModelError(f"SunSpec chain: no model header at {self._next}")
        model_id, length = registers
        if model_id == END_ID:
            self._done = True
            return
        if len(self._blocks) >= self._max_blocks or self._next + 2 + length > 0x10000:
            raise SunSpecModelError(f"SunSpec chain runs past {len(self._blocks)} blocks / the address space")
        self._blocks.append(ModelBlock(model_id, self._next, length))
        self._next += 2 + length

    @property
    def chain(self) -> SunSpecChain:
        """The discovered chain. Raises :class:`SunSpecNotFound` if no base had the marker."""
        if not self._done:
            raise SunSpecModelError("SunSpec walk is not finished")
        if self._base is None:
            raise SunSpecNotFound("no SunSpec marker 'SunS' at any base address")
        return SunSpecChain(self._base, tuple(self._blocks))


def walk_chain(
    read: Callable[[int, int], Sequence[int] | None], bases: Sequence[int] = DEFAULT_BASES
) -> SunSpecChain:
    """Walk with a blocking ``read(address, count)`` (probe tool, tests)."""
    walk = ChainWalk(bases)
    while (req := walk.request()) is not None:
        walk.feed(read(*req))
    return walk.chain


def mapped_points(mapping: SunSpecMapping, model_id: int) -> dict[str, SunSpecPoint]:
    """The point -> quantity map for ``model_id``; keys like ``"101-103,111-113"``."""
    out: dict[str, SunSpecPoint] = {}
    for key, points in mapping.points.items():
        if model_id in model_ids(key):
            out.update(points)
    return out


def model_ids(key: str) -> set[int]:
    """Model ids of a mapping key like ``"101-103,111-113"``."""
    ids: set[int] = set()
    for part in key.split(","):
        lo, _, hi = part.strip().partition("-")
        ids.update(range(int(lo), int(hi or lo) + 1))
    return ids


def chain_fields(chain: SunSpecChain, mapping: SunSpecMapping) -> tuple[RegisterField, ...]:
    """Fields for the supported blocks of ``chain``: mapped points (with quantities), the
    sunssf registers they use and the common model's identity strings.

    Field names are ``m<id>.<point>`` (``m<id>_<n>.<point>`` for the n-th repeat of a model).
    A quantity goes to the first block that maps it; later blocks keep the field unnamed.
    """
    fields: list[RegisterField] = []
    taken: set[str] = set()
    seen: dict[int, int] = {}
    for block in chain.blocks:
        if block.id not in mapping.models:
            continue
        seen[block.id] = seen.get(block.id, 0) + 1
        prefix = f"m{block.id}" + (f"_{seen[block.id]}" if seen[block.id] > 1 else "")
        fields.extend(block_fields(block, prefix, mapped_points(mapping, block.id), taken))
    return tuple(fields)


def block_fields(
    block: ModelBlock, prefix: str, points: Mapping[str, SunSpecPoint], taken: set[str]
) -> list[RegisterField]:
    """Fields of one block (see :func:`chain_fields`); ``taken`` collects used quantities."""
    definition = load_model(block.id)
    by_name = {p.name: p for p in definition.points}
    identity = IDENTITY_POINTS if block.id == 1 else ()
    wanted = [p for p in definition.points if p.name in points or p.name in identity]
    sfs = {p.sf for p in wanted if isinstance(p.sf, str) and p.sf in by_name}
    out: list[RegisterField] = []
    for point in definition.points:
        if point.offset + point.size > block.length + 2:
            break  # the device's block is shorter than the definition
        if point.name in sfs:
            out.append(_field(block, prefix, point, None))
        elif point in wanted:
            mapped = points.get(point.name)
            if mapped is not None and mapped.quantity in taken:
                mapped = None
            if mapped is not None:
                taken.add(mapped.quantity)
            out.append(_field(block, prefix, point, mapped))
    return out


def _field(
    block: ModelBlock, prefix: str, point: PointDefinition, mapped: SunSpecPoint | None
) -> RegisterField:
    rtype = _TYPE_MAP.get(point.type)
    if rtype is None:
        raise SunSpecModelError(f"model {block.id} point {point.name}: type {point.type} is not supported")
    is_string = rtype is RegisterType.STRING
    scale, scale_factor = 1.0, None
    if isinstance(point.sf, int):
        scale = 10.0**point.sf
    elif isinstance(point.sf, str):
        scale_factor = f"{prefix}.{point.sf}"
    return RegisterField(
        name=f"{prefix}.{point.name}",
        quantity=mapped.quantity if mapped else None,
        unit=point.units,
        function=3,
        address=block.address + point.offset,
        type=rtype,
        length=point.size if is_string else None,
        scale=scale,
        scale_factor=scale_factor,
        not_implemented="none" if is_string else "sunspec",
        kind=mapped.kind if mapped else "info",
        group=(mapped.group if mapped else None) or ("identity" if is_string else None),
    )
