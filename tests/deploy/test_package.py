"""The Debian package, built by ``packaging/build-deb`` and installed by the real dpkg into a
throwaway root (``dpkg --root --force-script-chrootless``: the maintainer scripts run with
``DPKG_ROOT`` set, as dpkg runs them for such roots): files and modes, the puhui user, the
units through ``systemd-analyze verify``, an upgrade and a removal that keep keys, outbox,
evidence and the edited conffile, and the installed gateway telling a real notify socket
READY=1 and WATCHDOG=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNITS = ("puhui-gateway.service", "puhui-aggregator.service")
SYSTEM_UNITS = Path("/lib/systemd/system")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg sets the files' owners: needs root (CI is root)"),
]


def _build(out: Path, version: str) -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    argv = ["bash", str(REPO / "packaging/build-deb"), "--out", str(out), "--version", version,
            "--compress", "gzip"]  # fmt: skip
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.name == f"puhui_{version}_{_arch()}.deb"
    return deb


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("debs")
    return _build(out, "0.1.0~test1"), _build(out, "0.1.0~test2")


def _empty_root(root: Path) -> Path:
    """What a minimal Debian root holds that the package relies on: dpkg's database, the
    account files (dialout exists on Debian), login.defs, and systemd's own units (for
    systemd-analyze verify)."""
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "etc", "usr/lib/systemd"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    shutil.copy("/etc/login.defs", root / "etc/login.defs")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    return root


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
            "--force-confold", *args]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _account(root: Path, file: str, name: str) -> int:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not in {root}/etc/{file}")


def _mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture
def root(tmp_path: Path, debs: tuple[Path, Path]) -> Iterator[Path]:
    r = _empty_root(tmp_path / "root")
    _dpkg(r, "--install", str(debs[0]))
    yield r


def test_install_creates_the_user_the_directories_and_the_venv(root: Path) -> None:
    uid, gid = _account(root, "passwd", "puhui"), _account(root, "group", "puhui")
    passwd = next(x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith("puhui:"))
    assert passwd.endswith(":/var/lib/puhui:/usr/sbin/nologin")
    assert uid < 1000 and gid < 1000  # a system account
    assert _mode(root / "etc/puhui") == (0o750, 0, gid)
    assert _mode(root / "var/lib/puhui") == (0o700, uid, gid)
    assert _mode(root / "usr/bin/puhui") == (0o755, 0, 0)
    assert _mode(root / "etc/default/puhui")[0] == 0o644
    for unit in UNITS:
        assert _mode(root / "lib/systemd/system" / unit) == (0o644, 0, 0)
    # Nothing else the package ships is writable by anyone but root.
    for path in (root / "opt/puhui").rglob("*"):
        if path.is_symlink():
            continue  # the venv's interpreter links (links have no mode of their own)
        mode, owner, _ = _mode(path)
        assert owner == 0 and not mode & 0o022, path
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: puhui\nStatus: install ok installed" in status
    conffiles = (root / "var/lib/dpkg/info/puhui.conffiles").read_text().split()
    assert conffiles == ["/etc/default/puhui"]


def test_the_installed_venv_runs_its_own_packages(root: Path) -> None:
    python = root / "opt/puhui/venv/bin/python3"
    code = "import sys, pydantic, gateway; print(sys.prefix, pydantic.__file__, gateway.__file__)"
    out = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()  # fmt: skip
    assert out[0] == str(root / "opt/puhui/venv")
    assert all(p.startswith(str(root / "opt/puhui/venv/lib/python3")) for p in out[1:]), out
    # The command is the package's own launcher, on the venv's interpreter.
    launcher = (root / "usr/bin/puhui").read_text().splitlines()[0]
    assert launcher == "#!/opt/puhui/venv/bin/python3 -Iu"
    help_ = subprocess.run([str(python), "-Iu", str(root / "usr/bin/puhui"), "gateway", "--help"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert help_.returncode == 0 and "run and commission a metering gateway" in help_.stdout
    # Precompiled: the hardened unit cannot write __pycache__ under /opt.
    assert list((root / "opt/puhui/venv/lib").rglob("gateway/__pycache__/runtime.cpython-*.pyc"))
    # The shipped profiles and parameter sets are found where the code looks for them.
    code = ("from drivers.modbus.profiles import load_profiles; "
            "from aggregator.methodology.params import PARAMS_DIR; "
            "print(len(load_profiles()), len(list(PARAMS_DIR.glob('*.yaml'))))")  # fmt: skip
    counts = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()  # fmt: skip
    assert counts == [
        str(len(list((REPO / "config" / d).glob("*.yaml")))) for d in ("profiles", "methodologies")
    ]


def test_units_pass_systemd_analyze_verify(root: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    units = [str(SYSTEM_UNITS / u) for u in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", *units],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    # verify exits 0 on settings it ignores ("Failed to parse ..., ignoring"): stderr must be empty.
    assert (result.returncode, result.stderr) == (0, "")
    gateway = (root / "lib/systemd/system/puhui-gateway.service").read_text()
    for line in ("Type=notify", "WatchdogSec=60s", "Restart=on-failure", "ProtectSystem=strict",
                 "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes", "User=puhui",
                 "ReadWritePaths=/var/lib/puhui", "CapabilityBoundingSet="):  # fmt: skip
        assert f"\n{line}\n" in gateway, line
    assert [x for x in gateway.splitlines() if x.startswith("ReadWritePaths=")] == [
        "ReadWritePaths=/var/lib/puhui"
    ]


def test_verify_reports_a_broken_unit(root: Path) -> None:
    """The check above can fail: a typo in a hardening setting is reported on stderr."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    good = (root / "lib/systemd/system/puhui-gateway.service").read_text()
    broken = root / "lib/systemd/system/puhui-broken.service"
    broken.write_text(good.replace("ProtectSystem=strict", "ProtectSystem=strickt"))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no",
                             str(SYSTEM_UNITS / broken.name)], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr


