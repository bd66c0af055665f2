"""The line owner against a simulated line, over a pty and a simulated TCP serial server.

A toy protocol keeps these tests about the line, not a meter protocol: a request is
``02 addr n payload`` and the device at ``addr`` answers ``03 addr n payload-reversed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from common.clock import SystemClock
from drivers.line.config import SerialLineConfig, TcpServerLineConfig
from drivers.line.contract import LineTimeout, LineUnreachable, ReadExactly
from drivers.line.owner import LineOwner
from firmware_sim.line import SimLine, serve_pty, serve_tcp
from firmware_sim.line_contract import Taken


@dataclass
class ToyDevice:
    addr: int
    silent: bool = False
    echo_twice: bool = False  # answers, then answers again late (a stale answer on the line)
    seen: list[float] = field(default_factory=list)  # loop time of each request
    extra_in_buffer: int = 0  # bytes beyond one frame seen in a buffer (two requests at once)
    asked: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, buffer: bytes, now: float) -> Taken | None:
        if len(buffer) < 3 or buffer[0] != 0x02 or len(buffer) < 3 + buffer[2]:
            return None
        size = 3 + buffer[2]
        if buffer[1] != self.addr:
            return None
        self.seen.append(asyncio.get_running_loop().time())
        self.asked.set()
        self.extra_in_buffer = max(self.extra_in_buffer, len(buffer) - size)
        answer = bytes([0x03, self.addr, buffer[2]]) + buffer[3:size][::-1]
        if self.silent:
            return Taken(size, None)
        return Taken(size, answer + answer if self.echo_twice else answer)


async def toy_answer(read: ReadExactly) -> bytes:
    head = await read(3)
    return head + await read(head[2])


def request(addr: int, payload: bytes) -> bytes:
    return bytes([0x02, addr, len(payload)]) + payload


@contextlib.asynccontextmanager
async def tcp_line(
    *devices: ToyDevice, delay_ms: float = 0.0, timeout_s: float = 0.3
) -> AsyncIterator[tuple[LineOwner, SimLine]]:
    sim = SimLine("toy", SystemClock())
    for d in devices:
        sim.add(d)
    async with serve_tcp(sim) as server:
        config = TcpServerLineConfig(
            id="toy", kind="tcp_server", host=server.host, port=server.port,
            timeout_s=timeout_s, inter_frame_delay_ms=delay_ms,
        )  # fmt: skip
        async with LineOwner(config) as owner:
            yield owner, sim


async def test_exchange_over_a_pty_returns_the_addressed_devices_answer() -> None:
    sim = SimLine("toy", SystemClock())
    sim.add(ToyDevice(1))
    sim.add(ToyDevice(2))
    async with serve_pty(sim) as path:
        config = SerialLineConfig(id="p", kind="serial", port=path, baudrate=9600, parity="N")
        async with LineOwner(config) as owner:
            one = await owner.exchange(request(1, b"abc"), toy_answer, timeout_s=1, label="dev 1")
            two = await owner.exchange(request(2, b"xy"), toy_answer, timeout_s=1, label="dev 2")
    assert one == b"\x03\x01\x03cba"
    assert two == b"\x03\x02\x02yx"


async def test_concurrent_callers_never_put_two_frames_on_the_line() -> None:
    devices = [ToyDevice(a) for a in range(1, 9)]
    async with tcp_line(*devices) as (owner, _):

        async def ask(d: ToyDevice, n: int) -> bytes:
            return await owner.exchange(
                request(d.addr, bytes([n])), toy_answer, timeout_s=1, label=f"d{d.addr}"
            )

        answers = await asyncio.gather(*(ask(d, n) for d in devices for n in range(5)))
    assert answers == [bytes([0x03, d.addr, 1, n]) for d in devices for n in range(5)]
    assert all(d.extra_in_buffer == 0 for d in devices)
    assert owner.stats.exchanges == 40


async def test_a_silent_device_times_out_and_costs_the_others_only_its_own_timeout() -> None:
    dead, alive = ToyDevice(1, silent=True), ToyDevice(2)
    async with tcp_line(dead, alive, timeout_s=0.2) as (owner, _):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        dead_try = asyncio.create_task(
            owner.exchange(request(1, b"a"), toy_answer, timeout_s=0.2, label="dead")
        )
        await asyncio.sleep(0)  # the dead device's request goes first
        answer = await owner.exchange(request(2, b"b"), toy_answer, timeout_s=0.2, label="alive")
        waited = loop.time() - t0
        with pytest.raises(LineTimeout, match=r"dead on line toy .*no complete answer within 0.2 s"):
            await dead_try
    assert answer == b"\x03\x02\x01b"
    assert 0.2 <= waited < 0.2 + 0.15  # the dead one's timeout, plus one quick exchange
    assert owner.stats.timeouts == 1


async def test_a_late_duplicate_answer_is_discarded_before_the_next_request() -> None:
    chatty, quiet = ToyDevice(1, echo_twice=True), ToyDevice(2)
    async with tcp_line(chatty, quiet, delay_ms=20) as (owner, _):
        first = await owner.exchange(request(1, b"a"), toy_answer, timeout_s=1, label="chatty")
        second = await owner.exchange(request(2, b"b"), toy_answer, timeout_s=1, label="quiet")
    assert first == b"\x03\x01\x01a"
    assert second == b"\x03\x02\x01b"  # not the chatty device's second copy
    assert owner.stats.discarded == 4


async def test_the_inter_frame_delay_is_kept_between_an_answer_and_the_next_request() -> None:
    a, b = ToyDevice(1), ToyDevice(2)
    async with tcp_line(a, b, delay_ms=60) as (owner, _):
        for _ in range(3):
            await owner.exchange(request(1, b"a"), toy_answer, timeout_s=1, label="a")
            await owner.exchange(request(2, b"b"), toy_answer, timeout_s=1, label="b")
    times = sorted(a.seen + b.seen)
    gaps = [t1 - t0 for t0, t1 in itertools.pairwise(times)]
    assert min(gaps) >= 0.06


async def test_an_unreachable_server_backs_off_then_reconnects_when_it_is_back() -> None:
    sim = SimLine("toy", SystemClock())
    sim.add(ToyDevice(1))
    async with serve_tcp(sim) as probe:
        port = probe.port  # a free port, closed again below
    config = TcpServerLineConfig(
        id="toy", kind="tcp_server", host="127.0.0.1", port=port, timeout_s=1,
        reconnect_base_s=0.3, reconnect_max_s=0.3,
    )  # fmt: skip
    async with LineOwner(config, rng=random.Random(1)) as owner:
        with pytest.raises(LineUnreachable, match=r"line toy \(tcp 127.0.0.1:\d+\): cannot open"):
            await owner.exchange(request(1, b"a"), toy_answer, timeout_s=1, label="d1")
        with pytest.raises(LineUnreachable, match="next attempt in"):
            await owner.exchange(request(1, b"a"), toy_answer, timeout_s=1, label="d1")
        assert owner.stats.open_failures == 1  # the second call did not try to connect
        async with serve_tcp(sim, port=port):
            deadline = asyncio.get_running_loop().time() + 5
            while True:  # retried by the caller's schedule; the backoff is at most 0.3 s
                try:
                    answer = await owner.exchange(request(1, b"z"), toy_answer, timeout_s=1, label="d1")
                    break
                except LineUnreachable:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
    assert answer == b"\x03\x01\x01z"


async def test_a_dropped_connection_fails_the_exchange_and_the_next_one_reconnects() -> None:
    sim = SimLine("toy", SystemClock())
    sim.add(ToyDevice(1, silent=True))
    sim.add(ToyDevice(2))
    async with serve_tcp(sim) as server:
        config = TcpServerLineConfig(id="toy", kind="tcp_server", host=server.host, port=server.port)
        async with LineOwner(config) as owner:
            silent = next(r for r in sim.responders if isinstance(r, ToyDevice) and r.silent)
            pending = asyncio.create_task(
                owner.exchange(request(1, b"a"), toy_answer, timeout_s=5, label="d1")
            )
            async with asyncio.timeout(5):
                await silent.asked.wait()
            server.drop_connections()
            with pytest.raises(LineUnreachable, match="closed the connection"):
                await pending
            answer = await owner.exchange(request(2, b"b"), toy_answer, timeout_s=1, label="d2")
    assert answer == b"\x03\x02\x01b"
    assert owner.stats.opens == 2
