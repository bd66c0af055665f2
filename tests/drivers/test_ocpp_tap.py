"""The OCPP tap over real websockets on loopback: frames forwarded unchanged (malformed ones
too, and reported), the CSMS's subprotocol, refusal and close passed on to the charger, the
CSMS down and back (chargers refused, the tap survives, they reconnect and deliver)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from common.clock import FastClock
from drivers.ocpp import ChargerConfig, CollectingSink, OcppTap, TapConfig
from drivers.ocpp.config import Listen
from drivers.ocpp.tap import charger_id
from firmware_sim.ocpp_charger import OcppChargerSpec
from firmware_sim.ocpp_fleet import OcppFleet
from testbed.csms import StandInCsms

EPOCH = 1_741_536_000.0  # 2025-03-09T16:00:00Z, midnight in China


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``condition`` (cheap, in-process state) until it holds or the deadline passes."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


def tap_config(upstream: str, **chargers: ChargerConfig) -> TapConfig:
    return TapConfig(listen=Listen(port=0), upstream=upstream, chargers=chargers, open_timeout_s=2)


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


# -- forwarding -----------------------------------------------------------------------------------------


async def test_malformed_frames_are_forwarded_unchanged_and_reported() -> None:
    sink = CollectingSink()
    frames: list[str | bytes] = [
        "not json at all",
        b"\x00\xff binary",
        '[2, "m1", "MeterValues", {"connectorId": "seven", "meterValue": []}]',
        '[2,"m2","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2025-03-10T00:15:00Z",'
        '"sampledValue":[{"value":"12 kWh"},{"value":"1234.5","unit":"Wh"}]}]}]',
        '[2,  "h1" , "Heartbeat", {}]',
    ]
    async with StandInCsms() as csms, OcppTap(tap_config(csms.url), sink, FastClock(EPOCH, 1)) as tap:
        async with connect(
            f"ws://127.0.0.1:{tap.port}/CP-RAW", subprotocols=[Subprotocol("ocpp1.6")], proxy=None
        ) as ws:
            for f in frames:
                await ws.send(f)
            answer = json.loads(await ws.recv())
            while answer[1] != "h1":  # CALLERRORs for the CALLs the CSMS's schema refused come first
                answer = json.loads(await ws.recv())
        await until(lambda: tap.links["CP-RAW"].frames_from_charger == len(frames))
    assert csms.frames["CP-RAW"].received == [f.encode() if isinstance(f, str) else f for f in frames]
    problems = [p.problem for p in sink.problems]
    assert problems[0].startswith("not JSON") and problems[1] == "binary frame (OCPP-J frames are text)"
    assert problems[2] == "MeterValues: connectorId: 'seven' is not a non-negative integer"
    assert problems[3] == "meterValue[0].sampledValue[0].value: '12 kWh' is not a number"
    assert [(s.meter, s.value) for s in sink.sample_list] == [("CP-RAW.1", 1234.5)]  # the good value of m2
    assert tap.links["CP-RAW"].reader_errors == 0 and answer[0] == 3


async def test_the_csms_choice_of_subprotocol_and_the_charger_credentials_pass_through() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    async def upstream(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append((ws.request.path, ws.request.headers.get("Authorization"), ws.subprotocol))
        await ws.send(await ws.recv())  # echo

    auth = "Basic " + base64.b64encode(b"CP 7:secret").decode()
    async with serve(upstream, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]) as server:
        port = server.sockets[0].getsockname()[1]
        config = tap_config(f"ws://127.0.0.1:{port}/ocpp/")
        async with OcppTap(config, CollectingSink(), FastClock(EPOCH, 1)) as tap:
            offer = [Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
            async with connect(
                f"ws://127.0.0.1:{tap.port}/CP%207",
                subprotocols=offer,
                proxy=None,
                additional_headers={"Authorization": auth},
            ) as ws:
                assert ws.subprotocol == "ocpp1.6"
                await ws.send("ping 电")
                assert await ws.recv() == "ping 电"
    assert seen == [("/ocpp/CP%207", auth, "ocpp1.6")]
    assert charger_id("/ocpp/CP%207?x=1") == "CP 7" and charger_id("/") is None


async def test_a_refusal_of_the_csms_reaches_the_charger_with_its_status() -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(401, "who are you\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("the handshake was refused")

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        async with OcppTap(
            tap_config(f"ws://127.0.0.1:{port}"), CollectingSink(), FastClock(EPOCH, 1)
        ) as tap:
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://127.0.0.1:{tap.port}/CP-9", proxy=None):
                    pass
            assert info.value.response.status_code == 401
            assert tap.refused == 1 and "CSMS refused" in (tap.links["CP-9"].last_error or "")


async def test_closes_pass_through_with_their_code() -> None:
    closes: list[tuple[int | None, str | None]] = []

    async def upstream(ws: ServerConnection) -> None:
        msg = await ws.recv()
        if msg == "close me":
            await ws.close(4001, "CSMS says bye")
            return
        try:
            await ws.recv()
        except ConnectionClosed:
            closes.append((ws.close_code, ws.close_reason))

    async with serve(upstream, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with OcppTap(
            tap_config(f"ws://127.0.0.1:{port}"), CollectingSink(), FastClock(EPOCH, 1)
        ) as tap:
            url = f"ws://127.0.0.1:{tap.port}/CP-C"
            async with connect(url, proxy=None) as ws:
                await ws.send("close me")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "CSMS says bye")  # type: ignore[union-attr]
            async with connect(url, proxy=None) as ws:
                await ws.send("stay")
                await ws.close(4002, "charger rebooting")
            await until(lambda: bool(closes))
    assert closes == [(4002, "charger rebooting")]


# -- the CSMS down and back -----------------------------------------------------------------------------


async def test_csms_down_chargers_are_refused_the_tap_survives_and_they_reconnect() -> None:
    clock = FastClock(EPOCH, 3000)
    end = EPOCH + 6 * 3600
    specs = [
        OcppChargerSpec("CP-A", "1.6", 2, seed=11, arrivals_per_day=12, signing="ECDSA-secp256r1-SHA256"),
        OcppChargerSpec("CP-B", "2.0.1", 1, seed=12, arrivals_per_day=12, quirky_json=True),
        OcppChargerSpec("CP-C", "1.6", 1, seed=13, arrivals_per_day=12, meter_interval_s=300),
    ]
    sink = CollectingSink()
    csms = StandInCsms()
    await csms.start()
    await csms.stop()  # down from the start: the port is known, nothing listens
    try:
        async with OcppTap(tap_config(csms.url), sink, clock) as tap:
            url = f"ws://127.0.0.1:{tap.port}"
            async with OcppFleet(specs, clock, url, until=end, start=EPOCH) as fleet:
                chargers = list(fleet.chargers.values())
                await until(lambda: all(c.refused >= 2 for c in chargers))
                assert all(c.connections == 0 for c in chargers) and tap.refused >= 6
                assert all(link.refused >= 2 and not link.connected for link in tap.links.values())

                await csms.start()  # back: the chargers get through and deliver what they queued
                await until(lambda: all(c.connected.is_set() for c in chargers))
                await until(lambda: clock.now() > EPOCH + 3 * 3600)
                await csms.stop()  # down again mid-run: the chargers' connections close
                await until(lambda: not any(c.connected.is_set() for c in chargers))
                assert not any(link.connected for link in tap.links.values())
                await csms.start()
                async with asyncio.timeout(30):
                    await fleet.wait_sent_through(end)
                for c in chargers:
                    got = csms.frames[c.spec.name]
                    assert got.connections == c.connections >= 2
                    assert is_subsequence(got.received, c.wire.sent) and is_subsequence(
                        c.wire.received, got.sent
                    )
                    # at most the CALL in flight at each cut is lost (and sent again, with a new id)
                    assert len(c.wire.sent) - len(got.received) <= c.connections - 1
                    assert c.call_errors == []
    finally:
        await csms.stop()
    per_meter = {s.meter for s in sink.sample_list}
    assert per_meter == {"CP-A.1", "CP-A.2", "CP-B.1", "CP-C.1"}
    assert sum(link.connections for link in tap.links.values()) == sum(c.connections for c in chargers)
