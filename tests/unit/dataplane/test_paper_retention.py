"""The paper exchange keeps in memory each account's working orders and only its newest
finished orders and fills; the store answers for the rest, so every answer is the one an
exchange holding everything in memory gives: an old order's state, fills since an old time, a
repeated client_order_id (refused, or answered with the order it names), and after a restart.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.market import BookDelta, Ticker
from protocol.orders import NewOrder, OrderAccepted, OrderStatus
from workers.broker.adapters.paper.adapter import PaperVenue
from workers.broker.adapters.paper.config import PaperConfig
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, OrderRefused
from workers.broker.adapters.paper.server import OrderProblem, create_app, submit_order
from workers.broker.adapters.paper.store import PaperStore

from .conftest import SPEC, START_NS, order
from .test_paper_store import CONFIG as STORE_CONFIG

pytestmark = pytest.mark.timeout(120)

D = Decimal
KEEP = 100
CONFIG = STORE_CONFIG.model_copy(update={"retain_finished_orders": KEEP, "retain_fills": KEEP})


class Clock:
    """The time the test sets: two venues reading it see the same times."""

    def __init__(self) -> None:
        self.now = START_NS

    def __call__(self) -> int:
        return self.now


def limit(account: str, cid: str, side: str, qty: str, price: str, tif: str = "GTC"
          ) -> NewOrder:
    return NewOrder(client_order_id=cid, account=account, instrument="BTC/USD", side=side,
                    qty=D(qty), price=D(price), time_in_force=tif)


def accounts_part(events: list[EngineEvent]) -> list[EngineEvent]:
    """Order events and trades: what is kept of an exchange. A rebuilt one numbers its book
    updates afresh and knows no last price until it trades."""
    return [e for e in events if not isinstance(e, BookDelta | Ticker)]


class Pair:
    """A venue on a store (bounded memory) and one without (which keeps everything), given
    the same requests at the same times. `both` asserts they answer the same."""

    def __init__(self, path: Path) -> None:
        self.clock = Clock()
        self.path = path
        self.stores: list[PaperStore] = []
        self.full = PaperVenue(CONFIG, clock=self.clock)
        self.bounded = self.reopen()

    def reopen(self) -> PaperVenue:
        """A bounded venue on the store, as a new process would build it (the last one is
        left open, as after kill -9)."""
        self.stores.append(PaperStore(self.path))
        venue = PaperVenue(CONFIG, clock=self.clock, store=self.stores[-1])
        for account in ("alice", "bob"):
            self.full.ensure_account(account)
            venue.ensure_account(account)
        return venue

    def both(self, call: str, *args: Any) -> Any:
        self.clock.now += 1_000
        answers: list[Any] = []
        for venue in (self.full, self.bounded):
            try:
                answers.append(accounts_part(getattr(venue, call)(*args)))
            except OrderRefused as exc:
                answers.append((exc.code, exc.message))
        assert answers[0] == answers[1]
        return answers[0]

    def ask(self, call: str, *args: Any) -> Any:
        """The same question to both engines; both answer the same."""
        full, bounded = (getattr(v.engine, call)(*args) for v in (self.full, self.bounded))
        assert full == bounded
        return full


def trade_a_lot(pair: Pair, rounds: int) -> None:
    """alice leaves 5 buys working, then finishes 2 × rounds orders: a sell bob's IOC buy
    fills (two fills) and a buy she cancels."""
    for i in range(5):
        pair.both("submit", limit("alice", f"w{i}", "buy", "0.1", "20000"))
    for i in range(rounds):
        pair.both("submit", limit("alice", f"s{i}", "sell", "0.1", "30000"))
        pair.both("submit", limit("bob", f"b{i}", "buy", "0.1", "30000", tif="IOC"))
        pair.both("submit", limit("alice", f"c{i}", "buy", "0.1", "25000"))
        pair.both("cancel", "alice", f"c{i}")


def every_id(rounds: int) -> dict[str, list[str]]:
    return {"alice": [f"w{i}" for i in range(5)] + [f"{p}{i}" for i in range(rounds)
                                                      for p in ("s", "c")],
            "bob": [f"b{i}" for i in range(rounds)] + ["never"]}


def same_answers(pair: Pair, rounds: int) -> None:
    for account, ids in every_id(rounds).items():
        for cid in ids:
            pair.ask("order", account, cid)
        pair.ask("open_orders", account)
        fills = pair.ask("fills", account, 0)
        assert len(fills) == rounds
        for since in {fills[0].ts, fills[1].ts - 1, fills[rounds // 2].ts, fills[-1].ts,
                      fills[-1].ts + 1}:
            pair.ask("fills", account, since)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    pair = Pair(tmp_path / "exchange.sqlite")
    yield pair
    for store in pair.stores:
        store.close()


def test_memory_holds_working_orders_and_the_newest_finished_orders_and_fills(
        pair: Pair) -> None:
    rounds = 3 * KEEP
    trade_a_lot(pair, rounds)
    engine = pair.bounded.engine
    assert engine.held("alice") == (5 + KEEP, KEEP)
    assert engine.held("bob") == (KEEP, KEEP)
    assert pair.full.engine.held("alice") == (5 + 2 * rounds, rounds)
    # The newest are in memory: alice's last KEEP finished orders (s and c alternate).
    newest = [f"{p}{i}" for i in range(rounds - KEEP // 2, rounds) for p in ("s", "c")]
    assert all(engine.resting("alice", cid) is not None for cid in newest)
    assert engine.resting("alice", "s0") is None and engine.resting("bob", "b0") is None
    # Working orders stay however old, and still trade first at their price.
    assert [o.client_order_id for o in engine.open_orders("alice")] == [f"w{i}" for i in range(5)]
    events = pair.both("submit", limit("bob", "sweep", "sell", "0.2", "20000", tif="IOC"))
    makers = [e.client_order_id for e in events if hasattr(e, "fill") and e.account == "alice"]
    assert makers == ["w0", "w1"]


def test_what_memory_let_go_is_answered_from_the_store_as_before(pair: Pair) -> None:
    rounds = 3 * KEEP
    trade_a_lot(pair, rounds)
    same_answers(pair, rounds)
    old = pair.bounded.engine.order("alice", "s0")
    assert old is not None and old.status is OrderStatus.FILLED and old.order_id == "P6"
    # A forgotten client_order_id is still taken, and a forgotten order cannot change.
    code, message = pair.both("submit", limit("alice", "s0", "sell", "0.1", "30000"))
    assert code is ErrorCode.DUPLICATE_ORDER and "'s0'" in message
    assert pair.both("submit", limit("bob", "b0", "sell", "0.1", "31000"))[0] == (
        ErrorCode.DUPLICATE_ORDER)
    assert pair.both("cancel", "alice", "c0")[0] is ErrorCode.ORDER_NOT_CANCELLABLE
    assert pair.both("modify", "alice", "c0", D("0.2"), None)[0] is (
        ErrorCode.ORDER_NOT_MODIFIABLE)
    assert pair.both("cancel", "alice", "never")[0] is ErrorCode.ORDER_NOT_FOUND
    same_answers(pair, rounds)


def test_a_venue_rebuilt_from_the_store_loads_the_bounded_set_and_answers_the_same(
        pair: Pair) -> None:
    rounds = 3 * KEEP
    trade_a_lot(pair, rounds)
    pair.bounded = pair.reopen()
    engine = pair.bounded.engine
    assert engine.held("alice") == (5 + KEEP, KEEP)
    assert engine.held("bob") == (KEEP, KEEP)
    assert engine.ledger.state("alice") == pair.full.engine.ledger.state("alice")
    same_answers(pair, rounds)
    assert pair.both("submit", limit("alice", "c0", "buy", "0.1", "25000"))[0] == (
        ErrorCode.DUPLICATE_ORDER)
    # Numbering goes on after the highest stored order number, whatever memory holds.
    assert engine.ids() == pair.full.engine.ids() == (5 + 3 * rounds, rounds, 2 * rounds)
    events = pair.both("submit", limit("alice", "next", "sell", "0.1", "30000"))
    assert events[0].order_id == f"P{5 + 3 * rounds + 1}"
    # And it goes on trading as the other would, and is stored in turn.
    pair.both("submit", limit("bob", "next", "buy", "0.1", "30000", tif="IOC"))
    pair.bounded = pair.reopen()
    same_answers(pair, rounds + 1)


def test_numbering_comes_from_the_store_not_from_the_orders_loaded(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite"
    venue = PaperVenue(CONFIG, store=PaperStore(path))
    venue.ensure_account("alice")
    venue.ensure_account("bob")
    for i in range(KEEP + 50):
        venue.submit(limit("alice", f"c{i}", "buy", "0.1", "25000"))
        venue.cancel("alice", f"c{i}")
    venue.submit(limit("bob", "w", "buy", "0.1", "20000"))
    again = PaperVenue(CONFIG, store=PaperStore(path))
    assert again.engine.held("alice") == (KEEP, 0)
    assert again.engine.ids()[0] == KEEP + 51
    accepted = again.submit(limit("bob", "x", "buy", "0.1", "20000"))[0]
    assert isinstance(accepted, OrderAccepted) and accepted.order_id == f"P{KEEP + 52}"
    for v in (venue, again):
        v.engine.archive.close()  # type: ignore[union-attr]


def test_fills_since_a_time_are_exact_when_the_clock_went_back(pair: Pair) -> None:
    trade_a_lot(pair, KEEP)
    pair.clock.now -= 10_000_000  # the wall clock stepped back
    for i in range(KEEP):
        pair.both("submit", limit("alice", f"s-again{i}", "sell", "0.1", "30000"))
        pair.both("submit", limit("bob", f"b-again{i}", "buy", "0.1", "30000", tif="IOC"))
    # The fills in memory are newer than those on disk, but not all later in time.
    fills = pair.ask("fills", "alice", 0)
    assert len(fills) == 2 * KEEP
    times = sorted({f.ts for f in fills})
    for since in times[::7] + [times[-1] + 1]:
        pair.ask("fills", "alice", since)
    # Pages (what the server answers, a page per request) are slices of the same list, read
    # from the store alone where the answer reaches back past memory.
    for since in (0, times[len(times) // 3]):
        whole = pair.ask("fills", "alice", since)
        for size in (1, 7, KEEP, 3 * KEEP):
            pages = [pair.ask("fills", "alice", since, offset, size)
                     for offset in range(0, len(whole) + size, size)]
            assert [f for page in pages for f in page] == whole and pages[-1] == []


def test_the_server_answers_a_repeat_of_a_forgotten_order_with_the_stored_order(
        pair: Pair) -> None:
    trade_a_lot(pair, 2 * KEEP)
    assert pair.bounded.engine.resting("alice", "s0") is None  # only in the store
    app = create_app(pair.bounded, "token")
    request = {"client_order_id": "s0", "instrument": "BTC/USD", "side": "sell",
               "order_type": "limit", "qty": "0.1", "price": "30000"}
    created, existing = submit_order(app, "alice", dict(request))
    assert not created and existing.order_id == "P6" and existing.status is OrderStatus.FILLED
    with pytest.raises(OrderProblem) as refused:
        submit_order(app, "alice", dict(request, side="buy"))
    assert refused.value.code is ErrorCode.DUPLICATE_ORDER and refused.value.status == 409
    created, _ = submit_order(app, "alice", dict(request, client_order_id="fresh"))
    assert created


def test_the_retention_is_configured_per_exchange_and_bounded_below() -> None:
    assert PaperConfig().retain_finished_orders == PaperConfig().retain_fills == 10_000
    for key in ("retain_finished_orders", "retain_fills"):
        with pytest.raises(ValidationError, match=key):
            PaperConfig.model_validate({key: 99})
    with pytest.raises(ValueError, match="at least 1"):
        MatchingEngine([SPEC], clock=Clock(), retain_fills=0)


def test_without_a_store_the_engine_keeps_everything() -> None:
    venue = PaperVenue(CONFIG, clock=Clock())
    venue.ensure_account("alice")
    for i in range(KEEP + 10):
        venue.submit(limit("alice", f"c{i}", "buy", "0.1", "25000"))
        venue.cancel("alice", f"c{i}")
    assert venue.engine.held("alice") == (KEEP + 10, 0)


# ---------------------------------------------------------------- random order flow


ACCOUNTS = ("a", "b")
KEEP_FEW = 3


@dataclass(frozen=True)
class Submit:
    account: str
    side: str
    lots: int
    ticks: int | None  # None: a market order
    ioc: bool
    reuse: int | None  # repeat the id of one of the account's orders


@dataclass(frozen=True)
class Change:
    account: str
    pick: int
    cancel: bool
    lots: int | None
    ticks: int | None


@dataclass(frozen=True)
class Ask:
    account: str
    pick: int
    since: int


@dataclass(frozen=True)
class Tick:
    ns: int  # may go back, as a wall clock does


@dataclass(frozen=True)
class Restart:
    pass


accounts = st.sampled_from(ACCOUNTS)
flow = st.lists(st.one_of(
    st.builds(Submit, accounts, st.sampled_from(["buy", "sell"]), st.integers(2, 30),
              st.one_of(st.none(), st.integers(195, 205)), st.booleans(),
              st.one_of(st.none(), st.none(), st.integers(0, 40))),
    st.builds(Submit, accounts, st.sampled_from(["buy", "sell"]), st.integers(2, 30),
              st.integers(195, 205), st.just(False), st.none()),
    st.builds(Change, accounts, st.integers(0, 40), st.booleans(),
              st.one_of(st.none(), st.integers(2, 40)),
              st.one_of(st.none(), st.integers(195, 205))),
    st.builds(Ask, accounts, st.integers(0, 40), st.integers(0, 40)),
    st.builds(Tick, st.integers(-5_000, 5_000)),
    st.just(Restart()),
), max_size=80)


class Flow:
    """The same operations on an engine that keeps everything and on one that keeps
    KEEP_FEW finished orders and fills per account, on a store (recorded after every
    operation, as the venue does), rebuilt from the store on `Restart`."""

    def __init__(self, directory: Path) -> None:
        self.clock = Clock()
        self.path = directory / "exchange.sqlite"
        self.full = self.engine(None)
        self.store = PaperStore(self.path)
        self.bounded = self.engine(self.store)
        for account in ACCOUNTS:
            self.full.open_account(account, {"USD": D(10_000_000)})
            self.bounded.open_account(account, {"USD": D(10_000_000)})
            self.store.open_account(self.bounded, account)
        self.ids: dict[str, list[str]] = {a: [] for a in ACCOUNTS}
        self.times: list[int] = [self.clock.now]
        self.count = 0

    def engine(self, store: PaperStore | None) -> MatchingEngine:
        return MatchingEngine([SPEC], maker_fee_bps=D(1), taker_fee_bps=D(5), clock=self.clock,
                              archive=store, retain_finished_orders=KEEP_FEW,
                              retain_fills=KEEP_FEW)

    def close(self) -> None:
        self.store.close()

    def apply(self, op: Any) -> None:
        if isinstance(op, Tick):
            self.clock.now += op.ns
            self.times.append(self.clock.now)
        elif isinstance(op, Restart):
            self.store.close()
            self.store = PaperStore(self.path)
            self.bounded = self.engine(self.store)
            self.store.load(self.bounded)
        elif isinstance(op, Ask):
            ids = self.ids[op.account]
            if ids:
                cid = ids[op.pick % len(ids)]
                assert self.full.order(op.account, cid) == self.bounded.order(op.account, cid)
            since = self.times[op.since % len(self.times)] + (op.since % 3) - 1
            assert self.full.fills(op.account, since) == self.bounded.fills(op.account, since)
            assert self.full.open_orders(op.account) == self.bounded.open_orders(op.account)
        else:
            self.change(op)
        for account in ACCOUNTS:
            orders, fills = self.bounded.held(account)
            assert orders <= len(self.bounded.open_orders(account)) + KEEP_FEW
            assert fills <= KEEP_FEW

    def change(self, op: Submit | Change) -> None:
        ids = self.ids[op.account]
        if isinstance(op, Submit):
            if op.reuse is not None and ids:
                cid = ids[op.reuse % len(ids)]
            else:
                self.count += 1
                cid = f"o{self.count}"
                ids.append(cid)
            limit_price = None if op.ticks is None else str(op.ticks * SPEC.tick_size)
            request = order(cid, op.account, op.side, str(op.lots * SPEC.lot_size), limit_price,
                            tif="IOC" if op.ioc else "GTC")
            self.both(lambda engine: engine.submit(request))
        elif ids:
            cid = ids[op.pick % len(ids)]
            if op.cancel:
                self.both(lambda engine: engine.cancel(op.account, cid))
            else:
                qty = None if op.lots is None else op.lots * SPEC.lot_size
                price = None if op.ticks is None else op.ticks * SPEC.tick_size
                self.both(lambda engine: engine.modify(op.account, cid, qty=qty, price=price))

    def both(self, call: Any) -> None:
        answers: list[list[EngineEvent] | tuple[ErrorCode, str]] = []
        for engine in (self.full, self.bounded):
            try:
                events = call(engine)
            except OrderRefused as exc:
                answers.append((exc.code, exc.message))
                continue
            if engine is self.bounded:
                self.store.record(engine, events)
            answers.append(accounts_part(events))
        assert answers[0] == answers[1]
        if isinstance(answers[0], list) and answers[0]:
            self.times.append(self.clock.now)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow)
def test_a_bounded_engine_answers_as_one_that_keeps_everything(ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        run = Flow(Path(directory))
        try:
            for op in ops:
                run.apply(op)
            for account in ACCOUNTS:
                run.apply(Ask(account, 0, 0))
                for cid in run.ids[account]:
                    assert run.full.order(account, cid) == run.bounded.order(account, cid)
                assert run.full.fills(account, 0) == run.bounded.fills(account, 0)
            assert run.full.ids() == run.bounded.ids()
            assert all(run.full.ledger.state(a) == run.bounded.ledger.state(a)
                       for a in ACCOUNTS)
        finally:
            run.close()
