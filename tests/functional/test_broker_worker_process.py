"""Broker workers as real processes under a real BrokerManager, trading on the real paper
exchange: assignment over the control pipe, the link, and kill -9 of the account's owner.

The test plays the Market worker with a raw WebSocket, learning the owner's address from the
BrokerManager's `GET /v1/accounts` exactly as a Market does.

One Broker worker is desired, so the replacement is a fresh spawn with a newer epoch. (A
standby spawned before the owner would need the manager to pass a fresh `assign.epoch`;
see `BrokerService.configure`.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from protocol.orders import NewOrder
from tests.functional.test_broker_link import Exchange, start_exchange
from tests.support.fleet import FAST_CONFIG, REPO
from workers.broker.adapters.paper.remote import RemotePaperAdapter

pytestmark = pytest.mark.timeout(120)

TOKEN = "broker-process-test-join-token"
CONFIG = f"""
traders = []
{FAST_CONFIG}
[security]
join_token = "{TOKEN}"
[managers.broker]
desired = 1
[accounts.paper-1]
venue = "paper"
retain_finished_orders = 100
snapshot_after_entries = 100
[customers.demo]
accounts = ["paper-1"]
[paper]
step_interval_s = 3600
maker_fee_bps = 0
taker_fee_bps = 0
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 40.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "fleet.toml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def exchange(data_dir: Path) -> Iterator[Exchange]:
    running = start_exchange(data_dir, CONFIG)
    yield running
    running.stop()


@pytest.fixture
def broker_manager(data_dir: Path, exchange: Exchange) -> Iterator[str]:
    log = open(data_dir / "broker-manager.log", "wb")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "managers", "--kind", "broker", "--port", "0", "--data-dir",
         str(data_dir), "--config", str(data_dir / "fleet.toml")],
        stdout=log, stderr=log, cwd=REPO, start_new_session=True)
    url_file = data_dir / "run" / "broker-manager.url"
    deadline = time.monotonic() + 30
    while not url_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            (data_dir / "broker-manager.log").read_text())
        time.sleep(0.05)
    try:
        yield url_file.read_text().strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


