"""The paper matching engine: priority, order types, fees, trading rules, ledger."""

from __future__ import annotations

from decimal import Decimal
from typing import TypeVar

import pytest

from protocol.errors import ErrorCode
from protocol.market import BookDelta, Ticker, Trade
from protocol.orders import (
    CancelReason,
    Liquidity,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderStatus,
)
from workers.broker.adapters.paper.engine import EngineEvent, MatchingEngine, OrderRefused

from .conftest import make_engine, order

D = Decimal
E = TypeVar("E")


def fills(events: list[EngineEvent]) -> list[tuple[str, str, Decimal, Decimal, Liquidity]]:
    """(account, client_order_id, qty, price, liquidity) of every fill, in order."""
    return [
        (e.account, e.client_order_id, e.fill.qty, e.fill.price, e.fill.liquidity)
        for e in events
        if isinstance(e, OrderPartiallyFilled | OrderFilled)
    ]


def of_type(events: list[EngineEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


# ---------------------------------------------------------------- priority and matching


def test_better_price_trades_first_then_oldest_at_a_price(engine: MatchingEngine) -> None:
    engine.submit(order("s1", "a", "sell", "1", "101"))
    engine.submit(order("s2", "b", "sell", "1", "100.5"))
    engine.submit(order("s3", "c", "sell", "1", "100.5"))  # same price, later
    events = engine.submit(order("buy", "b", "buy", "2.5", "101"))
    makers = [(cid, qty, px) for _, cid, qty, px, liq in fills(events) if liq == "maker"]
    # b's own s2 is skipped (self-trade prevention), then c's s3, then the worse price.
    assert makers == [("s3", D(1), D("100.5")), ("s1", D(1), D(101))]
    cancelled = of_type(events, OrderCancelled)
    assert [(c.client_order_id, c.reason) for c in cancelled] == [("s2", CancelReason.SELF_TRADE)]
    rest = engine.order("b", "buy")
    assert rest is not None and rest.status is OrderStatus.PARTIALLY_FILLED
    assert rest.filled_qty == D(2) and rest.remaining_qty == D("0.5")
    assert rest.avg_price == D("100.75")


def test_price_priority_across_levels(engine: MatchingEngine) -> None:
    engine.submit(order("far", "a", "sell", "1", "102"))
    engine.submit(order("near", "a", "sell", "1", "100.5"))
    engine.submit(order("mid", "a", "sell", "1", "101"))
    events = engine.submit(order("sweep", "b", "buy", "3", "102"))
    assert [cid for _, cid, _, _, liq in fills(events) if liq == "maker"] == ["near", "mid", "far"]


def test_time_priority_at_one_price(engine: MatchingEngine) -> None:
    engine.submit(order("first", "a", "buy", "1", "99"))
    engine.submit(order("second", "b", "buy", "1", "99"))
    events = engine.submit(order("hit", "c", "sell", "1.5", "99"))
    assert [(cid, qty) for _, cid, qty, _, liq in fills(events) if liq == "maker"] == [
        ("first", D(1)),
        ("second", D("0.5")),
    ]


def test_executions_happen_at_the_resting_price(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "100"))
    events = engine.submit(order("b", "b", "buy", "1", "105"))
    assert {px for *_, px, _ in fills(events)} == {D(100)}
    (trade,) = of_type(events, Trade)
    assert (trade.price, trade.qty, trade.taker_side) == (D(100), D(1), "buy")


def test_partial_fill_rests_the_remainder_of_a_gtc_order(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "0.4", "100"))
    events = engine.submit(order("b", "b", "buy", "1", "100"))
    assert isinstance(events[0], OrderAccepted)
    part = of_type(events, OrderPartiallyFilled)
    assert [(e.client_order_id, e.filled_qty, e.remaining_qty) for e in part] == [
        ("b", D("0.4"), D("0.6"))
    ]
    assert engine.best_prices("BTC/USD") == (D(100), None)
    assert engine.book("BTC/USD").bids == [(D(100), D("0.6"))]


def test_ioc_remainder_is_cancelled_not_rested(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "0.4", "100"))
    events = engine.submit(order("b", "b", "buy", "1", "100", tif="IOC"))
    cancels = of_type(events, OrderCancelled)
    assert [(c.client_order_id, c.reason, c.filled_qty, c.remaining_qty) for c in cancels] == [
        ("b", CancelReason.IOC_REMAINDER, D("0.4"), D(0))
    ]
    assert engine.best_prices("BTC/USD") == (None, None)
    assert engine.open_orders("b") == []