def test_upgrade_and_removal_keep_keys_outbox_evidence_and_edited_settings(
    root: Path, debs: tuple[Path, Path]
) -> None:
    uid, gid = _account(root, "passwd", "puhui"), _account(root, "group", "puhui")
    kept = {
        root / "etc/puhui/gateway-key.pem": b"-----BEGIN PRIVATE KEY-----\nnot a real key\n",
        root / "etc/puhui/site.yaml": b"gateway: {id: gw-1, site: s}\n",
        root / "var/lib/puhui/gateway/evidence.sqlite": b"SQLite format 3\x00 outbox",
        root / "var/lib/puhui/evidence.sqlite3": b"SQLite format 3\x00 evidence",
    }
    for path, data in kept.items():
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.write_bytes(data)
        os.chown(path, uid, gid)
        path.chmod(0o600)
    os.chown(root / "var/lib/puhui/gateway", uid, gid)
    settings = root / "etc/default/puhui"
    edited = settings.read_text().replace("PUHUI_LOG_LEVEL=INFO", "PUHUI_LOG_LEVEL=DEBUG")
    settings.write_text(edited)
    before = {p: _mode(p) for p in [*kept, root / "etc/puhui", root / "var/lib/puhui"]}

    _dpkg(root, "--install", str(debs[1]))
    assert "Version: 0.1.0~test2" in (root / "var/lib/dpkg/status").read_text()
    for path, data in kept.items():
        assert path.read_bytes() == data, path
    assert {p: _mode(p) for p in before} == before
    assert settings.read_text() == edited
    users = [x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith("puhui:")]
    assert len(users) == 1  # the user is not made twice

    _dpkg(root, "--remove", "puhui")
    assert not (root / "opt/puhui/venv").exists() and not (root / "usr/bin/puhui").exists()
    for path, data in kept.items():
        assert path.read_bytes() == data, path
    assert settings.read_text() == edited  # removal keeps conffiles; purge would not
    purge = _dpkg(root, "--purge", "puhui")
    assert "kept" in purge.stdout and (root / "etc/puhui/gateway-key.pem").exists()
    evidence = root / "var/lib/puhui/evidence.sqlite3"
    assert evidence.read_bytes() == kept[evidence]


def test_the_installed_gateway_notifies_systemd(root: Path, tmp_path: Path) -> None:
    """The packaged gateway, started as systemd starts it (NOTIFY_SOCKET, WATCHDOG_USEC), sends
    READY=1 once it polls and WATCHDOG=1 after that, and STOPPING=1 on SIGTERM."""
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(_dry_site()), encoding="utf-8")
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(60)
        env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"}
        argv = [str(root / "opt/puhui/venv/bin/python3"), "-Iu", str(root / "usr/bin/puhui"), "gateway",
                "run", "--config", str(site), "--dry-run"]  # fmt: skip
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            messages = [_receive(sock, proc)]
            while not any("WATCHDOG=1" in m for m in messages):
                messages.append(_receive(sock, proc))
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in messages[-1]:
                messages.append(_receive(sock, proc))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert messages[0].startswith("READY=1\nSTATUS=gateway gw-pkg-1: polling 1 meter(s)"), messages
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err


def _receive(sock: socket.socket, proc: subprocess.Popen[str]) -> str:
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"no notification from the gateway; it said: {out}{err}") from None


def _dry_site() -> dict[str, object]:
    return {
        "gateway": {"id": "gw-pkg-1", "site": "package-test"},
        "status": {"enabled": False},
        "meters": [{
            "id": "m1", "driver": "modbus_tcp", "unit_id": 1, "scenario": "pv",
            "connection": {"host": "127.0.0.1", "port": 1},
            "nameplate": {"rated_power_kw": 5, "meter_class": "1"},
            "profile": "sdm120", "counts": ["energy_import"],
        }],
    }  # fmt: skip
