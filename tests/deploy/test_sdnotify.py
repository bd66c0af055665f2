"""common.sdnotify against a real unix datagram socket: the messages systemd reads."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aggregator.influx import InfluxV1Client
from common.sdnotify import NotifyError, ServiceNotifier, notify_address, send, watchdog_interval
from evidence import generate_key, save_private_key
from testbed.servers import PrivateMosquitto
from tests.aggregator.ingest_support import isolated_mqtt

REPO = Path(__file__).resolve().parents[2]


def test_addresses_and_watchdog_interval_from_the_environment() -> None:
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract/name"}) == "\0abstract/name"
    with pytest.raises(NotifyError, match="not an absolute path"):
        notify_address({"NOTIFY_SOCKET": "relative.sock"})
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # for another
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    with pytest.raises(NotifyError, match="WATCHDOG_USEC='soon'"):
        watchdog_interval({"WATCHDOG_USEC": "soon"})


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = ServiceNotifier({})
    assert notifier.ready() is False and notifier.stopping() is False


def test_a_socket_that_is_gone_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotifyError, match=f"NOTIFY_SOCKET {tmp_path}/gone.sock: cannot send 'READY=1'"):
        send(str(tmp_path / "gone.sock"), "READY=1")


async def test_ready_then_watchdog_pings_then_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"}
        async with asyncio.timeout(10), ServiceNotifier(env) as notifier:
            assert notifier.watchdog_s == 0.1
            assert notifier.ready("polling 3 meters")
            got = [await loop.sock_recv(sock, 4096)]
            while got.count(b"WATCHDOG=1") < 3:  # pings keep coming while the loop runs
                got.append(await loop.sock_recv(sock, 4096))
            notifier.stopping()
            while got[-1] != b"STOPPING=1":
                got.append(await loop.sock_recv(sock, 4096))
    assert b"READY=1\nSTATUS=polling 3 meters" in got
    assert set(got) == {b"READY=1\nSTATUS=polling 3 meters", b"WATCHDOG=1", b"STOPPING=1"}


async def test_abstract_socket(tmp_path: Path) -> None:
    name = f"puhui-test-{os.getpid()}-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert ServiceNotifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.integration
def test_the_aggregator_notifies_ready_then_watchdog(
    tmp_path: Path, mosquitto: PrivateMosquitto, influx_db: InfluxV1Client
) -> None:
    """`puhui aggregator run` as systemd starts it: READY=1 once it serves, then WATCHDOG=1;
    STOPPING is not needed (SIGTERM ends it with status 0)."""
    save_private_key(generate_key(), tmp_path / "agg.pem")
    mqtt = {**isolated_mqtt(mosquitto.port), "reconnect_initial_s": 0.05}
    influx = {"url": influx_db.url, "database": influx_db.database}
    data = {"mqtt": mqtt, "store": {"path": "evidence.sqlite3"}, "influx": influx, "key_file": "agg.pem"}
    config = tmp_path / "aggregator.yaml"
    config.write_text(yaml.safe_dump(data))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
        argv = [sys.executable, "-m", "puhui", "aggregator", "run", "--config", str(config)]
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            got = [sock.recv(4096)]
            while b"WATCHDOG=1" not in got:
                got.append(sock.recv(4096))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert got[0] == b"READY=1\nSTATUS=aggregator: verifying batches"
    assert proc.returncode == 0, err.decode()
