"""Issue 5 acceptance, end to end: the position manager in `tradefleet up` on the paper exchange.

Algos are real `MarketClient`s; the ground truth is the account journal (SQLite, table
`entries`) and the paper exchange's own ledger. The test instrument `STILL/USD` has a market
that does not move (no volatility, no synthetic takers) and a wide spread: its best bid sits 5
ticks under the mid, so a long signal's stop placed 2 ticks under the mid is already crossed
by the bid when the entry fills — the exit then fires on the next ticker, deterministically.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from protocol.signals import SignalAccepted
from tests.e2e.test_trading_e2e import connect, ledger
from tests.support.fleet import FAST_CONFIG, RunningFleet, start_fleet, wait_for, workers_of
from tradefleet.client import MarketClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STILL = "STILL/USD"
MID = Decimal(1000)
TICK = Decimal("0.1")

CONFIG = f"""
traders = []
{FAST_CONFIG}
[managers.broker]
desired = 5

[accounts.pm-exit]
venue = "paper"
[accounts.pm-kill9]
venue = "paper"
[accounts.pm-switch]
venue = "paper"
[accounts.pm-shared]
venue = "paper"
[accounts.pm-shared.risk]
max_position_qty = {{ "{STILL}" = "1" }}

[customers.demo]
accounts = ["pm-exit", "pm-kill9", "pm-switch", "pm-shared"]

