"""common.sdnotify against a real unix datagram socket: the messages systemd reads."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from common.sdnotify import NotifyError, ServiceNotifier, notify_address, send, watchdog_interval


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
