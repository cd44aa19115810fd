"""The account owner's routing logic, over the in-process paper exchange. No sockets.

The paper venue outlives the owners in these tests, like a real exchange outlives a Broker
worker: a second owner (a higher epoch) takes over the same journal and the same venue.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.errors import ErrorCode
from protocol.market import BookSnapshot, Channel, MarketEvent, Ticker
from protocol.orders import NewOrder
from protocol.risk import RiskLimits
from workers.broker import journal as journal_module
from workers.broker import owner as owner_module
from workers.broker.adapters.base import (
    ConnectionChanged,
    OrderAck,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.paper.adapter import PaperAdapter, PaperVenue
from workers.broker.adapters.paper.config import PaperConfig, PaperInstrument
from workers.broker.owner import AccountOwner, OwnerError, OwnerState
from workers.broker.risk import manager as risk
from workers.broker.risk.records import KillScope
from workers.broker.snapshots import read_snapshot, snapshot_path, state_of, write_snapshot
from workers.broker.streams import StreamKey

D = Decimal
CONFIG = PaperConfig(
    instruments=[PaperInstrument(instrument="BTC/USD", tick_size="0.5", lot_size="0.01",
                                 initial_price="30000")],
    step_interval_s=3600,
    maker_fee_bps="0",
    taker_fee_bps="0",
)
WAIT_S = 5.0


class Outbox:
    """Records what the owner sends towards Market workers."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.market_events: list[MarketEvent] = []
        self.resyncs: list[str] = []
        self.stops: list[str] = []
        self._changed = asyncio.Event()

    def to_session(self, session_id: str, frame: bytes) -> None:
        message = orjson.loads(frame)
        assert message["type"] == "session_event" and message["session_id"] == session_id
        self.frames.append(message)
        self._changed.set()

    def market(self, event: MarketEvent) -> None:
        self.market_events.append(event)
        self._changed.set()

    def resync(self, reason: str) -> None:
        self.resyncs.append(reason)
        self._changed.set()

    def stopped(self, reason: str) -> None:
        self.stops.append(reason)
        self._changed.set()

    def events(self, session_id: str = "s1") -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f["session_id"] == session_id]

    def order_events(self, session_id: str = "s1") -> list[dict[str, Any]]:
        return [e for e in self.events(session_id) if "seq" in e]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT_S)


class TestAdapter(PaperAdapter):
    """A paper session whose connection can be dropped and restored, and whose next place
    calls can be made to fail or hang."""

    __test__ = False

    def __init__(self, account: str, venue: PaperVenue) -> None:
        super().__init__(account=account, venue=venue)
        self.place_failures: list[Exception] = []
        self.hang_places = False
        self.placed: list[str] = []
        self.before_place: Callable[[NewOrder], None] | None = None

    async def place_order(self, request: NewOrder) -> OrderAck:
        if self.before_place is not None:
            self.before_place(request)
        if self.hang_places:
            await asyncio.Event().wait()
        if self.place_failures:
            raise self.place_failures.pop(0)
        self.placed.append(request.client_order_id)
        return await super().place_order(request)

    def drop(self) -> None:
        """The venue connection breaks: events stop until `restore()`."""
        self.paper_venue.detach(self)
        self._push(ConnectionChanged(False, "test drop", 0))

    def restore(self) -> None:
        self.paper_venue.attach(self)
        self._push(ConnectionChanged(True, "test restore", 0))


@pytest.fixture
def venue() -> PaperVenue:
    return PaperVenue(CONFIG)


@pytest.fixture
async def counterparty(venue: PaperVenue) -> AsyncIterator[PaperAdapter]:
    other = PaperAdapter(account="other", venue=venue)
    await other.connect()
    yield other
    await other.close()


class Owners:
    """Builds owners of account `acct` on one journal and one venue."""

    def __init__(self, path: Path, venue: PaperVenue) -> None:
        self.path = path
        self.venue = venue
        self.adapters: list[TestAdapter] = []
        self.owners: list[AccountOwner] = []

    def adapter(self, account: str) -> TestAdapter:
        adapter = TestAdapter(account, self.venue)
        self.adapters.append(adapter)
        return adapter

    async def open(self, epoch: int, **kwargs: Any) -> tuple[AccountOwner, Outbox]:
        outbox = Outbox()
        owner = AccountOwner(account="acct", journal_path=self.path, worker_id=f"w{epoch}",
                             epoch=epoch, adapter_factory=self.adapter, outbox=outbox, **kwargs)
        self.owners.append(owner)
        await owner.open()
        return owner, outbox

    def snapshot(self) -> tuple[int, dict[str, Any]] | None:
        return read_snapshot(snapshot_path(self.path))

    def rows(self) -> list[tuple[str, str | None, int, dict[str, Any]]]:
        """The journal's entries with their own seq (where `journal()` gives session seqs)."""
        with sqlite3.connect(self.path) as db:
            rows = db.execute("SELECT kind, session_id, seq, payload FROM entries "
                              "ORDER BY seq").fetchall()
        return [(k, s, q, orjson.loads(p)) for k, s, q, p in rows]

    def journal(self) -> list[tuple[str, str | None, int | None, dict[str, Any]]]:
        with sqlite3.connect(self.path) as db:
            rows = db.execute("SELECT kind, session_id, session_seq, payload FROM entries "
                              "ORDER BY seq").fetchall()
        return [(k, s, q, orjson.loads(p)) for k, s, q, p in rows]


