"""A gateway stand-in run as a child process by the SIGKILL tests.

It reads four simulated energy counters from the fast clock (value = a known function of
time, so the test can check every delta), feeds them to an :class:`IntervalBuilder`
restored from the pipeline's last snapshot, and submits each batch of closed intervals
with the new snapshot to an :class:`EvidencePipeline` whose uplink talks to the test's
broker. It prints ``ready`` once the pipeline is open. Without ``--end-at`` it runs until
killed; with it, it stops reading at that clock time, closes the remaining intervals,
waits until everything is acknowledged and exits 0.

    python -m tests.gateway.pipeline_child --state-dir D --key K --aggregator-key A
        --port P --epoch E --factor F --wall-start W [--end-at T]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path

from common.clock import FastClock
from drivers.contract import Sample
from evidence.keys import load_private_key
from gateway.evidence_config import (
    BackoffSettings,
    EvidenceSettings,
    OutboxSettings,
    SealingSettings,
    UplinkSettings,
)
from gateway.intervals import IntervalBuilder, SeriesSpec
from gateway.pipeline import EvidencePipeline

GATEWAY = "gw-kill"
METERS = 4
POLL_S = 10.0
INTERVAL_S = 60
GRACE_S = 5.0


def counter_value(meter: int, t: float, epoch: float) -> float:
    """The simulated meter's energy register (kWh) at clock time ``t``."""
    return 100.0 * meter + (meter + 1) * 0.002 * (t - epoch)


def series() -> list[SeriesSpec]:
    return [SeriesSpec(f"m{i}", "energy_import", "kWh", "counter", POLL_S) for i in range(METERS)]


def settings(args: argparse.Namespace) -> tuple[EvidenceSettings, UplinkSettings]:
    evidence = EvidenceSettings(
        key_file=args.key, state_dir=args.state_dir, sealing=SealingSettings(max_records=6, max_age_s=120),
        outbox=OutboxSettings(cap_bytes=256 * 1024 * 1024),
    )  # fmt: skip
    fast = BackoffSettings(initial_s=0.05, max_s=0.3)
    uplink = UplinkSettings(host="127.0.0.1", port=args.port, tls=None,
                            aggregator_public_key=args.aggregator_key, inflight=4, resend_after_s=1.0,
                            reconnect=fast, reject_backoff=fast)  # fmt: skip
    return evidence, uplink


async def main(args: argparse.Namespace) -> int:
    clock = FastClock(args.epoch, args.factor, args.wall_start)
    evidence, uplink = settings(args)
    key = load_private_key(Path(args.key))
    builder = IntervalBuilder(series(), clock=clock, interval_s=INTERVAL_S, grace_s=GRACE_S)
    async with EvidencePipeline(evidence, uplink, gateway_id=GATEWAY, key=key, clock=clock) as pipeline:
        state = pipeline.builder_state()
        if state is not None:
            builder.restore(state)
        print("ready", flush=True)
        t = math.floor(clock.now() / POLL_S) * POLL_S + POLL_S
        while args.end_at is None or t <= args.end_at:
            await clock.sleep_until(t)
            builder.add_many(
                Sample(f"m{i}", "energy_import", counter_value(i, t, args.epoch), t) for i in range(METERS)
            )
            records = builder.close_due()
            if records:
                await pipeline.submit(records, builder.snapshot())
            t += POLL_S
        await clock.sleep_until(args.end_at + INTERVAL_S + GRACE_S + 1)
        await pipeline.submit(builder.close_due(), builder.snapshot())
        while pipeline.status()["pending_records"] or pipeline.status()["outbox_depth_batches"]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # drained when the last ack has arrived
        print("done", flush=True)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for name in ("--state-dir", "--key", "--aggregator-key"):
        p.add_argument(name, required=True)
    p.add_argument("--port", type=int, required=True)
    for name in ("--epoch", "--factor", "--wall-start"):
        p.add_argument(name, type=float, required=True)
    p.add_argument("--end-at", type=float)
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