def test_ioc_that_cannot_trade_is_cancelled_whole(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "101"))
    events = engine.submit(order("b", "b", "buy", "1", "100", tif="IOC"))
    assert [type(e) for e in events] == [OrderAccepted, OrderCancelled]  # the book never moved


def test_market_order_sweeps_levels_until_filled(engine: MatchingEngine) -> None:
    engine.submit(order("s1", "a", "sell", "1", "100"))
    engine.submit(order("s2", "a", "sell", "1", "101"))
    engine.submit(order("s3", "a", "sell", "1", "102"))
    events = engine.submit(order("m", "b", "buy", "2.5"))
    taker = [(qty, px) for _, cid, qty, px, liq in fills(events) if liq == "taker"]
    assert taker == [(D(1), D(100)), (D(1), D(101)), (D("0.5"), D(102))]
    done = engine.order("b", "m")
    assert done is not None and done.status is OrderStatus.FILLED
    assert done.avg_price == D("100.8")  # (100 + 101 + 0.5 * 102) / 2.5
    assert engine.book("BTC/USD").asks == [(D(102), D("0.5"))]


def test_market_order_on_a_thin_book_cancels_what_is_left(engine: MatchingEngine) -> None:
    engine.submit(order("s1", "a", "sell", "1", "100"))
    events = engine.submit(order("m", "b", "buy", "3"))
    (cancel,) = of_type(events, OrderCancelled)
    assert cancel.reason is CancelReason.NO_LIQUIDITY and cancel.filled_qty == D(1)
    assert engine.open_orders("b") == []


def test_every_operation_ends_with_one_delta_and_a_ticker_when_the_top_moves(
    engine: MatchingEngine,
) -> None:
    events = engine.submit(order("s1", "a", "sell", "1", "100"))
    assert isinstance(events[-2], BookDelta) and isinstance(events[-1], Ticker)
    assert events[-2].asks == [(D(100), D(1))] and events[-1].ask == D(100)
    deeper = engine.submit(order("s2", "a", "sell", "1", "105"))
    assert isinstance(deeper[-1], BookDelta)  # top unchanged: no ticker
    assert deeper[-1].update_id == events[-2].update_id + 1


# ---------------------------------------------------------------- fees and ledger


def test_fees_are_charged_by_liquidity_in_quote_currency(fees_engine: MatchingEngine) -> None:
    fees_engine.submit(order("s", "a", "sell", "2", "100"))
    events = fees_engine.submit(order("b", "b", "buy", "2", "100"))
    by_account = {e.account: e.fill for e in events if isinstance(e, OrderFilled)}
    assert by_account["a"].liquidity is Liquidity.MAKER and by_account["a"].fee == D("0.2")
    assert by_account["b"].liquidity is Liquidity.TAKER and by_account["b"].fee == D("0.4")
    assert by_account["a"].fee_currency == "USD"

    ledger = fees_engine.ledger
    assert ledger.cash("a") == {"USD": D(10_000) + D(200) - D("0.2")}
    assert ledger.cash("b") == {"USD": D(10_000) - D(200) - D("0.4")}
    assert ledger.position_qty("a", "BTC/USD") == D(-2)
    assert ledger.position_qty("b", "BTC/USD") == D(2)
    assert ledger.fees_paid("b") == {"USD": D("0.4")}


def test_maker_rebate_is_a_negative_fee() -> None:
    engine = make_engine(maker_bps="-1", taker_bps="3")
    engine.submit(order("s", "a", "sell", "1", "100"))
    engine.submit(order("b", "b", "buy", "1", "100"))
    assert engine.ledger.cash("a") == {"USD": D(10_000) + D(100) + D("0.01")}


def test_position_average_price_and_realized_pnl() -> None:
    engine = make_engine()
    engine.submit(order("s1", "a", "sell", "1", "100"))
    engine.submit(order("s2", "a", "sell", "1", "110"))
    engine.submit(order("b1", "b", "buy", "2", "110"))  # b long 2 @ 105
    pos = engine.ledger.positions("b")["BTC/USD"]
    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (D(2), D(105), D(0))
    engine.submit(order("c1", "c", "buy", "0.5", "120"))
    engine.submit(order("x", "b", "sell", "0.5", "120"))  # b sells 0.5 @ 120 to c
    pos = engine.ledger.positions("b")["BTC/USD"]
    assert (pos.qty, pos.avg_price, pos.realized_pnl) == (D("1.5"), D(105), D("7.5"))


