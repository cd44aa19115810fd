"""Benchmark: how long algos wait when a Broker worker is killed -9, by journal size.

Run with `python -m bench.bench_failover [--orders 0,1000,5000,20000] [--repeats R] [--json]`.

A fleet is started as `bench.bench_roundtrip` starts one (`tradefleet up`, one Broker, one
Market, the paper exchange). One algo session places orders through it, each cancelled once
accepted, as the round trip does, until the account's journal holds the first `--orders`
count; one order is left resting, so the new owner has an instrument to watch. Then the Broker
worker is killed -9, and the clock runs until a `new_order` sent through a fresh session from
the MarketManager is accepted: the BrokerManager notices the exit and spawns a replacement,
which claims the journal, rebuilds its books from it (from the newest snapshot on: the table's
`replayed` is how many entries it replayed after it), connects to the venue, reconciles,
and takes the Market's link again. The same fleet then goes on to the next count (its
journal keeps growing), and so on; each kill comes at least `STABLE_AFTER_S` after the
previous replacement came up, so that none is taken for a crash loop (which backs off).

The baseline is the first count (0 by default): the same failover with an empty journal, in
the same run, so the figures say what the journal's history adds to the fixed cost (spawn,
start-up, venue session, reconciliation, link). Each repeat runs on a fresh fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_roundtrip import (
    REPO,
    PlatformSession,
    acked,
    fleet_pids,
    order_frame,
    start_fleet,
    stop_fleet,
    until,
    wait_file,
)
from bench.harness import machine
from managers.supervision import STABLE_AFTER_S

RETRY_S = 0.05
ANSWER_WAIT_S = 10.0
GIVE_UP_S = 120.0


def journal_size(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in (data_dir / "journal").iterdir() if f.is_file())


async def trading_again(http: aiohttp.ClientSession, data_dir: Path, tag: str) -> float:
    """Seconds from now until an order through a fresh session is accepted."""
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        cid = f"{tag}-{attempt}"
        try:
            session = PlatformSession(data_dir)
            await session.open(http)
            try:
                await session.ws.send_str(order_frame(session.account, cid))
                event = await asyncio.wait_for(until(session.ws, acked(cid)), ANSWER_WAIT_S)
                if event["type"] == "order_accepted":
                    return time.monotonic() - start
            finally:
                await session.ws.close()
        except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError):
            pass  # refused (the account is unavailable), or no answer yet: ask again
        if time.monotonic() - start > GIVE_UP_S:
            raise TimeoutError(f"not trading again {GIVE_UP_S} s after the kill")
        await asyncio.sleep(RETRY_S)


async def rebuilt(http: aiohttp.ClientSession, data_dir: Path) -> dict[str, int]:
    """How the account's owner rebuilt its books: from the snapshot at `snapshot_seq`, then
    `replayed` entries (its status, through the BrokerManager's account directory)."""
    manager = await wait_file(data_dir / "run" / "broker-manager.url", 30)
    token = json.loads(await wait_file(data_dir / "secrets.json", 30))["join_token"]
    async with http.get(f"{manager}/v1/accounts",
                        headers={"Authorization": f"Bearer {token}"}) as response:
        accounts = (await response.json())["accounts"]
    owner = next(entry for entry in accounts.values() if entry)
    async with http.get(owner["url"] + "/v1/status") as response:
        return dict((await response.json())["info"]["rebuilt"])


async def run_once(counts: list[int]) -> list[dict[str, Any]]:
    data_dir, fleet = start_fleet(REPO)
    results: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as http:
            await wait_file(data_dir / "run" / "market-manager.url", 60)
            session = PlatformSession(data_dir)
            await session.open(http)
            resting = f"rest-{os.getpid()}"
            await session.ws.send_str(order_frame(session.account, resting))
            await until(session.ws, acked(resting))
            done, up_at = 0, time.monotonic()
            for count in counts:
                if count > done:
                    await session.measure(count - done, 0)
                    done = count
                # A worker that fails again before it has been up STABLE_AFTER_S is a crash
                # loop, replaced after a backoff: let each kill be a first failure.
                await asyncio.sleep(max(0.0, STABLE_AFTER_S + 0.5 - (time.monotonic() - up_at)))
                size = journal_size(data_dir)
                os.kill(fleet_pids(data_dir)["broker"], signal.SIGKILL)
                took = await trading_again(http, data_dir, f"after-{count}")
                up_at = time.monotonic()
                results.append({"orders": count, "journal_bytes": size, "seconds": took,
                                **await rebuilt(http, data_dir)})
                await session.ws.close()
                session = PlatformSession(data_dir)
                await session.open(http)
                session.count = done  # its client_order_ids go on from the last one
    finally:
        stop_fleet(data_dir, fleet)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_failover")
    parser.add_argument("--orders", default="0,1000,5000,20000",
                        help="comma-separated order counts at which the Broker is killed")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = sorted({int(n) for n in args.orders.split(",")})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    runs = [asyncio.run(run_once(counts)) for _ in range(max(1, args.repeats))]
    summary = [{"orders": count,
                "journal_mb": statistics.median(r[i]["journal_bytes"] for r in runs) / 1e6,
                "seconds": statistics.median(r[i]["seconds"] for r in runs),
                "over_baseline": statistics.median(r[i]["seconds"] / r[0]["seconds"]
                                                   for r in runs),
                "replayed": statistics.median(r[i]["replayed"] for r in runs)}
               for i, count in enumerate(counts)]
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs, "machine": machine()}, indent=2))
        return 0
    print(f"Broker kill -9 → an order accepted again, median of {len(runs)} repeat(s); "
          f"baseline: {counts[0]} orders")
    print(f"{'orders':>8}{'journal MB':>12}{'seconds':>10}{'÷ baseline':>12}"
          f"{'replayed':>10}")
    for row in summary:
        print(f"{row['orders']:>8}{row['journal_mb']:>12.1f}{row['seconds']:>10.2f}"
              f"{row['over_baseline']:>12.2f}{row['replayed']:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
