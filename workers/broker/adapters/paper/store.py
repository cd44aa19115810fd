"""What the paper exchange's accounts hold, on disk: it survives the process.

One SQLite file (WAL) under the data dir. The venue writes to it before it tells anyone of a
change (`PaperVenue` calls `record` before delivering an operation's events), so an order
acknowledged to a Broker, a fill and the cash it moved are never lost, kill -9 included, and
a restarted exchange carries on with the same accounts, orders, fills and order numbering.

What is kept: the accounts' books (cash, fees, positions), every order they placed (working
ones rejoin the book in their time priority), every fill, and the random walk's mids; order
and fill numbering goes on after the highest kept. What is not: the venue's own synthetic
accounts (`house-*`), whose quotes and flow start afresh around the kept mids.

In memory and on disk: the store is also the engine's `Archive`. The engine keeps in memory
each account's working orders and only its newest `retain_finished_orders` finished orders and
`retain_fills` fills (`PaperConfig`); a start loads just those. The rest is read from here
when asked for, by primary key or index: an older order's state, and whether a
client_order_id was ever used (a repeat is refused as before), and the fills since a time
older than memory reaches. So memory and start-up time stay bounded however long the accounts
trade, and every answer is the one an engine holding everything would give.

Delete the file (with the exchange stopped) to start the paper accounts over.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import orjson

from protocol.market import Side
from protocol.orders import (
    Fill,
    OrderEvent,
    OrderFilled,
    OrderPartiallyFilled,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from tradefleet.service.walcheckpoint import Checkpointer
from workers.broker.adapters.paper.book import RestingOrder
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, order_number

_ORDER_EVENTS = get_args(OrderEvent)  # a tuple: isinstance over a union is slower
_FILLS = (OrderFilled, OrderPartiallyFilled)

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, state TEXT NOT NULL);
-- number: the order's number (P12 → 12); working: 1 until the order is finished.
CREATE TABLE IF NOT EXISTS orders (
    account TEXT NOT NULL,
    client_order_id TEXT NOT NULL,
    state TEXT NOT NULL,
    number INTEGER NOT NULL DEFAULT 0,
    working INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, client_order_id)
) WITHOUT ROWID;
-- ts: the fill's time, as in the fill.
CREATE TABLE IF NOT EXISTS fills (seq INTEGER PRIMARY KEY, account TEXT NOT NULL,
                                  fill TEXT NOT NULL, ts INTEGER NOT NULL DEFAULT 0);
-- The last trade and fill numbers given out, the venue's own included: public trade ids are
-- never reused. (Order numbers go on after the highest kept order's.)
CREATE TABLE IF NOT EXISTS counters (id INTEGER PRIMARY KEY CHECK (id = 1),
                                     trades INTEGER NOT NULL, fills INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mids (instrument TEXT PRIMARY KEY, ticks INTEGER NOT NULL);
"""

# Made after `_migrate`: a store written before the columns they index existed gets them first.
INDEXES = """
-- An account's working orders, and its finished ones newest first.
CREATE INDEX IF NOT EXISTS orders_by_state ON orders (account, working, number);
-- An account's fills since a time, and its newest (index entries end with the rowid, seq).
CREATE INDEX IF NOT EXISTS fills_by_time ON fills (account, ts);
"""
_ADDED_COLUMNS = {"orders": ("number", "working"), "fills": ("ts",)}


def order_state(order: RestingOrder) -> dict[str, Any]:
    return {"order_id": order.order_id, "account": order.account,
            "client_order_id": order.client_order_id, "instrument": order.instrument,
            "side": order.side.value, "order_type": order.order_type.value,
            "time_in_force": order.time_in_force.value, "qty": str(order.qty),
            "price": None if order.price is None else str(order.price),
            "status": order.status.value, "created_ts": order.created_ts,
            "filled": str(order.filled), "notional": str(order.notional),
            "queued": order.queued}


def order_from_state(state: dict[str, Any]) -> RestingOrder:
    return RestingOrder(
        order_id=state["order_id"], account=state["account"],
        client_order_id=state["client_order_id"], instrument=state["instrument"],
        side=Side(state["side"]), order_type=OrderType(state["order_type"]),
        time_in_force=TimeInForce(state["time_in_force"]), qty=Decimal(state["qty"]),
        price=None if state["price"] is None else Decimal(state["price"]),
        status=OrderStatus(state["status"]), created_ts=state["created_ts"],
        filled=Decimal(state["filled"]), notional=Decimal(state["notional"]),
        queued=state["queued"])


