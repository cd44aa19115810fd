"""Issue 5 acceptance, end to end: the position manager in `tradefleet up` on the paper exchange.

Algos are real `MarketClient`s; the ground truth is the account journal (SQLite, table
`entries`) and the paper exchange's own ledger. The test instrument `STILL/USD` has a market
that does not move by itself (no volatility, no synthetic takers): its mid moves only when a
test steers it (`POST {paper}/v1/admin/steer`), and the house quotes follow the mid. A long
signal's stop sits well under the market, so nothing fires at entry; the test then walks the
price down through the stop (the Broker's ticker sees the bid cross it) and back to `MID`,
where the other tests expect it.
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

import aiohttp
import pytest

from protocol.signals import ExitFired, SignalAccepted, SignalRejected
from tests.e2e.test_trading_e2e import connect, ledger
from tests.support.fleet import FAST_CONFIG, RunningFleet, start_fleet, wait_for, workers_of
from tradefleet.client import MarketClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STILL = "STILL/USD"
MID = Decimal(1000)
TICK = Decimal("0.1")
STOP = MID - 20  # a long signal's stop: 195 ticks under the entry's bid
STEER_TICKS = 20  # per market step (0.1 s): through the stop in about a second

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
[accounts.pm-tags]
venue = "paper"
[accounts.pm-tags.risk]
trader_tags = {{ scalper = {{ max_order_notional = "50" }} }}

[customers.demo]
accounts = ["pm-exit", "pm-kill9", "pm-switch", "pm-shared", "pm-tags"]

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

ACCOUNTS = ("pm-exit", "pm-kill9", "pm-switch", "pm-shared", "pm-tags")


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
    assert answer.seq is not None
    return answer


async def position(client: MarketClient) -> Decimal:
    positions = {p.instrument: p.qty for p in (await client.positions()).positions}
    return positions.get(STILL, Decimal(0))


async def venue_position(fleet: RunningFleet, account: str) -> Decimal:
    venue = await ledger(fleet, account)
    return {p["instrument"]: Decimal(p["qty"]) for p in venue["positions"]}.get(
        STILL, Decimal(0))


async def steer(fleet: RunningFleet, price: Decimal, ticks_per_step: int = STEER_TICKS
                ) -> Decimal:
    """Point the paper exchange's walk of STILL/USD at `price`; returns the mid right now."""
    url = (fleet.data_dir / "run" / "paper.url").read_text().strip()
    headers = {"Authorization": f"Bearer {fleet.secrets()['join_token']}"}
    body = {"instrument": STILL, "price": str(price), "ticks_per_step": ticks_per_step}
    async with (aiohttp.ClientSession() as http,
                http.post(f"{url}/v1/admin/steer", json=body, headers=headers) as resp):
        answer = await resp.json()
        assert resp.status == 200, answer
    assert Decimal(answer["target"]) == price
    return Decimal(answer["mid"])


async def steer_to(fleet: RunningFleet, price: Decimal, timeout: float = 30) -> None:
    """Steer to `price` and wait until the mid is there (the other tests quote around MID)."""
    async with asyncio.timeout(timeout):
        while await steer(fleet, price) != price:
            await asyncio.sleep(0.1)  # poll interval of the condition above


async def wait_until(probe: Any, timeout: float, what: str) -> Any:
    """Poll a synchronous probe from async code without blocking the loop for long."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


async def collect(client: MarketClient, until: Any, timeout: float = 20) -> list[Any]:
    """Events of the client until `until(event)` holds for one of them."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in client.events():
            seen.append(event)
            if until(event):
                return seen
    raise AssertionError(f"the stream ended first: {seen}")


def sequenced(events: list[Any]) -> list[Any]:
    return [e for e in events if getattr(e, "seq", None) is not None]


