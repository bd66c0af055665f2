"""SunSpec: walk a synthetic register image built with our encoder, decode models."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from drivers.contract import Invalid
from drivers.errors import SunSpecNotFound
from drivers.modbus.decode import FieldFormat, RegisterType, decode_fields, encode
from drivers.modbus.profiles import load_profiles
from drivers.modbus.sunspec import ChainWalk, chain_fields, load_model, walk_chain


def build_image(base: int, models: Sequence[tuple[int, dict[str, float | str]]]) -> dict[int, int]:
    """A device image: marker, then each model filled from its definition, then the end."""
    image: dict[int, int] = {base: 0x5375, base + 1: 0x6E53}
    addr = base + 2
    for model_id, values in models:
        definition = load_model(model_id)
        image[addr], image[addr + 1] = model_id, definition.length
        for p in definition.points[2:]:
            known = p.type in RegisterType.__members__.values()
            rtype = RegisterType(p.type) if known else RegisterType.UINT16
            fmt = FieldFormat(type=rtype, length=p.size if rtype is RegisterType.STRING else None)
            if rtype is not RegisterType.STRING and fmt.registers != p.size:
                fmt = FieldFormat(type=RegisterType.UINT32) if p.size == 2 else FieldFormat(type="uint16")
            raw = values.get(p.name, "" if rtype is RegisterType.STRING else 0)
            for i, w in enumerate(encode(raw, fmt)):
                image[addr + p.offset + i] = w
        addr += 2 + definition.length
    image[addr], image[addr + 1] = 0xFFFF, 0
    return image


def reader(image: dict[int, int]):  # type: ignore[no-untyped-def]
    def read(address: int, count: int) -> list[int] | None:
        if address not in image:
            return None  # exception response: illegal data address
        return [image.get(a, 0) for a in range(address, address + count)]

    return read


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_walk_finds_chain_at_each_base(base: int) -> None:
    image = build_image(base, [(1, {"Mn": "PuhuiSim", "SN": "INV-1"}), (103, {}), (203, {})])
    chain = walk_chain(reader(image))
    assert chain.base == base
    assert [b.id for b in chain.blocks] == [1, 103, 203]
    assert chain.blocks[1].address == base + 2 + 2 + 66  # model 1 has L = 66


def test_no_marker_is_an_error() -> None:
    with pytest.raises(SunSpecNotFound):
        walk_chain(lambda a, c: [0, 0])


def test_sans_io_walk_requests() -> None:
    walk = ChainWalk()
    assert walk.request() == (40000, 2)
    walk.feed(None)
    assert walk.request() == (0, 2)


def test_inverter_103_and_meter_203_decode_with_scale_factors_and_zero_counter() -> None:
    inverter = {"W": 4321, "W_SF": 0, "WH": 0, "WH_SF": 0, "Hz": 5001, "Hz_SF": -2}
    meter = {"W": 1500, "W_SF": -1, "TotWhImp": 123456, "TotWhExp": 654, "TotWh_SF": 1}
    image = build_image(40000, [(1, {"Mn": "PuhuiSim"}), (103, inverter), (203, meter)])
    mapping = load_profiles()["sunspec"].sunspec
    assert mapping is not None
    fields = {f.name: f for f in chain_fields(walk_chain(reader(image)), mapping)}
    wh = fields["m103.WH"]
    assert (wh.quantity, wh.kind, wh.scale_factor) == ("energy_generated", "counter", "m103.WH_SF")
    assert wh.address == 40002 + 68 + 24  # devices.md: WH @24 in model 103
    assert fields["m203.W"].address == 40002 + 68 + 52 + 18  # devices.md: W @18
    assert fields["m203.TotWhImp"].address == 40002 + 68 + 52 + 46
    read = reader(image)
    registers = {n: read(f.address, f.registers) or [] for n, f in fields.items()}
    values = decode_fields(fields, registers)
    assert values["m103.WH"] == 0.0  # a counter of 0 is a real 0
    assert values["m103.W"] == 4321.0
    assert values["m103.Hz"] == pytest.approx(50.01)
    assert values["m203.TotWhImp"] == 1234560.0
    assert values["m203.W"] == pytest.approx(150.0)
    assert values["m1.Mn"] == "PuhuiSim"
    assert fields["m203.W"].quantity is None or fields["m103.W"].quantity == "power"  # first block wins


def test_not_implemented_points_are_invalid() -> None:
    image = build_image(40000, [(103, {"W": -32768, "W_SF": 0})])
    mapping = load_profiles()["sunspec"].sunspec
    assert mapping is not None
    fields = {f.name: f for f in chain_fields(walk_chain(reader(image)), mapping)}
    read = reader(image)
    values = decode_fields(fields, {n: read(f.address, f.registers) or [] for n, f in fields.items()})
    assert isinstance(values["m103.W"], Invalid)


def test_all_supported_models_load() -> None:
    for model_id in (1, 101, 102, 103, 111, 112, 113, 201, 202, 203, 204):
        assert load_model(model_id).length > 0