class PaperStore:
    """The paper exchange's durable state (module docstring). Single writer: the venue."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Every commit is in the OS's hands before `record` returns: kill -9 loses nothing.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._db.executescript(INDEXES)
        self._checkpointer = Checkpointer.take_over(self._db, path)  # never inside a write
        self._mids: dict[str, int] = {}
        self._counters = (0, 0)

    def close(self) -> None:
        self._checkpointer.stop()
        self._db.close()

    def _migrate(self) -> None:
        """Give a store written before the orders' number and working columns and the fills'
        ts column existed those columns, filled in from the state each row holds."""
        db = self._db
        if not any(self._missing_columns().values()):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            missing = self._missing_columns()  # again, now that no one else can write
            for table, columns in missing.items():
                for column in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} "
                               "INTEGER NOT NULL DEFAULT 0")
            if missing["orders"]:
                rows = []
                for account, cid, text in db.execute(
                        "SELECT account, client_order_id, state FROM orders").fetchall():
                    state = orjson.loads(text)
                    rows.append((order_number(state["order_id"]), int(_working(state)),
                                 account, cid))
                db.executemany("UPDATE orders SET number = ?, working = ? "
                               "WHERE account = ? AND client_order_id = ?", rows)
            if missing["fills"]:
                times = [(orjson.loads(fill)["ts"], seq)
                         for seq, fill in db.execute("SELECT seq, fill FROM fills").fetchall()]
                db.executemany("UPDATE fills SET ts = ? WHERE seq = ?", times)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _missing_columns(self) -> dict[str, list[str]]:
        return {table: [c for c in columns if c not in self._columns(table)]
                for table, columns in _ADDED_COLUMNS.items()}

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    # ------------------------------------------------------------ loading

    def load(self, engine: MatchingEngine) -> dict[str, int]:
        """Put into a fresh `engine`, whose archive this store is, the stored accounts and
        counters and what the engine keeps in memory of each account: its working orders, its
        newest finished orders and its newest fills (`retain_finished_orders`,
        `retain_fills`). Return the stored mids (in ticks) for the market to walk on from."""
        if engine.archive is not self:
            raise ValueError("load into an engine whose archive is this store")
        db = self._db
        orders: list[RestingOrder] = []
        fills: dict[str, list[Fill]] = {}
        archived_orders: list[str] = []
        archived_fills: dict[str, int] = {}
        number = 0
        for account, state in db.execute("SELECT account, state FROM accounts").fetchall():
            if not engine.ledger.has_account(account):
                engine.open_account(account)
            engine.ledger.restore(account, orjson.loads(state))
            # (Without the hint SQLite may read all the account's orders by primary key.)
            orders += [order_from_state(orjson.loads(state)) for (state,) in db.execute(
                "SELECT state FROM orders INDEXED BY orders_by_state "
                "WHERE account = ? AND working = 1", (account,))]
            # The newest finished orders by number, one more to learn whether there are more.
            finished = db.execute(
                "SELECT state FROM orders WHERE account = ? AND working = 0 "
                "ORDER BY number DESC LIMIT ?",
                (account, engine.retain_finished_orders + 1)).fetchall()
            if len(finished) > engine.retain_finished_orders:
                archived_orders.append(account)
                finished.pop()
            orders += [order_from_state(orjson.loads(state)) for (state,) in reversed(finished)]
            # The newest fills by time (then seq), and the time of the newest one left out.
            rows = db.execute(
                "SELECT seq, ts, fill FROM fills WHERE account = ? "
                "ORDER BY ts DESC, seq DESC LIMIT ?",
                (account, engine.retain_fills + 1)).fetchall()
            if len(rows) > engine.retain_fills:
                archived_fills[account] = rows.pop()[1]
            rows.sort()  # by seq: in the order they happened
            fills[account] = [Fill.model_validate_json(fill) for _, _, fill in rows]
            # Of every order of the account, loaded or not.
            for working in (0, 1):
                (highest,) = db.execute(
                    "SELECT MAX(number) FROM orders WHERE account = ? AND working = ?",
                    (account, working)).fetchone()
                number = max(number, highest or 0)
        # Order numbers go on after the highest stored order's: numbers only the venue's own
        # orders had may come again, but none of those orders outlived the process.
        row = db.execute("SELECT trades, fills FROM counters").fetchone()
        self._counters = (row[0], row[1]) if row is not None else (0, 0)
        engine.restore(orders, fills, (number, *self._counters),
                       archived_orders=archived_orders, archived_fills=archived_fills)
        self._mids = dict(db.execute("SELECT instrument, ticks FROM mids").fetchall())
        return dict(self._mids)

    # ------------------------------------------------------------ the engine's archive

    def has_order(self, account: str, client_order_id: str) -> bool:
        """Whether `account` ever placed an order with this client_order_id."""
        return self._db.execute(
            "SELECT 1 FROM orders WHERE account = ? AND client_order_id = ?",
            (account, client_order_id)).fetchone() is not None

    def order(self, account: str, client_order_id: str) -> RestingOrder | None:
        """The order's last stored state, or None if there never was one."""
        row = self._db.execute(
            "SELECT state FROM orders WHERE account = ? AND client_order_id = ?",
            (account, client_order_id)).fetchone()
        return None if row is None else order_from_state(orjson.loads(row[0]))

    def fills(self, account: str, since_ts: int, offset: int = 0, limit: int | None = None
              ) -> list[Fill]:
        """Fills of `account` with ts >= since_ts, in the order they happened: `limit` of them
        (all for None) from the `offset`th on."""
        return [Fill.model_validate_json(fill) for (fill,) in self._db.execute(
            "SELECT fill FROM fills WHERE account = ? AND ts >= ? ORDER BY seq LIMIT ? OFFSET ?",
            (account, since_ts, -1 if limit is None else limit, offset))]

    # ------------------------------------------------------------ recording

    def open_account(self, engine: MatchingEngine, account: str) -> None:
        """Store a newly opened account."""
        self._db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)",
                         (account, orjson.dumps(engine.ledger.state(account)).decode()))

    def record(self, engine: MatchingEngine, events: Iterable[EngineEvent],
               mids: dict[str, int] | None = None) -> None:
        """Store, in one transaction, what one engine operation changed for the accounts
        that are not the venue's own: every order an event names, every fill, the books of
        every account that traded, the trade and fill counters and `mids` when they moved.
        Then the engine may let go of what it no longer keeps in memory (`archived`)."""
        orders: dict[tuple[str, str], RestingOrder] = {}
        fills: list[Fill] = []
        for event in events:
            if not isinstance(event, _ORDER_EVENTS) or engine.is_quiet(event.account):
                continue
            order = engine.resting(event.account, event.client_order_id)
            if order is not None:
                orders[(order.account, order.client_order_id)] = order
            if isinstance(event, _FILLS):
                fills.append(event.fill)
        moved = {k: v for k, v in (mids or {}).items() if self._mids.get(k) != v}
        _, trades, fill_count = engine.ids()
        counters = (trades, fill_count)
        if not fills and not moved and counters == self._counters and len(orders) <= 1:
            # An order placed, cancelled or modified without trading: one statement is its
            # own transaction (half the cost of BEGIN ... COMMIT around it).
            for order in orders.values():
                self._db.execute(_WRITE_ORDER, _order_row(order))
            engine.archived()
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for order in orders.values():
                db.execute(_WRITE_ORDER, _order_row(order))
            for fill in fills:
                db.execute("INSERT INTO fills (account, fill, ts) VALUES (?, ?, ?)",
                           (fill.account, fill.model_dump_json(), fill.ts))
            for account in {fill.account for fill in fills}:
                db.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?)",
                           (account, orjson.dumps(engine.ledger.state(account)).decode()))
            if counters != self._counters:
                db.execute("INSERT OR REPLACE INTO counters VALUES (1, ?, ?)", counters)
            for instrument, ticks in moved.items():
                db.execute("INSERT OR REPLACE INTO mids VALUES (?, ?)", (instrument, ticks))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._mids.update(moved)
        self._counters = counters
        engine.archived()


_WRITE_ORDER = ("INSERT OR REPLACE INTO orders (account, client_order_id, state, number, working)"
                " VALUES (?, ?, ?, ?, ?)")


def _order_row(order: RestingOrder) -> tuple[str, str, str, int, int]:
    return (order.account, order.client_order_id, orjson.dumps(order_state(order)).decode(),
            order_number(order.order_id), int(not order.status.is_terminal))


def _working(state: dict[str, Any]) -> bool:
    """Whether a stored order (its `order_state`) can still trade."""
    return not OrderStatus(state["status"]).is_terminal

