"""Issue 3 acceptance, end to end: `tradefleet up` on the paper exchange, an algo via the SDK.

The platform is started the way a user starts it; the algo is a real `MarketClient`; the
ground truth is the paper exchange's own ledger, read over its REST API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests.support.fleet import FAST_CONFIG, RunningFleet, start_fleet, wait_for, workers_of
from tradefleet.client import MarketClient, RequestFailed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CONFIG = FAST_CONFIG + """
[managers.broker]
desired = 2

[accounts.paper-1]
venue = "paper"
[accounts.algo-1]
venue = "paper"
[accounts.mal-1]
venue = "paper"

[customers.demo]
accounts = ["algo-1", "paper-1"]
[customers.mallory]
accounts = ["mal-1"]

[[traders]]
name = "ma-cross"
strategy = "examples.ma_cross:MovingAverageCross"
customer = "demo"
account = "paper-1"
params = { instrument = "BTC/USD", fast = 5, slow = 20, qty = "0.01" }
"""

INSTRUMENT = "BTC/USD"


def accounts_ready(fleet: RunningFleet) -> dict[str, Any] | None:
    accounts = fleet.manager("broker").get("/v1/accounts")["accounts"]
    if all(owner and owner["ready"] and owner["state"] == "up" for owner in accounts.values()):
        return accounts  # type: ignore[no-any-return]
    return None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    running = start_fleet(tmp_path_factory.mktemp("trading") / "fleet", CONFIG)
    try:
        wait_for(lambda: accounts_ready(running), 90, "every account owned and reconciled")
        wait_for(lambda: len([w for w in workers_of(running.fleet(), "market")
                              if w["state"] == "up"]) == 2, 60, "two markets up")
        yield running
    finally:
        running.stop()


async def ledger(fleet: RunningFleet, account: str) -> dict[str, Any]:
    url = (fleet.data_dir / "run" / "paper.url").read_text().strip()
    headers = {"Authorization": f"Bearer {fleet.secrets()['join_token']}"}
    async with (aiohttp.ClientSession() as http,
                http.get(f"{url}/v1/accounts/{account}/ledger", headers=headers) as resp):
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def connect(fleet: RunningFleet, account: str = "algo-1",
                  customer: str = "demo") -> MarketClient:
    url = fleet.manager_url_files["market"].read_text().strip()
    return await MarketClient.connect(url, fleet.secrets()[f"api_token.{customer}"],
                                      account=account)


async def next_event(client: MarketClient, kind: str, timeout: float = 20) -> Any:
    async with asyncio.timeout(timeout):
        async for event in client.events():
            if event.type == kind:
                return event
    raise AssertionError(f"stream ended before a {kind}")


async def best_prices(client: MarketClient) -> tuple[Decimal, Decimal]:
    snapshot = await next_event(client, "book_snapshot")
    return Decimal(snapshot.bids[0][0]), Decimal(snapshot.asks[0][0])


async def assert_matches_ledger(fleet: RunningFleet, client: MarketClient, account: str
                                ) -> None:
    """Positions and cash seen by the algo equal the exchange's own ledger, exactly."""
    venue = await ledger(fleet, account)
    positions = {p.instrument: p.qty for p in (await client.positions()).positions}
    venue_positions = {p["instrument"]: Decimal(p["qty"]) for p in venue["positions"]}
    assert {k: v for k, v in positions.items() if v} == \
        {k: v for k, v in venue_positions.items() if v}
    cash = {ccy: Decimal(v) for ccy, v in (await client.balances()).cash.items()}
    assert cash == {ccy: Decimal(v) for ccy, v in venue["cash"].items()}