def test_ledger_changes_equal_fills_and_fees(fees_engine: MatchingEngine) -> None:
    all_events: list[EngineEvent] = []
    all_events += fees_engine.submit(order("s1", "a", "sell", "1.5", "100"))
    all_events += fees_engine.submit(order("s2", "c", "sell", "1", "100.5"))
    all_events += fees_engine.submit(order("m", "b", "buy", "2"))
    all_events += fees_engine.submit(order("b2", "a", "buy", "1", "99"))
    all_events += fees_engine.submit(order("s3", "b", "sell", "0.7", "98"))
    for account in ("a", "b", "c"):
        account_fills = [
            e.fill
            for e in all_events
            if isinstance(e, OrderPartiallyFilled | OrderFilled) and e.account == account
        ]
        cash = D(10_000)
        qty = D(0)
        for fill in account_fills:
            sign = 1 if fill.side == "buy" else -1
            cash += -sign * fill.price * fill.qty - fill.fee
            qty += sign * fill.qty
        assert fees_engine.ledger.cash(account)["USD"] == cash
        assert fees_engine.ledger.position_qty(account, "BTC/USD") == qty
        assert fees_engine.fills(account) == account_fills


# ---------------------------------------------------------------- trading rules


@pytest.mark.parametrize(
    ("price", "qty", "code"),
    [
        ("100.25", "1", ErrorCode.PRICE_OFF_TICK),
        ("100", "1.05", ErrorCode.QTY_OFF_LOT),
        ("100", "0.1", ErrorCode.QTY_BELOW_MIN),
    ],
)
def test_orders_breaking_the_instrument_rules_are_refused(
    engine: MatchingEngine, price: str, qty: str, code: ErrorCode
) -> None:
    with pytest.raises(OrderRefused) as caught:
        engine.submit(order("x", "a", "buy", qty, price))
    assert caught.value.code is code
    assert engine.order("a", "x") is None  # a refusal leaves nothing behind


def test_unknown_instrument_account_and_duplicate_ids_are_refused(engine: MatchingEngine) -> None:
    with pytest.raises(OrderRefused) as caught:
        engine.submit(order("x", "a", "buy", "1", "100", instrument="ETH/USD"))
    assert caught.value.code is ErrorCode.UNKNOWN_INSTRUMENT
    with pytest.raises(OrderRefused) as caught:
        engine.submit(order("x", "nobody", "buy", "1", "100"))
    assert caught.value.code is ErrorCode.UNKNOWN_ACCOUNT
    engine.submit(order("x", "a", "buy", "1", "100"))
    with pytest.raises(OrderRefused) as caught:
        engine.submit(order("x", "a", "buy", "1", "100"))
    assert caught.value.code is ErrorCode.DUPLICATE_ORDER
    engine.submit(order("x", "b", "buy", "1", "100"))  # ids are per account


# ---------------------------------------------------------------- cancel and modify


def test_cancel_removes_the_order_and_a_second_cancel_is_refused(engine: MatchingEngine) -> None:
    engine.submit(order("b", "a", "buy", "1", "99"))
    events = engine.cancel("a", "b")
    assert [(e.client_order_id, e.reason) for e in of_type(events, OrderCancelled)] == [
        ("b", CancelReason.REQUESTED)
    ]
    assert engine.book("BTC/USD").bids == []
    with pytest.raises(OrderRefused) as caught:
        engine.cancel("a", "b")
    assert caught.value.code is ErrorCode.ORDER_NOT_CANCELLABLE
    with pytest.raises(OrderRefused) as caught:
        engine.cancel("a", "never")
    assert caught.value.code is ErrorCode.ORDER_NOT_FOUND


def test_cancel_of_a_filled_order_is_refused(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "100"))
    engine.submit(order("b", "b", "buy", "1", "100"))
    with pytest.raises(OrderRefused) as caught:
        engine.cancel("a", "s")
    assert caught.value.code is ErrorCode.ORDER_NOT_CANCELLABLE


def test_reducing_qty_keeps_priority(engine: MatchingEngine) -> None:
    engine.submit(order("first", "a", "buy", "2", "99"))
    engine.submit(order("second", "b", "buy", "1", "99"))
    (modified,) = of_type(engine.modify("a", "first", qty=D(1)), OrderModified)
    assert modified.qty == D(1) and modified.remaining_qty == D(1)
    events = engine.submit(order("hit", "c", "sell", "1", "99"))
    assert [cid for _, cid, _, _, liq in fills(events) if liq == "maker"] == ["first"]