[paper]
seed = 5
step_interval_s = 0.1
maker_fee_bps = 0
taker_fee_bps = 0
[[paper.instruments]]
instrument = "{STILL}"
tick_size = "{TICK}"
lot_size = "0.01"
initial_price = "{MID}"
volatility = 0
activity = 0
spread_ticks = 10
level_lots = [500, 500]
"""

ACCOUNTS = ("pm-exit", "pm-kill9", "pm-switch", "pm-shared")


def accounts_ready(fleet: RunningFleet) -> dict[str, Any] | None:
    accounts = fleet.manager("broker").get("/v1/accounts")["accounts"]
    if all(accounts.get(a) and accounts[a]["ready"] and accounts[a]["state"] == "up"
           for a in ACCOUNTS):
        return accounts  # type: ignore[no-any-return]
    return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    running = start_fleet(tmp_path_factory.mktemp("positions") / "fleet", CONFIG)
    try:
        wait_for(lambda: accounts_ready(running), 120, "every account owned and reconciled")
        wait_for(lambda: any(w["state"] == "up" for w in workers_of(running.fleet(), "market")),
                 60, "a market up")
        yield running
    finally:
        running.stop()


def journal(fleet: RunningFleet, account: str) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, payload) for kind, _, payload in journal_rows(fleet, account)]


def journal_rows(fleet: RunningFleet, account: str) -> list[tuple[str, int, dict[str, Any]]]:
    path = fleet.data_dir / "journal" / f"{account}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT kind, epoch, payload FROM entries ORDER BY seq").fetchall()
    return [(kind, epoch, json.loads(payload)) for kind, epoch, payload in rows]


def exits_fired(fleet: RunningFleet, account: str) -> list[tuple[int, str]]:
    """(epoch of the owner that fired it, kind) of every exit in the journal."""
    return [(epoch, p["record"]["kind"]) for kind, epoch, p in journal_rows(fleet, account)
            if kind == "risk" and p["record"]["record"] == "exit_triggered"]


def story(fleet: RunningFleet, account: str) -> list[str]:
    """The journal as a user reads it: signal → orders → fills → exit, in journal order."""
    out = []
    for kind, payload in journal(fleet, account):
        if kind == "risk":
            record = payload["record"]["record"]
            out.append({"signal_adopted": "signal", "exit_triggered": "exit"}.get(record, record))
        elif kind == "request" and payload["msg"]["type"] == "new_order":
            out.append("order")
        elif kind == "event" and payload["type"] in ("order_filled", "order_partially_filled"):
            out.append("fill")
    return out


def in_order(items: list[str], wanted: list[str]) -> bool:
    """`wanted` appears in `items` as a subsequence."""
    it = iter(items)
    return all(any(x == w for x in it) for w in wanted)


def owner_info(fleet: RunningFleet, account: str) -> dict[str, Any]:
    for w in workers_of(fleet.fleet(), "broker"):
        if w.get("info", {}).get("account") == account and w["state"] == "up":
            return w["info"]  # type: ignore[no-any-return]
    return {}


async def long_signal(client: MarketClient, **exits: Any) -> SignalAccepted:
    answer = await client.send_signal(STILL, direction="long", qty="1", timeout=20, **exits)
    assert isinstance(answer, SignalAccepted), answer
    assert answer.client_order_id is not None and answer.exits is not None
    return answer


async def position(client: MarketClient) -> Decimal:
    positions = {p.instrument: p.qty for p in (await client.positions()).positions}
    return positions.get(STILL, Decimal(0))


async def test_a_signal_s_stop_fires_while_the_algo_is_away_and_the_journal_tells_it(
        fleet: RunningFleet) -> None:
    client = await connect(fleet, "pm-exit")
    try:
        await long_signal(client, stop_loss=str(MID - 2 * TICK),
                          take_profit=str(MID + 100))
    finally:
        await client.close()  # the algo is gone before its exit fires
    wait_for(lambda: in_order(story(fleet, "pm-exit"),
                              ["signal", "order", "fill", "exit", "order", "fill"]),
             30, "signal → order → fill → exit → order → fill in the journal")
    venue = await ledger(fleet, "pm-exit")
    assert {p["instrument"]: Decimal(p["qty"]) for p in venue["positions"]}.get(
        STILL, Decimal(0)) == 0
    assert [kind for _, kind in exits_fired(fleet, "pm-exit")] == ["stop_loss"]
    # Back again: the algo finds the account flat, and the operator's view agrees.
    client = await connect(fleet, "pm-exit")
    try:
        assert await position(client) == 0
    finally:
        await client.close()
    wait_for(lambda: "exits" in owner_info(fleet, "pm-exit")
             and owner_info(fleet, "pm-exit")["exits"] == 0, 10, "no exit held any more")


async def test_the_exit_fires_exactly_once_across_a_kill_9_of_the_broker(
        fleet: RunningFleet) -> None:
    client = await connect(fleet, "pm-kill9")
    try:
        # A time exit a few seconds out: the entry fills, the Broker dies at once, and the
        # exit is due while (or after) its replacement rebuilds from the journal.
        due = time.time_ns() + 6_000_000_000
        await long_signal(client, stop_loss=str(MID - 50), time_exit_at=due)
        wait_for(lambda: "fill" in story(fleet, "pm-kill9"), 20, "the entry filled")
        victim_epoch = max(epoch for _, epoch, _ in journal_rows(fleet, "pm-kill9"))
        owner_id = fleet.manager("broker").get("/v1/accounts")["accounts"]["pm-kill9"][
            "worker_id"]
        victim = wait_for(lambda: next((w for w in workers_of(fleet.fleet(), "broker")
                                        if w["id"] == owner_id and w.get("pid")), None),
                          10, "the owner's pid in the fleet view")
        os.kill(victim["pid"], signal.SIGKILL)
    finally:
        await client.close()
    wait_for(lambda: any(w.get("info", {}).get("account") == "pm-kill9" and w["state"] == "up"
                         and w["id"] != victim["id"]
                         for w in workers_of(fleet.fleet(), "broker")),
             60, "a new owner of pm-kill9")
    wait_for(lambda: story(fleet, "pm-kill9").count("fill") >= 2, 40, "the exit filled")
    venue = await ledger(fleet, "pm-kill9")
    assert {p["instrument"]: Decimal(p["qty"]) for p in venue["positions"]}.get(
        STILL, Decimal(0)) == 0
    # Give a second (wrong) exit every chance to show up, then count: exactly one.
    await asyncio.sleep(2)
    told = story(fleet, "pm-kill9")
    assert told.count("exit") == 1 and told.count("order") == 2, told
    [(epoch, kind)] = exits_fired(fleet, "pm-kill9")
    assert kind == "time" and epoch > victim_epoch  # fired by the replacement, from the journal


async def test_the_kill_switch_cancels_refuses_and_is_cleared_by_the_operator(
        fleet: RunningFleet) -> None:
    client = await connect(fleet, "pm-switch")
    broker = fleet.manager("broker")
    try:
        resting = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await resting.accepted(timeout=20)
        status, _ = broker.call("POST", "/v1/accounts/pm-switch/kill-switch",
                                {"active": True, "reason": "e2e drill"})
        assert status == 200
        await resting.done(timeout=20)
        cancelled = resting.events[-1]
        assert cancelled.type == "order_cancelled" and cancelled.reason == "kill_switch"
        refused = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await refused.done(timeout=20)
        assert refused.error is not None and refused.error.code == "kill_switch"
        assert "e2e drill" in str(refused.error)
        wait_for(lambda: owner_info(fleet, "pm-switch").get("kill_switch"), 10,
                 "the fleet view shows the kill switch")
        # Unknown account: coded 404; the CLI reaches the same switch through the infra.
        status, body = broker.call("POST", "/v1/accounts/nobody/kill-switch", {"active": True})
        assert status == 404 and body["error"]["code"] == "not_found"
        done = fleet.cli("kill-switch", "pm-switch", "off")
        assert done.returncode == 0, done.stderr
        again = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await again.accepted(timeout=20)
        await client.cancel_order(again.client_order_id)
        # Limits changed at run time apply to the next order.
        status, _ = broker.call("PUT", "/v1/accounts/pm-switch/limits",
                                {"max_order_notional": "50"})
        assert status == 200
        big = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await big.done(timeout=20)
        assert big.error is not None and big.error.code == "risk_order_notional"
        assert broker.call("PUT", "/v1/accounts/pm-switch/limits", {})[0] == 200
        # The fleet-wide switch, through the InfrastructureManager, then off again.
        done = fleet.cli("kill-switch", "--all", "on", "--reason", "fleet drill")
        assert done.returncode == 0, done.stderr
        stopped = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await stopped.done(timeout=20)
        assert stopped.error is not None and stopped.error.code == "kill_switch"
        assert "fleet drill" in str(stopped.error)
        done = fleet.cli("kill-switch", "--all", "off")
        assert done.returncode == 0, done.stderr
        resumed = await client.place_order(STILL, "buy", "0.1", MID - 20)
        await resumed.accepted(timeout=20)
        await client.cancel_order(resumed.client_order_id)
    finally:
        await client.close()


async def test_two_algos_of_one_customer_share_the_account_limits(fleet: RunningFleet) -> None:
    first = await connect(fleet, "pm-shared")
    second = await connect(fleet, "pm-shared")
    try:
        assert first.session_id != second.session_id
        working = await first.place_order(STILL, "buy", "0.8", MID - 20)
        await working.accepted(timeout=20)
        refused = await second.place_order(STILL, "buy", "0.5", MID - 20)
        await refused.done(timeout=20)
        assert refused.error is not None and refused.error.code == "risk_position_size"
        assert refused.events[-1].seq is not None
        fits = await second.place_order(STILL, "buy", "0.2", MID - 20)
        await fits.accepted(timeout=20)
        for handle in (working, fits):
            await (first if handle is working else second).cancel_order(handle.client_order_id)
            await handle.done(timeout=20)
    finally:
        await first.close()
        await second.close()