async def test_algo_trades_limit_and_market_and_matches_the_exchange_ledger(
        fleet: RunningFleet) -> None:
    client = await connect(fleet)
    try:
        await client.subscribe(INSTRUMENT, "book", depth=10)
        bid, _ask = await best_prices(client)

        resting = await client.place_order(INSTRUMENT, "buy", "0.01", bid - 500)
        await resting.accepted(timeout=20)
        assert resting.client_order_id in {o.client_order_id for o in
                                           await client.open_orders()}

        bought = await client.place_order(INSTRUMENT, "buy", "0.05", order_type="market",
                                          time_in_force="IOC")
        await bought.filled(timeout=20)
        assert bought.filled_qty == Decimal("0.05") and bought.fills

        sold = await client.place_order(INSTRUMENT, "sell", "0.02", bid - 1000,
                                        time_in_force="IOC")
        await sold.filled(timeout=20)

        await client.cancel_order(resting.client_order_id)
        await resting.done(timeout=20)
        assert resting.status.value == "cancelled"
        await assert_matches_ledger(fleet, client, "algo-1")
    finally:
        await client.close()


async def test_the_same_client_order_id_twice_creates_one_order(fleet: RunningFleet) -> None:
    client = await connect(fleet)
    try:
        await client.subscribe(INSTRUMENT, "book", depth=10)
        bid, _ = await best_prices(client)
        cid = f"dup-{uuid.uuid4().hex[:8]}"
        first = await client.place_order(INSTRUMENT, "buy", "0.01", bid - 700,
                                         client_order_id=cid)
        await first.accepted(timeout=20)
        second = await client.place_order(INSTRUMENT, "buy", "0.01", bid - 700,
                                          client_order_id=cid)
        open_ids = [o.client_order_id for o in await client.open_orders()]
        assert open_ids.count(cid) == 1
        assert second.client_order_id == first.client_order_id
        await client.cancel_order(cid)
        await first.done(timeout=20)
    finally:
        await client.close()


def market_worker_of(fleet: RunningFleet, client: MarketClient) -> dict[str, Any]:
    port = (client.ws_url or "").split(":")[2].split("/")[0]
    return next(w for w in workers_of(fleet.fleet(), "market") if w["url"].endswith(port))


async def test_kill_9_of_the_market_worker_resumes_without_losing_an_order_event(
        fleet: RunningFleet) -> None:
    client = await connect(fleet)
    seqs: list[int] = []
    try:
        await client.subscribe(INSTRUMENT, "book", depth=10)
        bid, _ = await best_prices(client)
        resting = await client.place_order(INSTRUMENT, "buy", "0.01", bid - 900)
        await resting.accepted(timeout=20)
        victim = market_worker_of(fleet, client)

        # An order in flight when the Market dies: its events must still arrive, once.
        in_flight = await client.place_order(INSTRUMENT, "buy", "0.01", order_type="market",
                                             time_in_force="IOC")
        os.kill(victim["pid"], signal.SIGKILL)
        await in_flight.done(timeout=60)
        assert in_flight.status.value == "filled"
        after = await client.place_order(INSTRUMENT, "sell", "0.01", order_type="market",
                                         time_in_force="IOC")
        await after.done(timeout=30)
        await client.cancel_order(resting.client_order_id)
        await resting.done(timeout=30)

        assert client.reconnects >= 1
        assert market_worker_of(fleet, client)["id"] != victim["id"]
        # Subscriptions come back: a fresh book snapshot arrives on the new Market.
        await next_event(client, "book_snapshot")

        for handle in (resting, in_flight, after):
            seqs += [e.seq for e in handle.events if e.seq is not None]
            kinds = [e.type for e in handle.events]
            assert len(kinds) == len(set(zip(kinds, [e.seq for e in handle.events],
                                             strict=True))), kinds
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs))), sorted(seqs)
        assert len(set(seqs)) == len(seqs), "no order event delivered twice"
        await assert_matches_ledger(fleet, client, "algo-1")
    finally:
        await client.close()


