"""The paper exchange's accounts are durable: a venue built on the same store after the process
died (nothing closed, as after kill -9) holds the same books, orders, fills and numbering, and
its resting orders keep their time priority."""

from __future__ import annotations

import itertools
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from protocol.orders import NewOrder, OrderFilled, OrderStatus
from workers.broker.adapters.paper import book
from workers.broker.adapters.paper.adapter import PaperVenue
from workers.broker.adapters.paper.config import PaperConfig, PaperInstrument
from workers.broker.adapters.paper.engine import OrderRefused
from workers.broker.adapters.paper.store import PaperStore

pytestmark = pytest.mark.timeout(20)

D = Decimal
CONFIG = PaperConfig(
    instruments=[PaperInstrument(instrument="BTC/USD", tick_size="0.5", lot_size="0.01",
                                 initial_price="30000")],
    step_interval_s=3600,
    maker_fee_bps="10",
    taker_fee_bps="20",
)
USERS = ("alice", "bob", "carol")


def limit(account: str, cid: str, side: str, qty: str, price: str, tif: str = "GTC"
          ) -> NewOrder:
    return NewOrder(client_order_id=cid, account=account, instrument="BTC/USD", side=side,
                    qty=D(qty), price=D(price), time_in_force=tif)


def venue_on(path: Path) -> PaperVenue:
    venue = PaperVenue(CONFIG, store=PaperStore(path))
    for account in USERS:
        venue.ensure_account(account)
    return venue


def state(venue: PaperVenue) -> dict[str, object]:
    engine = venue.engine

    def orders(account: str) -> list[object]:
        # A snapshot's ts is when it was taken: all else must be the same.
        return [o.model_dump(exclude={"ts"}) for o in engine.open_orders(account)] + [
            None if o is None else o.model_dump(exclude={"ts"})
            for o in (engine.order(account, c) for c in ("a1", "a2", "b1", "c1", "c2"))]

    return {
        account: (engine.ledger.state(account), orders(account), engine.fills(account))
        for account in USERS
    } | {"trades and fills": engine.ids()[1:], "mid": venue.mid("BTC/USD")}


def trade(venue: PaperVenue) -> None:
    venue.submit(limit("alice", "a1", "buy", "1", "29000"))  # first in the queue at 29000
    venue.submit(limit("bob", "b1", "buy", "2", "29000"))  # behind it
    venue.submit(limit("alice", "a2", "sell", "1", "31000"))
    venue.submit(limit("carol", "c1", "buy", "0.4", "31000"))  # takes 0.4 of a2
    venue.cancel("alice", "a2")
    venue.step()  # the walk moves: its mid is kept too


def test_a_new_process_on_the_store_holds_what_the_last_one_held(tmp_path: Path) -> None:
    path = tmp_path / "paper" / "exchange.sqlite"
    first = venue_on(path)
    trade(first)
    before = state(first)
    assert first.engine.fills("carol") and first.engine.fills("alice")
    second = venue_on(path)  # the first was never closed: as after kill -9
    assert state(second) == before
    assert second.engine.ledger.state("carol")["positions"]["BTC/USD"][0] == "0.4"


