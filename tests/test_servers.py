"""The private real servers: start, readiness, restart on the same port, failures."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from aggregator.influx import InfluxV1Client, Point
from testbed import servers
from testbed.servers import (
    LOOPBACK,
    PortTaken,
    PrivateInfluxDB,
    PrivateMosquitto,
    ServerBinaryNotFound,
    ServerStartError,
    influx_ping_ok,
    mqtt_connack_ok,
)

pytestmark = pytest.mark.integration


def test_session_servers_answer_on_loopback(mosquitto: PrivateMosquitto, influxdb: PrivateInfluxDB) -> None:
    assert mosquitto.host == influxdb.host == LOOPBACK
    assert mqtt_connack_ok(mosquitto.host, mosquitto.port)
    assert influx_ping_ok(influxdb.host, influxdb.port)
    assert influxdb.url == f"http://127.0.0.1:{influxdb.port}"
    assert len({mosquitto.port, influxdb.port, influxdb.rpc_port}) == 3


def test_influxdb_listens_only_on_its_two_loopback_ports(influxdb: PrivateInfluxDB) -> None:
    psutil = pytest.importorskip("psutil")
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(influxdb.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert listening == {(LOOPBACK, influxdb.port), (LOOPBACK, influxdb.rpc_port)}


def test_mosquitto_stop_then_start_reuses_port(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto()
    port, workdir = broker.port, broker.workdir
    broker.stop()
    assert not broker.running
    assert not mqtt_connack_ok(LOOPBACK, port)
    broker.start()
    assert (broker.port, broker.workdir) == (port, workdir)
    assert mqtt_connack_ok(LOOPBACK, port)
    broker.kill()  # a crash, then a restart
    broker.restart()
    assert broker.port == port and mqtt_connack_ok(LOOPBACK, port)


async def test_influxdb_keeps_port_and_data_across_stop_and_kill(
    fresh_influxdb: Callable[..., PrivateInfluxDB],
) -> None:
    server = fresh_influxdb()
    port = server.port
    async with InfluxV1Client(server.url, "keep") as influx:
        await influx.create_database()
        await influx.write_points([Point("m", {}, {"v": 1.0}, 1)])
        server.stop()
        server.start()
        await influx.write_points([Point("m", {}, {"v": 2.0}, 2)])
        server.kill()  # no clean shutdown: the WAL must carry the points
        server.start()
        assert server.port == port
        series = await influx.query("SELECT v FROM m")
    assert series[0]["values"] == [[1, 1.0], [2, 2.0]]


def test_occupied_port_on_restart_raises_port_taken(
    fresh_mosquitto: Callable[..., PrivateMosquitto],
) -> None:
    broker = fresh_mosquitto()
    broker.stop()
    with socket.socket() as squatter:
        # REUSEADDR: the broker's side of the readiness probe may sit in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((LOOPBACK, broker.port))
        squatter.listen()
        with pytest.raises(PortTaken, match=f"127.0.0.1:{broker.port}") as info:
            broker.start()
    assert "mosquitto version 2" in str(info.value)  # the previous run's log tail
    broker.start()  # free again: same port
    assert mqtt_connack_ok(LOOPBACK, broker.port)


def test_first_start_picks_other_ports_when_its_pick_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_ports = servers.free_ports
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([(taken,)])
        monkeypatch.setattr(servers, "free_ports", lambda n: next(picks, None) or real_free_ports(n))
        with PrivateMosquitto(tmp_path) as broker:
            assert broker.port != taken
            assert mqtt_connack_ok(LOOPBACK, broker.port)
    assert "Address already in use" in (tmp_path / "mosquitto.log").read_text()


def test_bad_mosquitto_config_raises_with_log_and_command(tmp_path: Path) -> None:
    broker = PrivateMosquitto(tmp_path, extra_config="no_such_option 1")
    with pytest.raises(ServerStartError) as info:
        broker.start()
    message = str(info.value)
    assert 'Unknown configuration variable "no_such_option"' in message
    assert f"-c {tmp_path / 'mosquitto.conf'}" in message
    assert not broker.running
    broker.close()


def test_bad_influxdb_config_raises_with_log(tmp_path: Path) -> None:
    server = PrivateInfluxDB(tmp_path, extra_config="[http]\n  enabled = true\n")
    with pytest.raises(ServerStartError, match="exited with status") as info:
        server.start()
    assert "-config" in str(info.value)
    assert "Key 'http' has already been defined" in str(info.value)
    server.close()


def test_missing_binary_names_the_debian_package(tmp_path: Path) -> None:
    class Absent(PrivateMosquitto):
        binary = "puhui-no-such-broker"

    with pytest.raises(ServerBinaryNotFound, match="apt-get install mosquitto influxdb"):
        Absent(tmp_path).start()


def test_own_tempdir_removed_on_close() -> None:
    with PrivateMosquitto() as broker:
        workdir = broker.workdir
        assert (workdir / "mosquitto.log").exists()
    assert not workdir.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from testbed.servers import PrivateMosquitto
        broker = PrivateMosquitto(sys.argv[1]).start()
        print(broker.pid, flush=True)
        sys.stdin.read()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    pidfd = os.pidfd_open(broker_pid)
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        readable, _, _ = select.select([pidfd], [], [], 10.0)  # readable once it exits
        assert readable, f"mosquitto {broker_pid} outlived its killed parent"
    finally:
        os.close(pidfd)
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.close()
        parent.stdout.close()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_kept_server_restarted_from_the_main_thread_outlives_its_parent(tmp_path: Path) -> None:
    """``puhui demo --keep-servers``: the broker stopped and restarted by the outage fault (on the
    main thread) must still answer after the demo exits, at the address the demo printed."""
    script = textwrap.dedent(
        """
        import sys
        from testbed.servers import PrivateMosquitto
        broker = PrivateMosquitto(sys.argv[1], outlive_parent=True).start()
        broker.stop()
        broker.start()
        print(broker.pid, broker.port, flush=True)
        """
    )
    parent = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    pid, port = (int(x) for x in parent.stdout.split())
    try:
        assert mqtt_connack_ok(LOOPBACK, port), f"the kept broker (pid {pid}) did not outlive its parent"
    finally:
        os.kill(pid, signal.SIGTERM)
        pidfd = os.pidfd_open(pid)
        try:
            select.select([pidfd], [], [], 10.0)
        finally:
            os.close(pidfd)