async def test_a_signal_s_stop_fires_while_the_algo_is_away_and_the_journal_tells_it(
        fleet: RunningFleet) -> None:
    client = await connect(fleet, "pm-exit")
    try:
        # Stop and take-profit far from the market: nothing can fire at entry.
        entry = await long_signal(client, stop_loss=str(STOP), take_profit=str(MID + 20))
        filled = await collect(client, lambda e: e.type == "order_filled"
                               and e.client_order_id == entry.client_order_id)
        assert [e.seq for e in sequenced(filled)] == list(range(1, client.last_seq + 1))
        session_id, last_seq = client.session_id, client.last_seq
        assert session_id is not None
    finally:
        await client.close()  # the algo is gone before its exit fires
    assert exits_fired(fleet, "pm-exit") == []
    try:
        # The price walks down through the stop, the algo still away.
        await steer(fleet, MID - 40)
        await wait_until(lambda: in_order(story(fleet, "pm-exit"),
                                          ["signal", "order", "fill", "exit", "order", "fill"]),
                         30, "signal → order → fill → exit → order → fill in the journal")
        assert await venue_position(fleet, "pm-exit") == 0
        await wait_until(lambda: owner_info(fleet, "pm-exit").get("exits") == 0, 15,
                         "the exit plan retired (nothing left to fire)")
        assert [kind for _, kind in exits_fired(fleet, "pm-exit")] == ["stop_loss"]
    finally:
        await steer_to(fleet, MID)
    # The algo comes back on its session: it gets what it missed, once, in seq order.
    url = fleet.manager_url_files["market"].read_text().strip()
    client = await MarketClient.connect(url, fleet.secrets()["api_token.demo"],
                                        account="pm-exit", session_id=session_id,
                                        resume_from_seq=last_seq)
    try:
        missed = await collect(client, lambda e: e.type == "order_filled"
                               and e.client_order_id != entry.client_order_id)
        seqs = [e.seq for e in sequenced(missed)]
        assert seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs))), missed
        [fired] = [e for e in missed if isinstance(e, ExitFired)]
        assert fired.kind == "stop_loss" and fired.seq == last_seq + 1
        assert fired.signal_id == entry.signal_id
        assert fired.trigger_price is not None and fired.trigger_price <= STOP
        assert missed[-1].client_order_id == fired.client_order_id
        # The SDK's positions: flat, with the loss the stop took and the fees, in decimals.
        [still] = [p for p in (await client.positions()).positions if p.instrument == STILL]
        assert still.qty == 0 and still.avg_price is None
        assert still.realized_pnl < 0 and still.fees == {"USD": Decimal(0)}
        assert still.unrealized_pnl in (None, Decimal(0))
        # The positions round trip came after anything the replay could still bring:
        # nothing sequenced arrived after the close's fill, so nothing came twice.
        assert client.last_seq == seqs[-1]
        assert not sequenced(list(client._queue))
    finally:
        await client.close()


async def test_the_exit_fires_exactly_once_across_a_kill_9_of_the_broker(
        fleet: RunningFleet) -> None:
    client = await connect(fleet, "pm-kill9")
    try:
        entry = await long_signal(client, stop_loss=str(STOP), take_profit=str(MID + 20))
        await collect(client, lambda e: e.type == "order_filled"
                      and e.client_order_id == entry.client_order_id)
    finally:
        await client.close()
    victim_epoch = max(epoch for _, epoch, _ in journal_rows(fleet, "pm-kill9"))
    owner_id = fleet.manager("broker").get("/v1/accounts")["accounts"]["pm-kill9"]["worker_id"]
    victim = wait_for(lambda: next((w for w in workers_of(fleet.fleet(), "broker")
                                    if w["id"] == owner_id and w.get("pid")), None),
                      10, "the owner's pid in the fleet view")
    os.kill(victim["pid"], signal.SIGKILL)
    assert exits_fired(fleet, "pm-kill9") == []
    try:
        # The price goes through the stop while no Broker owns the account.
        await steer(fleet, MID - 40)
        await wait_until(lambda: any(
            w.get("info", {}).get("account") == "pm-kill9" and w["state"] == "up"
            and w["id"] != victim["id"] for w in workers_of(fleet.fleet(), "broker")),
            60, "a new owner of pm-kill9")
        await wait_until(lambda: story(fleet, "pm-kill9").count("fill") >= 2, 40,
                         "the exit filled")
        assert await venue_position(fleet, "pm-kill9") == 0
        # Once the plan is retired no second exit can fire: then count.
        await wait_until(lambda: owner_info(fleet, "pm-kill9").get("exits") == 0, 15,
                         "the exit plan retired")
    finally:
        await steer_to(fleet, MID)
    told = story(fleet, "pm-kill9")
    assert told.count("exit") == 1 and told.count("order") == 2, told
    [(epoch, kind)] = exits_fired(fleet, "pm-kill9")
    assert kind == "stop_loss" and epoch > victim_epoch  # fired by the replacement


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


async def test_a_trader_tag_s_stricter_limit_applies_to_the_tagged_session_only(
        fleet: RunningFleet) -> None:
    url = fleet.manager_url_files["market"].read_text().strip()
    tagged = await MarketClient.connect(url, fleet.secrets()["api_token.demo"],
                                        account="pm-tags", trader_tag="scalper")
    untagged = await connect(fleet, "pm-tags")
    try:
        # 0.1 × 980 = 98: over the scalper tag's 50, within the account's (unlimited) limits.
        refused = await tagged.place_order(STILL, "buy", "0.1", MID - 20)
        await refused.done(timeout=20)
        assert refused.error is not None and refused.error.code == "risk_order_notional"
        assert "trader tag scalper" in str(refused.error), refused.error
        assert "max_order_notional" in str(refused.error)
        accepted = await untagged.place_order(STILL, "buy", "0.1", MID - 20)
        await accepted.accepted(timeout=20)
        await untagged.cancel_order(accepted.client_order_id)
        await accepted.done(timeout=20)
        # Signals of the tagged session meet the same limit.
        answer = await tagged.send_signal(STILL, direction="long", qty="0.1",
                                          entry_price=str(MID - 20), timeout=20)
        assert isinstance(answer, SignalRejected) and answer.code == "risk_order_notional"
        assert "trader tag scalper" in answer.message
    finally:
        await tagged.close()
        await untagged.close()