async def until(probe: Callable[[], Any], what: str) -> Any:
    """Await `probe()` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + WAIT_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def open_link(http: aiohttp.ClientSession, url: str
                    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(url.replace("http://", "ws://") + "/v1/link", headers=AUTH)
    await ws.send_bytes(orjson.dumps({"type": "link_hello", "market_id": "test-market"}))
    return ws, orjson.loads((await ws.receive(timeout=10)).data)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            frame: dict[str, Any] = orjson.loads(msg.data)
            if frame["type"] == kind and (kind != "session_event" or "seq" in frame["event"]):
                return frame


def route(msg: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "route", "session_id": "algo-1", "customer": "demo",
                         "msg": msg})


def sell(cid: str, price: str) -> dict[str, Any]:
    return {"type": "new_order", "client_order_id": cid, "account": "paper-1",
            "instrument": "BTC/USD", "side": "sell", "qty": "1", "price": price}


async def test_the_owner_is_killed_and_its_replacement_carries_on(
        broker_manager: str, exchange: Exchange, http: aiohttp.ClientSession) -> None:
    async def owner() -> dict[str, Any] | None:
        async with http.get(broker_manager + "/v1/accounts", headers=AUTH) as response:
            body = await response.json()
        assert response.status == 200, body
        entry = body["accounts"]["paper-1"]
        return entry if entry and entry["ready"] else None

    first = await until(owner, "an owner of paper-1")
    async with http.get(first["url"] + "/v1/status") as response:
        status = await response.json()
    assert status["info"]["account"] == "paper-1" and status["info"]["venue"] == "paper"

    ws, welcome = await open_link(http, first["url"])
    assert (welcome["account"], welcome["epoch"]) == ("paper-1", first["epoch"])
    await ws.send_bytes(route(sell("c1", "60000")))
    accepted = await next_frame(ws, "session_event")
    assert (accepted["event"]["type"], accepted["event"]["seq"]) == ("order_accepted", 1)

    os.kill(status["pid"], signal.SIGKILL)
    await ws.receive(timeout=10)  # the link drops with the process
    # While nobody owns the account, the exchange fills part of the order.
    counterparty = RemotePaperAdapter(exchange.url, TOKEN, "cpty")
    await counterparty.connect()
    try:
        await counterparty.place_order(NewOrder(
            client_order_id="t1", account="cpty", instrument="BTC/USD", side="buy",
            qty=Decimal("0.4"), price=Decimal(60000)))
    finally:
        await counterparty.close()

    async def replacement() -> dict[str, Any] | None:
        entry = await owner()
        return entry if entry and entry["worker_id"] != first["worker_id"] else None

    second = await until(replacement, "a new owner of paper-1")
    assert second["epoch"] > first["epoch"]
    ws2, _ = await open_link(http, second["url"])
    await ws2.send_bytes(orjson.dumps({"type": "replay", "session_id": "algo-1",
                                       "after_seq": 1}))
    replayed = await next_frame(ws2, "replayed")
    assert [(e["type"], e["seq"], e["filled_qty"]) for e in replayed["events"]] == [
        ("order_partially_filled", 2, "0.4")]
    await ws2.send_bytes(route(sell("c2", "61000")))
    accepted = await next_frame(ws2, "session_event")
    assert (accepted["event"]["client_order_id"], accepted["event"]["seq"]) == ("c2", 3)

    # The books agree with the exchange's own ledger.
    async with http.get(f"{exchange.url}/v1/accounts/paper-1/ledger", headers=AUTH) as resp:
        ledger = await resp.json()
    async with http.get(second["url"] + "/v1/status") as response:
        info = (await response.json())["info"]
    position = {p["instrument"]: p["qty"] for p in ledger["positions"]}
    assert Decimal(position["BTC/USD"]) == Decimal(info["positions"]["BTC/USD"]) == Decimal(
        "-0.4")
    assert (info["orders"], info["open_orders"], info["fills"]) == (2, 2, 1)
    await ws2.close()
    json.dumps(info)  # the status report is plain JSON


async def ready_owner(http: aiohttp.ClientSession, broker_manager: str
                      ) -> dict[str, Any] | None:
    """paper-1's entry in the BrokerManager's directory once its owner is ready."""
    async with http.get(broker_manager + "/v1/accounts", headers=AUTH) as response:
        entry = (await response.json())["accounts"]["paper-1"]
    return entry if entry and entry["ready"] else None


async def answer(ws: aiohttp.ClientWebSocketResponse, cid: str, kind: str) -> dict[str, Any]:
    """The next session event of type `kind` about `cid` on the link `ws`."""
    async with asyncio.timeout(10):
        while True:
            frame = orjson.loads((await ws.receive()).data)
            event = frame.get("event", {})
            if (event.get("client_order_id"), event.get("type")) == (cid, kind):
                return event  # type: ignore[no-any-return]


async def place_and_cancel(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    """Orders c0, c1, ... placed and cancelled, one at a time."""
    for i in range(count):
        await ws.send_bytes(route(sell(f"c{i}", "61000")))
        await answer(ws, f"c{i}", "order_accepted")
        await ws.send_bytes(route({"type": "cancel_order", "client_order_id": f"c{i}",
                                   "account": "paper-1"}))
        await answer(ws, f"c{i}", "order_cancelled")


async def test_a_repeat_of_an_order_the_owner_let_go_is_answered_from_the_journal(
        broker_manager: str, http: aiohttp.ClientSession) -> None:
    owner = await until(lambda: ready_owner(http, broker_manager), "an owner of paper-1")
    ws, _ = await open_link(http, owner["url"])

    # The config keeps 100 finished orders: the 101st to finish lets the first go.
    await place_and_cancel(ws, 101)
    await ws.send_bytes(route(sell("c0", "61000")))
    again = await answer(ws, "c0", "order_snapshot")
    assert (again["status"], again["price"], "seq" in again) == ("cancelled", "61000", False)
    async with http.get(owner["url"] + "/v1/status") as response:
        info = (await response.json())["info"]
    assert (info["orders"], info["orders_in_memory"], info["open_orders"]) == (101, 100, 0)
    await ws.close()


async def test_snapshots_stored_while_the_owner_runs_bound_what_a_replacement_replays(
        broker_manager: str, data_dir: Path, http: aiohttp.ClientSession) -> None:
    first = await until(lambda: ready_owner(http, broker_manager), "an owner of paper-1")
    ws, _ = await open_link(http, first["url"])

    # The config stores a snapshot every 100 entries; 60 orders placed and cancelled are ~300.
    await place_and_cancel(ws, 60)
    await ws.send_bytes(route(sell("kept", "62000")))
    await answer(ws, "kept", "order_accepted")

    async def stored() -> dict[str, Any] | None:
        async with http.get(first["url"] + "/v1/status") as response:
            status = await response.json()
        snapshot = status["info"]["snapshot"]
        return status if snapshot["stored"] and not snapshot["storing"] else None

    status = await until(stored, "a snapshot stored by the side process")
    taken = status["info"]["snapshot"]["seq"]
    assert taken >= 100 and status["info"]["rebuilt"] == {"snapshot_seq": 0, "replayed": 0}
    os.kill(status["pid"], signal.SIGKILL)
    await ws.receive(timeout=10)

    async def replacement() -> dict[str, Any] | None:
        entry = await ready_owner(http, broker_manager)
        return entry if entry and entry["worker_id"] != first["worker_id"] else None

    second = await until(replacement, "a new owner of paper-1")
    async with http.get(second["url"] + "/v1/status") as response:
        info = (await response.json())["info"]
    # It started from the snapshot and replayed exactly the entries after it, up to its claim.
    with sqlite3.connect(data_dir / "journal" / "paper-1.sqlite") as db:
        (after,) = db.execute(
            "SELECT COUNT(*) FROM entries WHERE seq > ? AND seq < (SELECT MIN(seq) FROM "
            "entries WHERE kind = 'owner' AND epoch = ?)", (taken, second["epoch"])).fetchone()
    assert info["rebuilt"] == {"snapshot_seq": taken, "replayed": after} and after < 200
    assert (info["orders"], info["open_orders"], info["orders_in_memory"]) == (61, 1, 61)
    ws2, _ = await open_link(http, second["url"])
    await ws2.send_bytes(route(sell("c0", "61000")))  # a repeat: the same order, not a new one
    again = await answer(ws2, "c0", "order_snapshot")
    assert again["status"] == "cancelled"
    await ws2.send_bytes(route(sell("next", "63000")))
    assert (await answer(ws2, "next", "order_accepted"))["seq"] == 122  # 60 x 2 + kept + next
    await ws2.close()


# ---------------------------------------------------------------- the fleet-wide kill switch

TWO_ACCOUNTS = CONFIG.replace('[customers.demo]\naccounts = ["paper-1"]',
                              '[accounts.paper-2]\nvenue = "paper"\n'
                              '[customers.demo]\naccounts = ["paper-1", "paper-2"]')


class BrokerManager:
    """`python -m managers --kind broker`, restartable on the same data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        url_file = self.data_dir / "run" / "broker-manager.url"
        url_file.unlink(missing_ok=True)
        log = open(self.data_dir / "broker-manager.log", "ab")  # noqa: SIM115 - child's
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "managers", "--kind", "broker", "--port", "0",
             "--data-dir", str(self.data_dir), "--config", str(self.data_dir / "fleet.toml")],
            stdout=log, stderr=log, cwd=REPO, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not url_file.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                (self.data_dir / "broker-manager.log").read_text()[-3000:])
            time.sleep(0.05)
        self.url = url_file.read_text().strip()
        return self.url

    def stop(self) -> None:
        """SIGTERM: the manager stops its workers, then exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@pytest.fixture
def restartable(data_dir: Path, exchange: Exchange) -> Iterator[BrokerManager]:
    manager = BrokerManager(data_dir)
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


async def test_the_fleet_wide_kill_switch_is_inherited_by_an_account_opened_later(
        restartable: BrokerManager, data_dir: Path, http: aiohttp.ClientSession) -> None:
    operator = {"Authorization": "Bearer " + json.loads(
        (data_dir / "secrets.json").read_text())["operator_token"]}

    async def accounts() -> dict[str, Any]:
        async with http.get(restartable.url + "/v1/accounts", headers=AUTH) as response:
            assert response.status == 200
            return await response.json()  # type: ignore[no-any-return]

    async def ready(account: str) -> dict[str, Any] | None:
        entry = (await accounts())["accounts"].get(account)
        return entry if entry and entry["ready"] else None

    async def fleet_switch(active: bool, reason: str = "") -> dict[str, Any]:
        async with http.post(restartable.url + "/v1/kill-switch", headers=operator,
                             json={"active": active, "reason": reason}) as response:
            body = await response.json()
            assert response.status == 200, body
            return body  # type: ignore[no-any-return]

    await until(lambda: ready("paper-1"), "an owner of paper-1")
    assert (await accounts())["fleet_kill_switch"] == {"active": False}
    engaged = await fleet_switch(True, "fleet drill")
    assert (engaged["accounts"], engaged["pending"], engaged["failed"]) == (["paper-1"], [], {})

    # The manager restarts (its workers stop with it) with a second account in its config:
    # paper-2 has never had an owner, and its journal knows nothing of the switch.
    restartable.stop()
    (data_dir / "fleet.toml").write_text(TWO_ACCOUNTS)
    restartable.start()
    assert not (data_dir / "journal" / "paper-2.sqlite").exists()
    body = await accounts()
    assert body["fleet_kill_switch"]["active"] is True
    assert body["fleet_kill_switch"]["reason"] == "fleet drill"
    owner = await until(lambda: ready("paper-2"), "an owner of paper-2")
    await until(lambda: _kill_switch_reported(accounts, "paper-2"),
                "paper-2's owner reporting the switch")

    ws, welcome = await open_link(http, owner["url"])
    assert welcome["account"] == "paper-2"
    await ws.send_bytes(route({**sell("k1", "60000"), "account": "paper-2"}))
    refused = await next_refusal(ws)
    assert refused["code"] == "kill_switch" and "fleet drill" in refused["message"], refused

    # The refusal is in the manager's event log, with the worker that refused it.
    async def logged() -> dict[str, Any] | None:
        async with http.get(restartable.url + "/v1/events", headers=operator) as response:
            events = (await response.json())["events"]
        return next((e for e in events if e["event"] == "risk_rejected"
                     and e.get("client_order_id") == "k1"), None)

    line = await until(logged, "the risk refusal in the event log")
    assert (line["category"], line["worker_id"], line["account"], line["code"]) == (
        "risk", owner["worker_id"], "paper-2", "kill_switch")

    # Cleared fleet-wide: the same account accepts orders again.
    cleared = await fleet_switch(False)
    assert sorted(cleared["accounts"]) == ["paper-1", "paper-2"]
    assert (await accounts())["fleet_kill_switch"]["active"] is False
    await ws.send_bytes(route({**sell("k2", "60000"), "account": "paper-2"}))
    accepted = await next_frame(ws, "session_event")
    assert (accepted["event"]["type"], accepted["event"]["client_order_id"]) == (
        "order_accepted", "k2")
    await ws.close()


async def _kill_switch_reported(accounts: Callable[[], Any], account: str) -> bool:
    entry = (await accounts())["accounts"].get(account)
    return bool(entry and entry.get("kill_switch"))


async def next_refusal(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next refusal the session hears: an `order_rejected` (reason, message) or an
    `error` (code, message), as {code, message}."""
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            frame = orjson.loads(msg.data)
            if frame["type"] != "session_event":
                continue
            event = frame["event"]
            if event["type"] == "order_rejected":
                return {"code": event["reason"], "message": event["message"]}
            if event["type"] == "error":
                return {"code": event["code"], "message": event["message"]}