async def test_kill_9_of_the_broker_worker_is_replaced_and_orders_reconciled(
        fleet: RunningFleet) -> None:
    client = await connect(fleet)
    try:
        await client.subscribe(INSTRUMENT, "book", depth=10)
        bid, _ = await best_prices(client)
        resting = await client.place_order(INSTRUMENT, "buy", "0.01", bid - 1100)
        await resting.accepted(timeout=20)
        owner = fleet.manager("broker").get("/v1/accounts")["accounts"]["algo-1"]
        pid = next(w["pid"] for w in workers_of(fleet.fleet(), "broker")
                   if w["id"] == owner["worker_id"])
        os.kill(pid, signal.SIGKILL)

        def new_owner() -> dict[str, Any] | None:
            now = fleet.manager("broker").get("/v1/accounts")["accounts"]["algo-1"]
            if now and now["worker_id"] != owner["worker_id"] and now["ready"]:
                return now  # type: ignore[no-any-return]
            return None

        replacement = await asyncio.to_thread(wait_for, new_owner, 60, "a new order owner")
        assert replacement["epoch"] > owner["epoch"]
        # The resting order survived: reconciled from the journal and the exchange.
        async def resting_is_open() -> None:
            while True:
                try:  # during the failover the Market answers "unavailable": a short gap
                    if resting.client_order_id in {o.client_order_id
                                                   for o in await client.open_orders()}:
                        return
                except RequestFailed as exc:
                    assert exc.code == "unavailable", exc
                await asyncio.sleep(0.2)
        await asyncio.wait_for(resting_is_open(), 30)
        # The algo carries on.
        trade = await client.place_order(INSTRUMENT, "buy", "0.01", order_type="market",
                                         time_in_force="IOC")
        await trade.filled(timeout=30)
        await client.cancel_order(resting.client_order_id)
        await resting.done(timeout=30)
        assert resting.status.value == "cancelled"
        await assert_matches_ledger(fleet, client, "algo-1")
    finally:
        await client.close()


async def test_customers_are_isolated(fleet: RunningFleet) -> None:
    from tradefleet.client import AuthError

    with pytest.raises(AuthError):
        await connect(fleet, account="algo-1", customer="mallory")
    mallory = await connect(fleet, account="mal-1", customer="mallory")
    demo = await connect(fleet)
    try:
        await demo.subscribe(INSTRUMENT, "book", depth=10)
        bid, _ = await best_prices(demo)
        secret = await demo.place_order(INSTRUMENT, "buy", "0.01", bid - 1300)
        await secret.accepted(timeout=20)
        assert secret.client_order_id not in {o.client_order_id
                                              for o in await mallory.open_orders()}
        assert (await mallory.positions()).account == "mal-1"
        http, ws = await raw_session(fleet, "mallory", "mal-1")
        try:  # her session cannot touch demo's account, even knowing the order id
            error = await errors_for(ws, json.dumps({
                "type": "cancel_order", "account": "algo-1",
                "client_order_id": secret.client_order_id}))
            assert error["code"] == "forbidden"
        finally:
            await ws.close()
            await http.close()
        assert secret.status.value == "accepted"
        await demo.cancel_order(secret.client_order_id)
        await secret.done(timeout=20)
        assert secret.status.value == "cancelled"
    finally:
        await mallory.close()
        await demo.close()


async def raw_session(fleet: RunningFleet, customer: str = "demo", account: str = "algo-1"
                      ) -> tuple[aiohttp.ClientSession, Any]:
    url = fleet.manager_url_files["market"].read_text().strip()
    http = aiohttp.ClientSession()
    token = fleet.secrets()[f"api_token.{customer}"]
    async with http.post(f"{url}/v1/sessions", json={"account": account},
                         headers={"Authorization": f"Bearer {token}"}) as resp:
        grant = await resp.json()
    ws = await http.ws_connect(grant["ws_url"],
                               headers={"Authorization": f"Bearer {grant['session_token']}"})
    await ws.send_json({"type": "hello", "session_id": grant["session_id"]})
    return http, ws


