"""``puhui gateway run`` with a TLS file it cannot use: one line naming the setting and the
file, exit status 2, no traceback (for the uplink, and for an MQTT meter's connection that
fails while the evidence pipeline's task group is starting)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from evidence.keys import generate_key, public_key_pem, save_private_key
from puhui.pki import issue_client, make_ca

REPO = Path(__file__).resolve().parents[2]


def _site(tmp_path: Path, uplink_tls: dict[str, str], meter_tls: dict[str, str]) -> Path:
    key = generate_key()
    save_private_key(key, tmp_path / "gw-key.pem")
    (tmp_path / "aggregator.pub.pem").write_bytes(public_key_pem(generate_key().public_key))
    meter: dict[str, Any] = {
        "id": "plug", "driver": "mqtt", "scenario": "pv", "counts": ["energy"],
        "nameplate": {"rated_power_kw": 1, "meter_class": "1"},
        "connection": {"host": "127.0.0.1", "port": 1, "tls": meter_tls},
        "source": {"topic": "tele/plug/SENSOR",
                   "fields": {"energy": {"path": "ENERGY.Total", "unit": "kWh", "kind": "counter"}}},
    }  # fmt: skip
    site = {
        "gateway": {"id": "gw-tls-1", "site": "tls-site"},
        "meters": [meter],
        "status": {"enabled": False},
        "evidence": {"key_file": str(tmp_path / "gw-key.pem"), "state_dir": str(tmp_path / "state")},
        "uplink": {"host": "127.0.0.1", "port": 1, "tls": uplink_tls,
                   "aggregator_public_key": str(tmp_path / "aggregator.pub.pem")},
    }  # fmt: skip
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site), encoding="utf-8")
    return path


@pytest.mark.parametrize("broken", ["uplink", "meter"])
def test_an_unusable_tls_key_is_named_without_a_traceback(tmp_path: Path, broken: str) -> None:
    ca = make_ca(tmp_path / "pki")
    issue_client(ca, "gw-tls-1")
    good = {"ca_file": str(ca.layout.ca_cert), "cert_file": str(ca.layout.client_cert("gw-tls-1")),
            "key_file": str(ca.layout.client_key("gw-tls-1"))}  # fmt: skip
    missing = {**good, "key_file": str(tmp_path / "absent.key")}
    config = _site(tmp_path, missing if broken == "uplink" else good, missing if broken == "meter" else good)
    argv = [sys.executable, "-m", "puhui", "gateway", "run", "--config", str(config)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    setting = "uplink.tls.key_file" if broken == "uplink" else "connection.tls.key_file"
    assert result.returncode == 2, result.stderr
    assert f"{setting}: {tmp_path / 'absent.key'}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
