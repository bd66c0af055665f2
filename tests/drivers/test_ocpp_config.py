"""The OCPP settings: the README's sample loads through the models; mistakes name the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import drivers.ocpp
from drivers.ocpp import ChargerConfig, ControllerConfig, TapConfig

README = Path(drivers.ocpp.__file__).parent / "README.md"


def sample() -> dict[str, Any]:
    [block] = re.findall(r"^```yaml\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    data: dict[str, Any] = yaml.safe_load(block)
    return data


def test_the_readme_sample_loads() -> None:
    data = sample()
    tap = TapConfig.model_validate(data["tap"])
    controller = ControllerConfig.model_validate(data["controller"])
    assert tap.upstream.startswith("wss://") and tap.chargers["CP-001"].meter_ids[2] == "depot-cp001-right"
    keys = tap.chargers["CP-001"].meter_keys()
    assert keys.for_connector(1) is keys.for_connector(7) is not None  # one meter key for all connectors
    assert controller.chargers["CP-101"].meter_keys().for_connector(2) is None
    assert controller.listen.tls is not None and not controller.accept_unknown


@pytest.mark.parametrize(
    ("model", "data", "where", "message"),
    [
        (TapConfig, {"upstream": "http://csms"}, ("upstream",), "String should match pattern"),
        (
            TapConfig,
            {"upstream": "ws://csms", "upstream_tls": {}},
            (),
            "upstream_tls is for a wss:// upstream",
        ),
        (TapConfig, {"upstream": "ws://csms", "listen": {"prot": 9000}}, ("listen", "prot"), "Extra inputs"),
        (ChargerConfig, {"meter_key": "3059abcd"}, ("meter_key",), "not a DER/PEM public key"),
        (ChargerConfig, {"connector_keys": {2: "zz"}}, ("connector_keys",), "connector 2: public key"),
        (
            ChargerConfig,
            {"meter_ids": {1: "bad id/1"}},
            ("meter_ids",),
            "connector 1: 'bad id/1' is not a meter id",
        ),
        (
            ControllerConfig,
            {"heartbeat_interval_s": 1},
            ("heartbeat_interval_s",),
            "greater than or equal to 10",
        ),
    ],
)
def test_mistakes_name_the_field(
    model: Any, data: dict[str, Any], where: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    [error] = info.value.errors()
    assert tuple(error["loc"]) == where and message in error["msg"], error
