"""Properties of the matching engine under random order flow (hypothesis)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.orders import (
    LEGAL_TRANSITIONS,
    OrderEvent,
    OrderFilled,
    OrderPartiallyFilled,
    OrderStatus,
)
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, OrderRefused

from .conftest import SPEC, make_engine, order

ACCOUNTS = ("a", "b", "c")
ORDER_EVENT_TYPES = OrderEvent.__args__


@dataclass(frozen=True)
class Submit:
    account: str
    side: str
    qty_lots: int
    price_ticks: int | None  # None: market order
    ioc: bool


@dataclass(frozen=True)
class Cancel:
    account: str
    pick: int  # index into that account's orders so far


@dataclass(frozen=True)
class Modify:
    account: str
    pick: int
    qty_lots: int | None
    price_ticks: int | None


accounts = st.sampled_from(ACCOUNTS)
submits = st.builds(
    Submit,
    accounts,
    st.sampled_from(["buy", "sell"]),
    st.integers(1, 40),
    st.one_of(st.none(), st.integers(190, 210)),
    st.booleans(),
)
cancels = st.builds(Cancel, accounts, st.integers(0, 50))
modifies = st.builds(
    Modify,
    accounts,
    st.integers(0, 50),
    st.one_of(st.none(), st.integers(1, 60)),
    st.one_of(st.none(), st.integers(190, 210)),
)
operations = st.lists(st.one_of(submits, submits, cancels, modifies), max_size=60)


class Run:
    """Applies operations and records everything the properties look at."""

    def __init__(self, engine: MatchingEngine) -> None:
        self.engine = engine
        self.events: list[EngineEvent] = []
        self.ids: dict[str, list[str]] = defaultdict(list)
        self.count = 0

    def apply(self, op: Submit | Cancel | Modify) -> list[EngineEvent]:
        try:
            if isinstance(op, Submit):
                self.count += 1
                cid = f"o{self.count}"
                self.ids[op.account].append(cid)
                qty = str(op.qty_lots * SPEC.lot_size)
                price = None if op.price_ticks is None else str(op.price_ticks * SPEC.tick_size)
                events = self.engine.submit(
                    order(cid, op.account, op.side, qty, price, tif="IOC" if op.ioc else "GTC")
                )
            else:
                ids = self.ids[op.account]
                if not ids:
                    return []
                cid = ids[op.pick % len(ids)]
                if isinstance(op, Cancel):
                    events = self.engine.cancel(op.account, cid)
                else:
                    events = self.engine.modify(
                        op.account,
                        cid,
                        qty=None if op.qty_lots is None else op.qty_lots * SPEC.lot_size,
                        price=None if op.price_ticks is None else op.price_ticks * SPEC.tick_size,
                    )
        except OrderRefused:
            return []  # refusals are legitimate outcomes of random input; they change nothing
        self.events += events
        return events


def fees_of(events: list[EngineEvent]) -> Decimal:
    return sum(
        (e.fill.fee for e in events if isinstance(e, OrderPartiallyFilled | OrderFilled)),
        Decimal(0),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_book_never_stays_crossed(ops: list[Submit | Cancel | Modify]) -> None:
    run = Run(make_engine())
    for op in ops:
        run.apply(op)
        bid, ask = run.engine.best_prices("BTC/USD")
        assert bid is None or ask is None or bid < ask


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_fills_never_exceed_order_qty_and_add_up(ops: list[Submit | Cancel | Modify]) -> None:
    run = Run(make_engine(maker_bps="2", taker_bps="5"))
    for op in ops:
        run.apply(op)
    filled: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for event in run.events:
        if isinstance(event, OrderPartiallyFilled | OrderFilled):
            filled[(event.account, event.client_order_id)] += event.fill.qty
            assert event.filled_qty <= event.qty
            assert filled[(event.account, event.client_order_id)] == event.filled_qty
    for account, ids in run.ids.items():
        for cid in ids:
            state = run.engine.order(account, cid)
            if state is None:
                continue  # refused at submission
            assert state.filled_qty == filled[(account, cid)]
            assert state.filled_qty + state.remaining_qty <= state.qty


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.sampled_from([("0", "0"), ("1", "5"), ("-1", "3")]))
def test_conservation_across_accounts(
    ops: list[Submit | Cancel | Modify], fees: tuple[str, str]
) -> None:
    """Trading moves base and quote between accounts; only fees leave the system."""
    engine = make_engine(maker_bps=fees[0], taker_bps=fees[1])
    run = Run(engine)
    for op in ops:
        run.apply(op)
    base = sum((engine.ledger.position_qty(a, "BTC/USD") for a in ACCOUNTS), Decimal(0))
    quote_change = sum(
        (engine.ledger.cash(a)["USD"] - Decimal(10_000) for a in ACCOUNTS), Decimal(0)
    )
    assert base == 0
    assert quote_change == -fees_of(run.events)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_order_status_transitions_are_legal(ops: list[Submit | Cancel | Modify]) -> None:
    run = Run(make_engine())
    for op in ops:
        run.apply(op)
    status: dict[tuple[str, str], OrderStatus] = {}
    for event in run.events:
        if not isinstance(event, ORDER_EVENT_TYPES):
            continue
        key = (event.account, event.client_order_id)
        before = status.get(key, OrderStatus.PENDING)
        assert event.status in LEGAL_TRANSITIONS[before], (before, event.type)
        status[key] = event.status


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_book_levels_equal_the_working_orders(ops: list[Submit | Cancel | Modify]) -> None:
    run = Run(make_engine())
    for op in ops:
        run.apply(op)
    working: dict[tuple[str, Decimal], Decimal] = defaultdict(Decimal)
    for account in ACCOUNTS:
        for snap in run.engine.open_orders(account):
            assert snap.price is not None
            working[(snap.side, snap.price)] += snap.remaining_qty
    book = run.engine.book("BTC/USD")
    levels = {("buy", p): q for p, q in book.bids} | {("sell", p): q for p, q in book.asks}
    assert levels == {k: v for k, v in working.items() if v}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_deltas_replayed_on_an_empty_book_rebuild_the_book(
    ops: list[Submit | Cancel | Modify],
) -> None:
    """What a client builds from the deltas is the engine's book."""
    from protocol.market import BookDelta

    run = Run(make_engine())
    for op in ops:
        run.apply(op)
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    last_id = 0
    for event in run.events:
        if isinstance(event, BookDelta):
            assert event.update_id == last_id + 1
            last_id = event.update_id
            for side, levels in ((bids, event.bids), (asks, event.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        side.pop(price, None)
    book = run.engine.book("BTC/USD")
    assert sorted(bids.items(), reverse=True) == book.bids
    assert sorted(asks.items()) == book.asks
