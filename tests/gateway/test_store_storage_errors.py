"""The state directory on a full disk or a read-only file system: say so, with the path, and
what was kept (issue 15 item 7).

Before: a full disk ended ``gateway run`` with a long traceback (exit 1) from a raw
``sqlite3.OperationalError``; a read-only state directory gave "disk I/O error (is another
gateway process using this state directory?)" though nothing else used it.

Real file systems: a small tmpfs, remounted read-only or filled up. The tests run as root,
for whom ``chmod`` does not stop a write; they need ``mount`` (CAP_SYS_ADMIN) and are
skipped, saying so, where it is not permitted.
"""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from evidence.keys import generate_key, save_private_key
from gateway.errors import EvidenceStoreError
from gateway.store import EvidenceStore

REPO = Path(__file__).resolve().parents[2]
Mount = Callable[..., Path]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """Factory: ``tmpfs(size="256k")`` -> the mount point of a new tmpfs (unmounted after)."""
    mounted: list[Path] = []

    def mount(size: str = "256k") -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        out = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point))
        if out.returncode != 0:
            pytest.skip(f"needs a tmpfs of its own and mount is not permitted here: {out.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        _run("umount", "-l", str(point))


def _remount_read_only(point: Path) -> None:
    out = _run("mount", "-o", "remount,ro", str(point))
    assert out.returncode == 0, out.stderr


def _fill(point: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = point / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_read_only_state_directory_is_called_read_only(tmpfs: Mount) -> None:
    point = tmpfs()
    EvidenceStore.open(point, gateway_id="gw-1").close()  # an existing state database
    _remount_read_only(point)
    with pytest.raises(EvidenceStoreError) as caught:
        EvidenceStore.open(point, gateway_id="gw-1")
    message = str(caught.value)
    assert message == f"{point}/evidence.sqlite: cannot open: {point} is on a read-only file system"
    assert "another gateway" not in message
    with pytest.raises(EvidenceStoreError, match=f"{point} is on a read-only file system"):
        EvidenceStore.open(point / "new", gateway_id="gw-1")  # not created yet


def test_a_full_disk_rolls_the_write_back_says_so_and_keeps_what_was_committed(tmpfs: Mount) -> None:
    point = tmpfs("512k")
    store = EvidenceStore.open(point, gateway_id="gw-1")
    try:
        store.add_pending([b'{"r":1}', b'{"r":2}'], {"version": 1}, 1000)
        filler = _fill(point)
        incompressible = base64.b64encode(os.urandom(300_000))  # stored compressed; past the zeros ahead
        with pytest.raises(EvidenceStoreError) as caught:
            store.add_pending([incompressible], {"version": 2}, 2000)
        log_dir = point / "records"
        assert str(caught.value).startswith(
            f"{log_dir}/00000001.log: cannot write: no space left on the device holding {log_dir} ("
        )
        assert str(caught.value).endswith(
            "the write was rolled back, everything committed before it is kept "
            "(2 closed interval(s) waiting to be sealed, 0 sealed batch(es) of 0 bytes waiting for an ack)"
        )
        assert store.pending_count() == 2 and store.builder_state() == {"version": 1}
        filler.unlink()  # space again: the store goes on (no transaction left open)
        store.add_pending([b'{"r":3}'], {"version": 3}, 3000)
        assert [r for _, r in store.pending(10)] == [b'{"r":1}', b'{"r":2}', b'{"r":3}']
    finally:
        store.close()


def _site(tmp_path: Path, state_dir: Path) -> Path:
    key = tmp_path / "gw.pem"
    save_private_key(generate_key(), key)
    data = yaml.safe_load((REPO / "config" / "sites" / "inline-registers.yaml").read_text())
    data["meters"] = data["meters"][:1]  # a Modbus meter nobody answers for: intervals still close
    data["meters"][0]["connection"] = {"host": "127.0.0.1", "port": 9, "timeout_s": 0.2}
    data.update(interval_minutes=1, grace_seconds=0, status={"enabled": False})
    data["clock"]["factor"] = 120
    data["evidence"] = {"key_file": str(key), "state_dir": str(state_dir)}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _gateway_run(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puhui", "gateway", "run", "--config", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_gateway_run_on_a_read_only_state_directory_exits_1_saying_so(tmpfs: Mount, tmp_path: Path) -> None:
    point = tmpfs()
    _remount_read_only(point)
    out = _gateway_run(_site(tmp_path, point))
    assert out.returncode == 1, out.stderr
    assert f"{point}/evidence.sqlite: cannot open: {point} is on a read-only file system" in out.stderr
    assert "Traceback" not in out.stderr


def test_gateway_run_on_a_full_disk_exits_1_saying_so(tmpfs: Mount, tmp_path: Path) -> None:
    point = tmpfs("256k")
    site = _site(tmp_path, point)
    gateway_id = yaml.safe_load(site.read_text())["gateway"]["id"]
    EvidenceStore.open(point, gateway_id=gateway_id).close()  # the database fits...
    _fill(point)  # ...the first intervals do not
    out = _gateway_run(site)
    assert out.returncode == 1, out.stderr
    assert f"{point}/records: cannot write: no space left on the device holding {point} (" in out.stderr
    assert "what was committed stays in the state directory" in out.stderr
    assert "Traceback" not in out.stderr