@pytest.mark.parametrize("change", [{"qty": D(3)}, {"price": D("98.5")}])
def test_increasing_qty_or_changing_price_loses_priority(
    engine: MatchingEngine, change: dict[str, Decimal]
) -> None:
    engine.submit(order("first", "a", "buy", "2", "99"))
    engine.submit(order("second", "b", "buy", "1", "99"))
    engine.modify("a", "first", **change)
    if "price" in change:
        engine.modify("a", "first", price=D(99))  # back at 99, now behind "second"
    events = engine.submit(order("hit", "c", "sell", "1", "99"))
    assert [cid for _, cid, _, _, liq in fills(events) if liq == "maker"] == ["second"]


def test_modify_to_a_crossing_price_trades_as_taker(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "100"))
    engine.submit(order("b", "b", "buy", "1", "99"))
    events = engine.modify("b", "b", price=D(100))
    assert isinstance(events[0], OrderModified)
    assert ("b", "b", D(1), D(100), Liquidity.TAKER) in fills(events)


def test_modify_rules(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "100"))
    engine.submit(order("b", "b", "buy", "2", "100"))  # 1 filled, 1 resting
    with pytest.raises(OrderRefused) as caught:
        engine.modify("b", "b", qty=D(1))  # not above the filled qty
    assert caught.value.code is ErrorCode.INVALID_ORDER
    with pytest.raises(OrderRefused) as caught:
        engine.modify("b", "b", price=D("100.1"))
    assert caught.value.code is ErrorCode.PRICE_OFF_TICK
    with pytest.raises(OrderRefused) as caught:
        engine.modify("a", "s", qty=D(5))
    assert caught.value.code is ErrorCode.ORDER_NOT_MODIFIABLE  # s is filled
    (modified,) = of_type(engine.modify("b", "b", qty=D("1.5")), OrderModified)
    assert (modified.status, modified.filled_qty, modified.remaining_qty) == (
        OrderStatus.PARTIALLY_FILLED,
        D(1),
        D("0.5"),
    )
    assert engine.book("BTC/USD").bids == [(D(100), D("0.5"))]


def test_forget_closed_keeps_working_orders_and_the_ledger(engine: MatchingEngine) -> None:
    engine.submit(order("s", "a", "sell", "1", "100"))
    engine.submit(order("b", "b", "buy", "1", "100"))
    engine.submit(order("rest", "a", "sell", "1", "101"))
    cash = engine.ledger.cash("a")
    engine.forget_closed("a")
    assert engine.order("a", "s") is None and engine.is_working("a", "rest")
    assert engine.fills("a") == [] and engine.ledger.cash("a") == cash


# ---------------------------------------------------------------- batches and quiet accounts


def test_a_batch_reports_its_book_changes_once_at_the_end(engine: MatchingEngine) -> None:
    engine.submit(order("s1", "a", "sell", "1", "101"))
    with engine.batch() as tail:
        events = engine.submit(order("b1", "b", "buy", "1", "99"))
        events += engine.submit(order("b2", "b", "buy", "2", "99.5"))
        events += engine.cancel("b", "b1")
        assert not of_type(events, BookDelta) and not of_type(events, Ticker)
        assert tail == []
    # One delta with the net change of each touched level, then one ticker.
    assert [type(e) for e in tail] == [BookDelta, Ticker]
    delta = tail[0]
    assert isinstance(delta, BookDelta)
    assert delta.bids == [(D("99.5"), D(2)), (D(99), D(0))] and delta.asks == []
    assert engine.ticker("BTC/USD").bid == D("99.5")
    # Outside a batch every operation reports its own change again.
    assert of_type(engine.submit(order("b3", "b", "buy", "1", "98")), BookDelta)
    with pytest.raises(RuntimeError, match="do not nest"), engine.batch(), engine.batch():
        pass


def test_a_quiet_account_gets_no_acknowledgements_but_its_fills_are_reported(
        engine: MatchingEngine) -> None:
    engine.open_account("house", {"USD": D(1_000_000), "BTC": D(100)}, quiet=True)
    assert not of_type(engine.submit(order("h1", "house", "sell", "1", "100")), OrderAccepted)
    events = engine.submit(order("t1", "a", "buy", "0.4", "100"))
    assert [(acc, cid) for acc, cid, *_ in fills(events)] == [("house", "h1"), ("a", "t1")]
    assert [e.account for e in of_type(events, OrderAccepted)] == ["a"]
    assert not of_type(engine.modify("house", "h1", qty=D("0.8")), OrderModified)
    assert not of_type(engine.cancel("house", "h1"), OrderCancelled)
    done = engine.order("house", "h1")
    assert done is not None and done.status is OrderStatus.CANCELLED  # the state is kept