def test_restored_orders_keep_their_time_priority_and_ids_are_not_reused(
        tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite"
    first = venue_on(path)
    trade(first)
    second = venue_on(path)
    # A sell at 29000 meets alice's a1 before bob's b1, which joined the queue later.
    events = second.submit(limit("carol", "c2", "sell", "1.5", "29000", tif="IOC"))
    fills = [e.fill for e in events if hasattr(e, "fill")]
    makers = [(f.account, f.qty) for f in fills if f.account != "carol"]
    assert makers == [("alice", D(1)), ("bob", D("0.5"))]
    a1 = second.engine.order("alice", "a1")
    assert a1 is not None and a1.status is OrderStatus.FILLED
    used = {o.order_id for a in USERS for o in first.engine.open_orders(a)} | {
        "P1", "P2", "P3", "P4"}
    assert second.engine.order("carol", "c2").order_id not in used  # type: ignore[union-attr]
    # A client_order_id used before the restart is still used.
    with pytest.raises(OrderRefused) as refused:
        second.submit(limit("alice", "a2", "sell", "1", "31000"))
    assert refused.value.code is ErrorCode.DUPLICATE_ORDER
    # And what the second venue did is stored in turn.
    third = venue_on(path)
    assert state(third) == state(second)


def test_working_orders_are_listed_in_the_order_placed_after_a_restart_too(
        tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite"
    first = venue_on(path)
    first.submit(limit("alice", "a1", "buy", "1", "29000"))
    first.submit(limit("alice", "a2", "buy", "1", "29000"))
    first.modify("alice", "a1", D(2), None)  # a larger qty: a1 goes behind a2 in the queue
    second = venue_on(path)
    for venue in (first, second):
        assert [o.client_order_id for o in venue.engine.open_orders("alice")] == ["a1", "a2"]
    events = second.submit(limit("bob", "b1", "sell", "1", "29000", tif="IOC"))
    assert [e.client_order_id for e in events
            if isinstance(e, OrderFilled) and e.account == "alice"] == ["a2"]


def test_time_priority_survives_restarts_of_processes_that_count_queue_places_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "exchange.sqlite"
    monkeypatch.setattr(book, "_QUEUED", itertools.count(1000))  # a process that ran a while
    first = venue_on(path)
    first.submit(limit("alice", "a1", "buy", "1", "29000"))
    monkeypatch.setattr(book, "_QUEUED", itertools.count(1))  # each new process starts at 1
    second = venue_on(path)
    second.submit(limit("bob", "b1", "buy", "1", "29000"))  # behind a1
    monkeypatch.setattr(book, "_QUEUED", itertools.count(1))
    third = venue_on(path)
    events = third.submit(limit("carol", "c1", "sell", "1", "29000", tif="IOC"))
    assert [e.account for e in events if isinstance(e, OrderFilled)] == ["alice", "carol"]


def test_the_venues_own_accounts_are_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite"
    first = venue_on(path)
    for _ in range(3):
        first.step()  # house quotes and house trades
    second = PaperVenue(CONFIG, store=PaperStore(path))
    stored = second.engine.ledger.accounts()
    assert sorted(a for a in stored if not second.engine.is_quiet(a)) == sorted(USERS)
    assert second.engine.book("BTC/USD").bids == []  # house quotes start afresh on the first step
    assert second.mid("BTC/USD") == first.mid("BTC/USD")


def test_a_store_written_before_the_indexed_columns_existed_opens_the_same(
        tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite"
    store = PaperStore(path)
    first = PaperVenue(CONFIG, store=store)
    for account in USERS:
        first.ensure_account(account)
    trade(first)
    before = state(first)
    store.close()
    derived = ("SELECT account, client_order_id, number, working FROM orders",
               "SELECT seq, ts FROM fills")
    db = sqlite3.connect(path)
    written = [db.execute(query).fetchall() for query in derived]
    assert written[0] and written[1]
    # The layout of the first stores: no order number, working flag or fill time columns.
    db.executescript("""
        DROP INDEX orders_by_state; DROP INDEX fills_by_time;
        ALTER TABLE orders DROP COLUMN number; ALTER TABLE orders DROP COLUMN working;
        ALTER TABLE fills DROP COLUMN ts;
    """)
    db.close()
    second = venue_on(path)
    assert state(second) == before
    db = sqlite3.connect(path)
    assert [db.execute(query).fetchall() for query in derived] == written
    db.close()
    # a1 still rests first in the queue at 29000.
    events = second.submit(limit("carol", "c2", "sell", "1", "29000", tif="IOC"))
    assert [e.fill.account for e in events if hasattr(e, "fill")] == ["alice", "carol"]