async def errors_for(ws: Any, frame: str | bytes) -> dict[str, Any]:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            data = json.loads(msg.data)
            events = data["events"] if data["type"] == "batch" else [data]
            for event in events:
                if event["type"] == "error":
                    return event  # type: ignore[no-any-return]


async def test_bad_input_gets_coded_errors_and_no_process_crashes(fleet: RunningFleet) -> None:
    before = {w["id"]: w["pid"] for w in workers_of(fleet.fleet())}
    http, ws = await raw_session(fleet)
    order = {"type": "new_order", "client_order_id": "bad-1", "account": "algo-1",
             "instrument": INSTRUMENT, "side": "buy", "order_type": "limit", "qty": "0.01",
             "price": "100.0", "time_in_force": "GTC"}
    try:
        cases = [
            ("{not json", "bad_json", None),
            (json.dumps({"type": "teleport"}), "unknown_type", None),
            (json.dumps({**order, "qty": "-1"}), "invalid_field", "qty"),
            (json.dumps({**order, "qty": "0"}), "invalid_field", "qty"),
            (json.dumps({**order, "price": "100.05"}), "price_off_tick", "price"),
            (json.dumps({**order, "instrument": "NOPE/USD"}), "unknown_instrument",
             "instrument"),
            (json.dumps({k: v for k, v in order.items() if k != "side"}), "missing_field",
             "side"),
        ]
        for frame, code, field in cases:
            error = await errors_for(ws, frame)
            assert error["code"] == code, (frame, error)
            if field:
                assert error.get("field") == field, (frame, error)
        assert not ws.closed, "the connection stays up after bad input"
        await ws.send_str("x" * (70 * 1024))
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    finally:
        await ws.close()
        await http.close()
    after = {w["id"]: w["pid"] for w in workers_of(fleet.fleet())}
    assert {k: v for k, v in after.items() if k in before} == \
        {k: v for k, v in before.items() if k in after}
    assert set(before) <= set(after), "no worker crashed"


def test_the_readme_sdk_example_runs(fleet: RunningFleet) -> None:
    import re
    import subprocess
    import sys

    from tests.support.fleet import REPO

    proc = subprocess.Popen([sys.executable, "examples/sdk_quickstart.py", "--data-dir",
                             str(fleet.data_dir)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"example hung; printed:\n{out}\n{err}") from None
    assert proc.returncode == 0, err
    assert re.search(r"^bought 0\.010* at \d", out, re.MULTILINE), out
    assert re.search(r"^resting bid \S+: cancelled$", out, re.MULTILINE), out


def test_the_hosted_trader_trades_on_the_paper_exchange(fleet: RunningFleet) -> None:
    def trading() -> dict[str, Any] | None:
        doc = fleet.fleet()
        [trader] = workers_of(doc, "trader")
        owner = next((w for w in workers_of(doc, "broker")
                      if w.get("info", {}).get("account") == "paper-1"), None)
        info = trader.get("info", {})
        if owner and info.get("status") == "running" and \
                info.get("strategy_state", {}).get("signals") and owner["info"].get("fills"):
            return info  # type: ignore[no-any-return]
        return None

    info = wait_for(trading, 120, "the hosted moving-average trader to trade")
    assert info["trader"] == "ma-cross" and info["account"] == "paper-1"
    assert info["errors"] == 0
    # The operator sees it in `tradefleet status`, with its own PnL.
    status = fleet.cli("status")
    assert status.returncode == 0, status.stderr
    [row] = [line for line in status.stdout.splitlines() if line.startswith("ma-cross ")]
    assert row.split()[3:5] == ["paper-1", "running"]
    # Its orders reached the position manager under its tag (the trader's name).
    path = fleet.data_dir / "journal" / "paper-1.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        records = [json.loads(p)["record"] for (p,) in db.execute(
            "SELECT payload FROM entries WHERE kind = 'risk'")]
    tags = {r.get("trader_tag") for r in records
            if r["record"] in ("order_admitted", "signal_adopted")}
    assert tags == {"ma-cross"}, tags