@pytest.fixture
async def owners(tmp_path: Path, venue: PaperVenue) -> AsyncIterator[Owners]:
    made = Owners(tmp_path / "journal" / "acct.sqlite", venue)
    yield made
    for owner in made.owners:
        await owner.close()


def new_order(cid: str, side: str = "sell", qty: str = "1", price: str | None = "30000",
              **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "new_order", "client_order_id": cid, "account": "acct",
                           "instrument": "BTC/USD", "side": side, "qty": qty}
    if price is None:
        msg["order_type"] = "market"
    else:
        msg["price"] = price
    msg.update(extra)
    return msg


def cross(cid: str, side: str = "buy", qty: str = "0.4", price: str = "30000") -> NewOrder:
    return NewOrder(client_order_id=cid, account="other", instrument="BTC/USD", side=side,
                    qty=D(qty), price=D(price))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def state_now(owner: AccountOwner) -> OwnerState:
    """The owner's state, read afresh (mypy would keep an earlier assert's narrowing)."""
    return owner.state


# ---------------------------------------------------------------- orders


async def test_orders_are_journaled_before_the_venue_hears_of_them(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    seen: list[list[str]] = []
    owners.adapters[0].before_place = lambda r: seen.append(
        [p["msg"]["client_order_id"] for k, _, _, p in owners.journal() if k == "request"])
    await owner.route("s1", "cust", new_order("c1"))
    assert seen == [["c1"]]
    await outbox.wait_for(lambda: types(outbox.order_events()) == ["order_accepted"])


async def test_place_fill_modify_cancel_with_contiguous_seq(
        owners: Owners, counterparty: PaperAdapter) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", new_order("c1", qty="1"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 1)
    await counterparty.place_order(cross("x1", qty="0.4"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 2)
    await owner.route("s1", "cust", {"type": "modify_order", "client_order_id": "c1",
                                     "account": "acct", "qty": "2"})
    await outbox.wait_for(lambda: len(outbox.order_events()) == 3)
    await owner.route("s1", "cust", {"type": "cancel_order", "client_order_id": "c1",
                                     "account": "acct"})
    await outbox.wait_for(lambda: len(outbox.order_events()) == 4)
    events = outbox.order_events()
    assert types(events) == ["order_accepted", "order_partially_filled", "order_modified",
                             "order_cancelled"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[1]["fill"]["qty"] == "0.4" and events[2]["qty"] == "2"
    assert events[3]["filled_qty"] == "0.4" and events[3]["reason"] == "requested"
    # The journal holds the same events under the same seqs.
    journaled = [(q, p["type"]) for k, s, q, p in owners.journal() if k == "event"]
    assert journaled == [(e["seq"], e["type"]) for e in events]
    assert owner.info()["positions"] == {"BTC/USD": "-0.4"}


async def test_a_repeated_client_order_id_creates_one_order(owners: Owners,
                                                            venue: PaperVenue) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", new_order("c1"))
    await owner.route("s1", "cust", new_order("c1", qty="5"))
    assert len(venue.engine.open_orders("acct")) == 1
    answers = [e for e in outbox.events() if e["type"] == "order_snapshot"]
    assert len(answers) == 1 and "seq" not in answers[0] and answers[0]["qty"] == "1"


@pytest.mark.parametrize(
    ("msg", "code", "field"),
    [
        (new_order("c1", qty="-1"), "invalid_field", "qty"),
        (new_order("c1", qty=0.5), "invalid_field", "qty"),  # type: ignore[arg-type]
        ({k: v for k, v in new_order("c1").items() if k != "side"}, "missing_field", "side"),
        (new_order("c1", colour="red"), "unknown_field", "colour"),
        (new_order("c1", price="30000.25"), "price_off_tick", "price"),
        (new_order("c1", qty="0.015"), "qty_off_lot", "qty"),
        (new_order("c1", instrument="DOGE/USD"), "unknown_instrument", "instrument"),
        (new_order("c1", account="someone-else"), "forbidden", "account"),
        ({"type": "warp_drive"}, "unknown_type", "type"),
        ({"type": "subscribe", "instrument": "BTC/USD", "channel": "ticker"},
         "unknown_type", "type"),
    ],
)
async def test_bad_requests_get_coded_errors_and_journal_nothing(
        owners: Owners, msg: dict[str, Any], code: str, field: str) -> None:
    owner, outbox = await owners.open(1)
    before = len(owners.journal())
    await owner.route("s1", "cust", msg)
    (error,) = outbox.events()
    assert (error["type"], error["code"], error.get("field")) == ("error", code, field)
    assert len(owners.journal()) == before
    # The client_order_id is still free for the corrected order.
    await owner.route("s1", "cust", new_order("c1"))
    await outbox.wait_for(lambda: types(outbox.order_events()) == ["order_accepted"])


async def test_impossible_actions_are_refused_with_a_code(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", {"type": "cancel_order", "client_order_id": "nope",
                                     "account": "acct"})
    await owner.route("s1", "cust", new_order("m1", side="buy", price=None, qty="1"))
    await outbox.wait_for(lambda: any(e["type"] == "order_cancelled"
                                      for e in outbox.order_events()))
    await owner.route("s1", "cust", {"type": "cancel_order", "client_order_id": "m1",
                                     "account": "acct"})
    codes = [e["code"] for e in outbox.events() if e["type"] == "error"]
    assert codes == ["order_not_found"]
    # Cancelling what is already cancelled is answered with the order's state (a cancel
    # re-sent after a failover must not read as a failure).
    answer = next(e for e in outbox.events() if e["type"] == "order_snapshot")
    assert (answer["client_order_id"], answer["status"]) == ("m1", "cancelled")


async def test_a_venue_refusal_becomes_a_journaled_rejection(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    owners.adapters[0].place_failures.append(
        OrderRejectedError(ErrorCode.INVALID_ORDER, "insufficient funds"))
    await owner.route("s1", "cust", new_order("c1"))
    (event,) = outbox.order_events()
    assert (event["type"], event["reason"], event["seq"]) == ("order_rejected",
                                                             "invalid_order", 1)
    assert [k for k, *_ in owners.journal()][-2:] == ["request", "event"]


async def test_transient_venue_failures_are_retried(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    owners.adapters[0].place_failures.append(RetryableAdapterError("blip"))
    await owner.route("s1", "cust", new_order("c1"))
    await outbox.wait_for(lambda: types(outbox.order_events()) == ["order_accepted"])
    assert owners.adapters[0].placed == ["c1"]


async def test_an_unreachable_venue_leaves_the_order_pending_and_says_so(
        owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    owners.adapters[0].place_failures.extend(RetryableAdapterError("down") for _ in range(3))
    await owner.route("s1", "cust", new_order("c1"))
    (error,) = outbox.events()
    assert (error["code"], error["client_order_id"]) == ("unavailable", "c1")
    assert owner.book.tracker.status("c1") == "pending"


async def test_customers_never_see_or_touch_each_others_orders(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "alice", new_order("c1"))
    await owner.route("s2", "bob", {"type": "cancel_order", "client_order_id": "c1",
                                    "account": "acct"})
    await owner.route("s2", "bob", new_order("c1"))
    await owner.route("s2", "bob", {"type": "get_open_orders", "account": "acct", "ref": "r"})
    await owner.route("s1", "alice", {"type": "get_open_orders", "account": "acct"})
    bob = outbox.events("s2")
    assert [(e["type"], e.get("code")) for e in bob] == [
        ("error", "order_not_found"), ("error", "duplicate_order"), ("open_orders", None)]
    assert bob[2]["orders"] == [] and bob[2]["ref"] == "r"
    alice_open = [e for e in outbox.events("s1") if e["type"] == "open_orders"]
    assert [o["client_order_id"] for o in alice_open[0]["orders"]] == ["c1"]
    assert owner.book.tracker.status("c1") != "cancelled"


async def test_a_session_can_ask_for_its_own_orders_also_after_a_new_owner(
        owners: Owners) -> None:
    # What a restarted algo resuming its session asks for: the orders that session placed,
    # not the other sessions' of the same customer; known to a new owner too (journaled).
    first, _ = await owners.open(1)
    await first.route("s1", "alice", new_order("mine", price="31000"))
    await first.route("s2", "alice", new_order("other-session", price="31001"))
    await first.route("s3", "bob", new_order("other-customer", price="31002"))
    owner, outbox = await owners.open(2)
    await owner.route("s1", "alice", {"type": "get_open_orders", "account": "acct",
                                      "session_only": True, "ref": "mine"})
    await owner.route("s1", "alice", {"type": "get_open_orders", "account": "acct",
                                      "ref": "all"})
    answers = {e["ref"]: [o["client_order_id"] for o in e["orders"]]
               for e in outbox.events("s1") if e["type"] == "open_orders"}
    assert answers == {"mine": ["mine"], "all": ["mine", "other-session"]}


async def test_positions_and_balances_come_from_the_venue(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", {"type": "get_positions", "account": "acct", "ref": "p"})
    positions, balances = outbox.events()
    assert (positions["type"], positions["ref"]) == ("positions", "p")
    assert (balances["type"], balances["cash"]) == ("balances", {"USD": "100000"})


async def test_replay_after_n_returns_exactly_the_rest(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    for i in range(4):
        await owner.route("s1", "cust", new_order(f"c{i}"))
    await owner.route("s2", "cust", new_order("other-session"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 4)
    replayed = orjson.loads(owner.replay("s1", 2))
    assert replayed["type"] == "replayed" and replayed["last_seq"] == 4
    assert [(e["seq"], e["client_order_id"]) for e in replayed["events"]] == [(3, "c2"),
                                                                             (4, "c3")]
    assert replayed["events"] == outbox.order_events()[2:]
    assert orjson.loads(owner.replay("s1", 4))["events"] == []
    assert orjson.loads(owner.replay("unknown", 0)) == {
        "type": "replayed", "session_id": "unknown", "events": [], "last_seq": 0}


async def test_market_data_flows_to_the_outbox(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    await owner.subscribe(StreamKey("BTC/USD", Channel.BOOK), 5)
    await outbox.wait_for(lambda: bool(outbox.market_events))
    assert isinstance(outbox.market_events[0], BookSnapshot)


# ---------------------------------------------------------------- ownership and recovery


async def test_a_new_owner_rebuilds_continues_the_seq_and_fences_the_old(
        owners: Owners, venue: PaperVenue) -> None:
    first, first_out = await owners.open(1)
    await first.route("s1", "cust", new_order("c1"))
    await first_out.wait_for(lambda: len(first_out.order_events()) == 1)

    second, second_out = await owners.open(2)
    assert [o.client_order_id for o in second.book.open_orders()] == ["c1"]
    assert second.info()["orders"] == 1
    await second.route("s1", "cust", new_order("c1"))  # idempotent across owners
    assert [e["type"] for e in second_out.events()] == ["order_snapshot"]
    await second.route("s1", "cust", {"type": "cancel_order", "client_order_id": "c1",
                                      "account": "acct"})
    await second_out.wait_for(lambda: len(second_out.order_events()) == 1)
    assert second_out.order_events()[0]["seq"] == 2

    # The old owner acts no more: its next request stops it before the venue hears of it.
    await first.route("s1", "cust", new_order("zombie"))
    assert first.state is OwnerState.FENCED and first_out.stops
    assert venue.engine.order("acct", "zombie") is None
    assert "zombie" not in owners.adapters[0].placed


async def test_finished_orders_past_the_limit_keep_only_their_ids_across_owners(
        owners: Owners, venue: PaperVenue) -> None:
    first, first_out = await owners.open(1, retain_finished=2)
    await first.route("s1", "cust", new_order("open"))
    for cid in ("c1", "c2", "c3"):
        await first.route("s1", "cust", new_order(cid, price="31000"))
        await first.route("s1", "cust", {"type": "cancel_order", "client_order_id": cid,
                                         "account": "acct"})
    await first_out.wait_for(lambda: types(first_out.order_events()).count(
        "order_cancelled") == 3)

    async def check(owner: AccountOwner, outbox: Outbox) -> None:
        assert owner.info()["orders"] == 4  # the forgotten order still counts
        assert [o.client_order_id for o in owner.book.open_orders()] == ["open"]
        assert owner.book.tracker.get("c1") is None and owner.book.tracker.get("c3")
        before = len(outbox.events("s1"))
        # A repeat gets the order's state, kept (c3) or from the journal (c1) alike ...
        await owner.route("s1", "cust", new_order("c1", price="31000"))
        await owner.route("s1", "cust", new_order("c3", price="31000"))
        # ... but another customer learns nothing of it, as of any order of another.
        await owner.route("s2", "intruder", new_order("c1", price="31000"))
        answers = outbox.events("s1")[before:]
        assert [(e["type"], e["client_order_id"], e["status"]) for e in answers] == [
            ("order_snapshot", "c1", "cancelled"), ("order_snapshot", "c3", "cancelled")]
        assert answers[0]["qty"] == "1" and answers[0]["price"] == "31000"
        assert "seq" not in answers[0]
        assert [(e["type"], e["code"]) for e in outbox.events("s2")] == [
            ("error", "duplicate_order")]
        assert "cancelled" not in orjson.dumps(outbox.events("s2")).decode()

    await check(first, first_out)
    second, second_out = await owners.open(2, retain_finished=2)  # rebuilt from the journal
    await check(second, second_out)
    # The venue saw one order per id, never a second c1.
    assert [o.client_order_id for o in venue.engine.open_orders("acct")] == ["open"]
    assert sum(1 for k, _, _, p in owners.journal()
               if k == "request" and p["msg"]["client_order_id"] == "c1") == 2  # new + cancel


async def test_a_long_forgotten_order_is_answered_to_its_customer_however_many_sessions_since(
        owners: Owners, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner keeps the customers of recent sessions only; an older session's customer is
    read back from the journal, in this owner and the next."""
    monkeypatch.setattr(journal_module, "SESSION_CACHE", 2)
    first, first_out = await owners.open(1, retain_finished=1)
    for n, (session, customer) in enumerate([("s1", "cust")] + [
            (f"t{i}", "other") for i in range(4)]):
        await first.route(session, customer, new_order(f"c{n}", price="31000"))
        await first.route(session, customer, {"type": "cancel_order", "client_order_id":
                                              f"c{n}", "account": "acct"})
        def cancelled(s: str = session) -> bool:
            return "order_cancelled" in types(first_out.order_events(s))

        await first_out.wait_for(cancelled)

    async def check(owner: AccountOwner, outbox: Outbox) -> None:
        assert owner._journal is not None and "s1" not in owner._journal._customers
        assert owner.book.tracker.forgotten("c0")
        await owner.route("s1", "cust", new_order("c0", price="31000"))
        await owner.route("t0", "other", new_order("c0", price="31000"))
        assert [(e["type"], e.get("status")) for e in outbox.events("s1")][-1] == (
            "order_snapshot", "cancelled")
        assert [(e["type"], e.get("code")) for e in outbox.events("t0")][-1] == (
            "error", "duplicate_order")
        assert len(owner._journal._customers) <= 2

    await check(first, first_out)
    second, second_out = await owners.open(2, retain_finished=1)
    await second.route("t3", "other", new_order("late", price="31000"))  # s1 out of mind
    await check(second, second_out)


async def test_a_snapshot_from_before_the_journal_kept_sessions_hands_them_on(
        owners: Owners) -> None:
    """A journal and snapshot of the earlier format (the session map in the snapshot, no
    table): the next owner stores the map in the journal, and answers from it."""
    first, out = await owners.open(1, retain_finished=1, snapshot_after_entries=10**9)
    for cid in ("c1", "c2"):
        await first.route("s1", "cust", new_order(cid, price="31000"))
        await first.route("s1", "cust", {"type": "cancel_order", "client_order_id": cid,
                                         "account": "acct"})
    await out.wait_for(lambda: types(out.order_events()).count("order_cancelled") == 2)
    assert first.risk is not None
    last = max(seq for _, _, seq, _ in owners.rows())
    state = state_of(first._snapshot_config(), first.book, first.risk)
    await first.close()
    with sqlite3.connect(owners.path) as db:
        db.execute("DROP TABLE sessions")
    write_snapshot(snapshot_path(owners.path), last, 1, {**state, "customers": {"s1": "cust"}},
                   lambda: True)

    second, second_out = await owners.open(2, retain_finished=1)
    assert second.rebuilt["snapshot_seq"] == last
    with sqlite3.connect(owners.path) as db:
        assert db.execute("SELECT * FROM sessions").fetchall() == [("s1", "cust")]
    await second.route("s1", "cust", new_order("c1", price="31000"))
    await second.route("s2", "intruder", new_order("c1", price="31000"))
    assert [(e["type"], e["status"]) for e in second_out.events("s1")] == [
        ("order_snapshot", "cancelled")]
    assert [e["code"] for e in second_out.events("s2")] == ["duplicate_order"]


async def trade_a_little(owner: AccountOwner, out: Outbox, counterparty: PaperAdapter,
                         cancelled: tuple[str, ...]) -> None:
    """An order left resting, orders placed and cancelled, one sold to the counterparty."""
    await owner.route("s1", "cust", new_order("rest", price="31000"))
    for cid in cancelled:
        await owner.route("s1", "cust", new_order(cid, price="32000"))
        await owner.route("s1", "cust", {"type": "cancel_order", "client_order_id": cid,
                                         "account": "acct"})
    await owner.route("s1", "cust", new_order("sold", qty="0.5", price="30000"))
    await counterparty.place_order(cross("x1", qty="0.5"))
    await out.wait_for(lambda: "order_filled" in types(out.order_events()))


async def test_a_new_owner_starts_from_the_last_snapshot_and_ends_where_a_full_replay_ends(
        owners: Owners, venue: PaperVenue, counterparty: PaperAdapter) -> None:
    first, out = await owners.open(1, retain_finished=2)
    await trade_a_little(first, out, counterparty, ("c1", "c2", "c3"))

    # The second owner replays everything and, past the threshold, stores a snapshot.
    second, _ = await owners.open(2, retain_finished=2, snapshot_after_entries=1)
    stored = owners.snapshot()
    claimed = [seq for kind, _, seq, p in owners.rows() if kind == "owner" and p["epoch"] == 2]
    assert stored is not None and [stored[0]] == claimed  # as of the second owner's claim
    await second.route("s1", "cust", new_order("after", price="33000"))
    # The third starts from it and replays only what came after ...
    third, _ = await owners.open(3, retain_finished=2, snapshot_after_entries=10**9)
    assert third.rebuilt["snapshot_seq"] == stored[0]
    assert 0 < third.rebuilt["replayed"] < stored[0]
    assert owners.snapshot() == stored  # nothing new written below the threshold
    # ... and ends where a replay of the whole journal ends.
    snapshot_path(owners.path).unlink()
    whole, _ = await owners.open(4, retain_finished=2, snapshot_after_entries=10**9)
    assert whole.rebuilt["snapshot_seq"] == 0
    for owner in (third, whole):
        assert owner.state is OwnerState.READY
    assert third.book.snapshot() == whole.book.snapshot()
    assert third.risk is not None and whole.risk is not None
    assert third.risk.snapshot() == whole.risk.snapshot()
    assert third.info()["positions"] == {"BTC/USD": "-0.5"} and third.info()["orders"] == 6
    assert third.book.tracker.forgotten("c1")


async def test_a_running_owner_has_a_side_process_store_snapshots_a_takeover_starts_from(
        owners: Owners, venue: PaperVenue, counterparty: PaperAdapter) -> None:
    first, out = await owners.open(1, retain_finished=2, snapshot_after_entries=12)
    assert first.rebuilt == {"snapshot_seq": 0, "replayed": 0} and owners.snapshot() is None
    await trade_a_little(first, out, counterparty, ("c1", "c2", "c3", "c4"))

    async def stored() -> None:  # the side process runs on its own; the owner goes on
        while first.snapshots_stored == 0 or first.info()["snapshot"]["storing"]:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(stored(), 60)
    found = owners.snapshot()
    assert found is not None and found[0] == first.snapshot_seq >= 12
    assert first.state is OwnerState.READY
    # A takeover starts from it and ends where the live owner is, and where a replay of the
    # whole journal ends.
    after = [seq for _, _, seq, _ in owners.rows() if seq > found[0]]
    second, _ = await owners.open(2, retain_finished=2, snapshot_after_entries=10**9)
    assert second.rebuilt == {"snapshot_seq": found[0], "replayed": len(after)}
    snapshot_path(owners.path).unlink()
    whole, _ = await owners.open(3, retain_finished=2, snapshot_after_entries=10**9)
    assert whole.rebuilt["snapshot_seq"] == 0
    assert first.risk is not None and second.risk is not None and whole.risk is not None
    for owner in (second, whole):
        assert owner.book.snapshot() == first.book.snapshot()
        assert owner.risk is not None and owner.risk.snapshot() == first.risk.snapshot()
    assert second.info()["positions"] == {"BTC/USD": "-0.5"}


async def test_a_side_process_that_fails_costs_the_owner_nothing_and_is_tried_again_later(
        owners: Owners) -> None:
    blocked = snapshot_path(owners.path)
    blocked.mkdir(parents=True)  # nothing can be stored there: the side process fails
    first, out = await owners.open(1, snapshot_after_entries=6)

    async def settled(done: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not done() or first.info()["snapshot"]["storing"]:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(wait(), 60)

    for cid in ("c1", "c2", "c3"):
        await first.route("s1", "cust", new_order(cid, price="32000"))
    await settled(lambda: first._snapshot_failed_at > 0)
    assert first.state is OwnerState.READY and first.info()["snapshot"]["stored"] == 0
    failed_at = first._snapshot_failed_at
    blocked.rmdir()
    await first.route("s1", "cust", new_order("c4", price="32000"))  # too soon to try again
    assert not first.info()["snapshot"]["storing"] and len(owners.rows()) < failed_at + 6
    for cid in ("c5", "c6", "c7"):
        await first.route("s1", "cust", new_order(cid, price="32000"))
    await settled(lambda: first.snapshots_stored == 1)
    assert first.snapshot_seq >= failed_at + 6 and owners.snapshot() is not None
    assert len(out.order_events()) == 7 and first.state is OwnerState.READY


async def test_a_snapshot_made_under_another_config_is_not_used(owners: Owners) -> None:
    first, out = await owners.open(1, retain_finished=2)
    await first.route("s1", "cust", new_order("c1"))
    await out.wait_for(lambda: len(out.order_events()) == 1)
    await owners.open(2, retain_finished=2, snapshot_after_entries=1)  # stores one
    same, _ = await owners.open(3, retain_finished=2)
    assert same.rebuilt["snapshot_seq"] > 0
    other, _ = await owners.open(4, retain_finished=3)  # another retention: replay it all
    assert other.rebuilt["snapshot_seq"] == 0
    limited, _ = await owners.open(5, retain_finished=2, limits=RiskLimits(max_open_positions=3))
    assert limited.rebuilt["snapshot_seq"] == 0  # other limits: replay it all
    assert [o.client_order_id for o in limited.book.open_orders()] == ["c1"]
    # A snapshot that cannot be read is skipped the same way.
    stored = owners.snapshot()
    assert stored is not None
    stored[1]["risk"]["orders"] = "not a ledger"
    write_snapshot(snapshot_path(owners.path), stored[0] + 1, 5, stored[1], lambda: True)
    unreadable, _ = await owners.open(6, retain_finished=2)
    assert unreadable.rebuilt["snapshot_seq"] == 0 and unreadable.state is OwnerState.READY
    assert [o.client_order_id for o in unreadable.book.open_orders()] == ["c1"]


async def test_a_new_owner_watches_held_instruments_without_waiting_while_it_opens(
        owners: Owners, monkeypatch: pytest.MonkeyPatch) -> None:
    """The venue's events are read only once the owner is open, so waiting for a first price
    while opening could only time out: it cost every takeover FIRST_PRICE_WAIT_S for each
    instrument with an order, a position or an exit."""
    first, first_out = await owners.open(1)
    await first.route("s1", "cust", new_order("c1"))
    await first_out.wait_for(lambda: len(first_out.order_events()) == 1)

    monkeypatch.setattr(owner_module, "FIRST_PRICE_WAIT_S", 600.0)
    second, second_out = await asyncio.wait_for(owners.open(2), WAIT_S)
    assert second.state is OwnerState.READY
    await second_out.wait_for(lambda: any(  # watched all the same: its prices come in
        isinstance(e, Ticker) and e.instrument == "BTC/USD" for e in second_out.market_events))


async def test_an_older_epoch_cannot_take_the_account(owners: Owners) -> None:
    await owners.open(2)
    with pytest.raises(OwnerError, match="newer epoch"):
        await owners.open(1)


async def test_takeover_catches_up_on_what_happened_while_nobody_owned_the_account(
        owners: Owners, venue: PaperVenue, counterparty: PaperAdapter) -> None:
    first, first_out = await owners.open(1)
    await first.route("s1", "cust", new_order("filled-away", qty="1"))
    await first.route("s1", "cust", new_order("gone-away", qty="1", price="31000"))
    await first_out.wait_for(lambda: len(first_out.order_events()) == 2)
    await first.close()  # the worker dies; the exchange carries on
    await counterparty.place_order(cross("x1", qty="0.4"))
    venue.cancel("acct", "gone-away")

    second, second_out = await owners.open(2)
    events = second_out.order_events()
    assert [(e["type"], e["client_order_id"], e["seq"]) for e in events] == [
        ("order_partially_filled", "filled-away", 3),
        ("order_cancelled", "gone-away", 4),
    ]
    assert events[1]["reason"] == "venue"
    assert [o.client_order_id for o in second.book.open_orders()] == ["filled-away"]
    assert second.info()["fills"] == 1


async def test_an_intent_the_venue_never_saw_is_sent_by_the_next_owner(
        owners: Owners, venue: PaperVenue) -> None:
    first, _ = await owners.open(1)
    owners.adapters[0].hang_places = True
    route = asyncio.create_task(first.route("s1", "cust", new_order("c1")))
    await asyncio.sleep(0)  # the intent is journaled, the place is stuck
    while not any(k == "request" for k, *_ in owners.journal()):
        await asyncio.sleep(0.01)
    route.cancel()  # the worker dies before the venue hears of the order
    await first.close()
    assert venue.engine.order("acct", "c1") is None

    second, second_out = await owners.open(2)
    assert venue.engine.order("acct", "c1") is not None
    assert types(second_out.order_events()) == ["order_accepted"]
    assert second.info()["open_orders"] == 1


async def test_an_old_intent_is_rejected_not_sent(owners: Owners, venue: PaperVenue) -> None:
    first, _ = await owners.open(1)
    owners.adapters[0].hang_places = True
    route = asyncio.create_task(first.route("s1", "cust", new_order("c1")))
    while not any(k == "request" for k, *_ in owners.journal()):
        await asyncio.sleep(0.01)
    route.cancel()
    await first.close()

    _, second_out = await owners.open(2, max_resend_age_ns=0)
    (event,) = second_out.order_events()
    assert (event["type"], event["reason"]) == ("order_rejected", "unavailable")
    assert venue.engine.order("acct", "c1") is None


async def test_a_lost_venue_connection_is_reconciled_when_it_comes_back(
        owners: Owners, counterparty: PaperAdapter) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", new_order("c1", qty="1"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 1)
    adapter = owners.adapters[0]
    adapter.drop()
    await outbox.wait_for(lambda: len(outbox.resyncs) == 1)
    assert owner.state is OwnerState.VENUE_DOWN and not owner.info()["connected"]
    await counterparty.place_order(cross("x1", qty="0.25"))  # missed by the owner
    adapter.restore()
    await outbox.wait_for(lambda: len(outbox.resyncs) == 2)
    assert state_now(owner) is OwnerState.READY
    events = outbox.order_events()
    assert [(e["type"], e["seq"]) for e in events] == [("order_accepted", 1),
                                                      ("order_partially_filled", 2)]
    assert events[1]["filled_qty"] == "0.25"


async def test_a_bug_while_routing_answers_internal_and_the_owner_carries_on(
        owners: Owners, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, outbox = await owners.open(1)

    def broken(message: Any) -> Any:
        raise RuntimeError("bug")

    with monkeypatch.context() as patch:
        patch.setattr(owner.book.tracker, "receive", broken)
        await owner.route("s1", "cust", new_order("c1"))
    (error,) = outbox.events()
    assert (error["code"], error["client_order_id"]) == ("internal", "c1")
    await owner.route("s1", "cust", new_order("c2"))
    await outbox.wait_for(lambda: types(outbox.order_events()) == ["order_accepted"])


async def test_a_journal_that_cannot_be_read_refuses_the_account(owners: Owners) -> None:
    first, _ = await owners.open(1)
    await first.route("s1", "cust", new_order("c1"))
    await first.close()
    with sqlite3.connect(owners.path) as db:
        db.execute("UPDATE entries SET payload = '{\"msg\": {}}' WHERE kind = 'request'")
    with pytest.raises(OwnerError, match="cannot take account acct"):
        await owners.open(2)


# ---------------------------------------------------------------- operator views


async def test_fills_risk_refusals_kill_switch_and_resyncs_reach_the_operator(
        owners: Owners, counterparty: PaperAdapter) -> None:
    notable: list[dict[str, Any]] = []
    owner, outbox = await owners.open(
        1, on_notable=notable.append,
        limits=RiskLimits(max_order_notional=D("100000")))
    await owner.route("s1", "cust", new_order("c1", qty="1"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 1)
    await counterparty.place_order(cross("x1", qty="0.4"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 2)
    [fill] = owner.info()["recent_fills"]
    assert (fill["client_order_id"], fill["side"], fill["qty"], fill["price"],
            fill["customer"]) == ("c1", "sell", "0.4", "30000", "cust")

    await owner.route("s1", "cust", new_order("big", qty="10"))  # 300,000 > 100,000
    await outbox.wait_for(lambda: any(n["event"] == "risk_rejected" for n in notable))
    refused = next(n for n in notable if n["event"] == "risk_rejected")
    assert refused["code"] == "risk_order_notional" and refused["client_order_id"] == "big"
    assert refused["account"] == "acct" and "max_order_notional 100,000.00" in refused["message"]

    await owner.operator_risk(risk.KillSwitch(True, KillScope.ACCOUNT, "drill", "op"))
    switched = [n for n in notable if n["event"] == "kill_switch"]
    assert switched and switched[0]["active"] is True and "drill" in switched[0]["message"]

    adapter = owners.adapters[0]
    adapter.drop()
    await outbox.wait_for(lambda: len(outbox.resyncs) == 1)
    adapter.restore()
    await outbox.wait_for(lambda: len(outbox.resyncs) == 2)
    assert [n["event"] for n in notable][-2:] == ["venue_down", "venue_resync"]


async def test_the_collector_paused_for_a_rebuild_is_on_again_after_it_whatever_happened(
        owners: Owners) -> None:
    assert gc.isenabled()
    first, first_out = await owners.open(1)
    await first.route("s1", "cust", new_order("c1"))
    await first_out.wait_for(lambda: len(first_out.order_events()) == 1)
    second, _ = await owners.open(2)
    assert second.book.orders == 1 and gc.isenabled()
    await second.close()
    with sqlite3.connect(owners.path) as db:
        db.execute("UPDATE entries SET payload = '{\"msg\": {}}' WHERE kind = 'request'")
    with pytest.raises(OwnerError):
        await owners.open(3)
    assert gc.isenabled()
