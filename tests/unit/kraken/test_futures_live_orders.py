"""OrderTracker: Kraken Futures REST answers + fills/open_orders frames -> order events."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocol.market import Side
from protocol.orders import (
    LEGAL_TRANSITIONS,
    CancelReason,
    Liquidity,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.orders import (
    OrderTracker,
    edited_to,
    executed_amount,
    fill_from_rest,
    format_iso_ms,
    parse_iso_ns,
    snapshot_from_rest,
)

PRODUCTS = {"PI_XBTUSD": "BTC/USD", "PI_ETHUSD": "ETH/USD"}
NOW = 1_700_000_000_000_000_000


def instrument_of(product_id: str) -> str | None:
    return PRODUCTS.get(product_id.upper())


def tracker() -> OrderTracker:
    return OrderTracker("acct", instrument_of)


def begin(
    t: OrderTracker,
    cid: str = "c1",
    qty: str = "10",
    price: str | None = "100",
    tif: TimeInForce = TimeInForce.GTC,
    order_type: OrderType = OrderType.LIMIT,
) -> None:
    t.begin(
        client_order_id=cid,
        instrument="BTC/USD",
        product_id="PI_XBTUSD",
        side=Side.BUY,
        order_type=order_type,
        time_in_force=tif,
        qty=Decimal(qty),
        price=Decimal(price) if price is not None else None,
    )


def fill(
    fill_id: str,
    qty: str,
    remaining: str,
    *,
    order_id: str = "o1",
    cid: str | None = "c1",
    price: str = "100",
    time: int = 1_000,
    fill_type: str = "maker",
) -> schemas.FillsMessage:
    one = schemas.Fill(
        instrument="PI_XBTUSD",
        time=time,
        price=Decimal(price),
        seq=1,
        buy=True,
        qty=Decimal(qty),
        remaining_order_qty=Decimal(remaining),
        order_id=order_id,
        fill_id=fill_id,
        fill_type=fill_type,
        fee_paid=Decimal("0.0000001"),
        fee_currency="XBT",
        cli_ord_id=cid,
        taker_order_type="limit",
        order_type="limit",
    )
    return schemas.FillsMessage("fills", "acct", (one,))


def placed(
    *,
    order_id: str = "o1",
    cid: str | None = "c1",
    qty: str = "10",
    filled: str = "0",
    price: str = "100",
    reason: str = "new_placed_order_by_user",
) -> schemas.OpenOrdersMessage:
    order = schemas.OpenOrder(
        instrument="PI_XBTUSD",
        time=900,
        last_update_time=950,
        qty=Decimal(qty),
        filled=Decimal(filled),
        limit_price=Decimal(price),
        stop_price=None,
        type="limit",
        order_id=order_id,
        direction=0,
        reduce_only=False,
        cli_ord_id=cid,
    )
    return schemas.OpenOrdersMessage("open_orders", order, order_id, False, reason)


def removed(order_id: str = "o1", reason: str = "cancelled_by_user") -> schemas.OpenOrdersMessage:
    return schemas.OpenOrdersMessage("open_orders", None, order_id, True, reason)


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


# ---------------------------------------------------------------- acceptance


def test_acceptance_comes_first_even_when_the_feed_is_faster() -> None:
    t = tracker()
    begin(t)
    assert t.on_open_orders(placed(), NOW) == []  # held until sendorder answers
    assert t.on_fills(fill("f1", "4", "6"), NOW) == []
    events = t.accepted("c1", "o1", NOW)
    assert kinds(events) == ["OrderAccepted", "OrderPartiallyFilled"]
    part = events[1]
    assert isinstance(part, OrderPartiallyFilled)
    assert (part.filled_qty, part.remaining_qty, part.order_id) == (Decimal(4), Decimal(6), "o1")
    assert part.fill.liquidity is Liquidity.MAKER and part.fill.fee_currency == "BTC"
    (done,) = t.on_fills(fill("f2", "6", "0", price="101"), NOW)
    assert isinstance(done, OrderFilled) and done.avg_price == Decimal("100.6")
    assert t.on_open_orders(removed(reason="full_fill"), NOW) == []  # the fill finished it


def test_a_refused_order_leaves_no_trace() -> None:
    t = tracker()
    begin(t)
    assert t.on_open_orders(removed(reason="post_order_failed_because_it_would_filled"), NOW) == []
    t.rejected("c1", "o1")
    assert t.on_open_orders(placed(), NOW) == []
    assert t.on_fills(fill("f9", "1", "9"), NOW) == []
    assert t.get("c1") is not None and t.get("c1").silent  # type: ignore[union-attr]


def test_an_id_refused_locally_is_free_again() -> None:
    t = tracker()
    begin(t)
    t.forget("c1")
    assert t.get("c1") is None


def test_fills_are_counted_once() -> None:
    t = tracker()
    begin(t)
    t.accepted("c1", "o1", NOW)
    first = t.on_fills(fill("f1", "3", "7"), NOW)
    snapshot = schemas.FillsMessage("fills_snapshot", "acct", fill("f1", "3", "7").fills)
    assert len(first) == 1 and t.on_fills(snapshot, NOW) == []
    assert t.fee_of("f1") == (Decimal("0.0000001"), "BTC")


def test_frames_without_a_client_id_wait_for_the_order_id() -> None:
    t = tracker()
    assert t.on_fills(fill("f1", "10", "0", order_id="o7", cid=None), NOW) == []
    begin(t, "c7")
    assert kinds(t.accepted("c7", "o7", NOW)) == ["OrderAccepted", "OrderFilled"]


def test_unresolved_order_is_reported_by_the_feed() -> None:
    t = tracker()
    begin(t)
    assert t.on_open_orders(placed(), NOW) == []
    events = t.unresolved("c1", NOW)
    assert kinds(events) == ["OrderAccepted"] and events[0].order_id == "o1"


# ---------------------------------------------------------------- immediate orders


def test_an_ioc_rest_is_cancelled_once_its_fills_arrived() -> None:
    t = tracker()
    begin(t, tif=TimeInForce.IOC)
    assert kinds(t.accepted("c1", "o1", NOW, executed=Decimal(4))) == ["OrderAccepted"]
    events = t.on_fills(fill("f1", "4", "6", fill_type="taker"), NOW)
    assert kinds(events) == ["OrderPartiallyFilled", "OrderCancelled"]
    cancelled = events[1]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason is CancelReason.IOC_REMAINDER and cancelled.filled_qty == 4


def test_a_market_order_that_found_nothing_ends_at_once() -> None:
    t = tracker()
    begin(t, price=None, order_type=OrderType.MARKET)
    events = t.accepted("c1", "o1", NOW, executed=Decimal(0))
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]
    cancelled = events[1]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason is CancelReason.NO_LIQUIDITY


# ---------------------------------------------------------------- changes


def test_an_edit_told_twice_is_reported_once() -> None:
    t = tracker()
    begin(t)
    t.accepted("c1", "o1", NOW)
    (modified,) = t.on_open_orders(placed(qty="12", price="99", reason="edited_by_user"), NOW)
    assert isinstance(modified, OrderModified) and (modified.qty, modified.price) == (
        Decimal(12),
        Decimal(99),
    )
    assert t.edited("c1", NOW, qty=Decimal(12), price=Decimal(99)) == []


def test_cancels_and_expiry() -> None:
    t = tracker()
    begin(t, "a")
    begin(t, "b")
    t.accepted("a", "oa", NOW)
    t.accepted("b", "ob", NOW)
    (cancelled,) = t.on_open_orders(removed("oa", "would_execute_self"), NOW)
    assert isinstance(cancelled, OrderCancelled) and cancelled.reason is CancelReason.SELF_TRADE
    assert cancelled.ts == NOW  # the cancel form carries no time: the receive time
    assert t.cancelled("a", NOW) == []  # the REST answer after the feed: once
    (expired,) = t.on_open_orders(removed("ob", "contract_expired"), NOW)
    assert isinstance(expired, OrderExpired) and expired.remaining_qty == 0


def test_a_fill_after_the_cancel_is_left_to_reconciliation() -> None:
    t = tracker()
    begin(t)
    t.accepted("c1", "o1", NOW)
    t.cancelled("c1", NOW)
    assert t.on_fills(fill("late", "2", "0"), NOW) == []
    (note,) = t.drain_anomalies()
    assert "late" in note and "reconciliation" in note


# ---------------------------------------------------------------- learning


def test_orders_of_a_previous_session_are_learnt_from_the_feed(exchange_data: Path) -> None:
    docs = schemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    frame = schemas.parse_frame(docs["ws_open_orders_delta_new"])
    assert isinstance(frame, schemas.OpenOrdersMessage) and frame.order is not None
    t = tracker()
    # the documented frame has no cli_ord_id: not ours to report
    assert t.on_open_orders(frame, NOW) == []
    ours = replace(frame, order=replace(frame.order, cli_ord_id="prev-1"))
    assert t.on_open_orders(ours, NOW) == []  # learnt silently
    learnt = t.get("prev-1")
    assert learnt is not None and learnt.side is Side.SELL and learnt.qty == Decimal("304.0")
    (cancelled,) = t.on_open_orders(removed(frame.order_id), NOW)
    assert isinstance(cancelled, OrderCancelled) and cancelled.client_order_id == "prev-1"
    assert (cancelled.instrument, cancelled.price) == ("BTC/USD", Decimal("10640.0"))


def test_documented_fills_of_unknown_orders_produce_nothing(exchange_data: Path) -> None:
    docs = schemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    snapshot = schemas.parse_frame(docs["ws_fills_snapshot"])
    assert isinstance(snapshot, schemas.FillsMessage)
    assert tracker().on_fills(snapshot, NOW) == []


# ---------------------------------------------------------------- property


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5),
    answer_at=st.integers(min_value=0, max_value=20),
    with_cid=st.booleans(),
    repeats=st.lists(st.booleans(), min_size=5, max_size=5),
    complete=st.booleans(),
)
def test_any_interleaving_gives_one_legal_story(
    sizes: list[int], answer_at: int, with_cid: bool, repeats: list[bool], complete: bool
) -> None:
    total = sum(sizes) + (0 if complete else 7)
    feed: list[schemas.FillsMessage | schemas.OpenOrdersMessage] = [
        placed(qty=str(total), cid="c1" if with_cid else None)
    ]
    left = total
    for i, size in enumerate(sizes):
        left -= size
        message = fill(f"f{i}", str(size), str(left), cid="c1" if with_cid else None)
        feed.append(message)
        if repeats[i]:
            feed.append(replace(message, feed="fills_snapshot"))  # redelivered
    if complete:
        feed.append(removed(reason="full_fill"))
    t = tracker()
    begin(t, qty=str(total))
    events: list[Any] = []
    for position, frame in enumerate(feed):
        if position == min(answer_at, len(feed)):
            events += t.accepted("c1", "o1", NOW)
        if isinstance(frame, schemas.FillsMessage):
            events += t.on_fills(frame, NOW)
        else:
            events += t.on_open_orders(frame, NOW)
    if answer_at >= len(feed):
        events += t.accepted("c1", "o1", NOW)

    assert isinstance(events[0], OrderAccepted)
    assert sum(isinstance(e, OrderAccepted) for e in events) == 1
    status = OrderStatus.PENDING
    for event in events:
        assert event.status in LEGAL_TRANSITIONS[status] or event.status is status
        status = event.status
    fills = [e.fill for e in events if isinstance(e, (OrderPartiallyFilled, OrderFilled))]
    assert [f.qty for f in fills] == sizes  # each once, in order
    assert events[-1].filled_qty == sum(sizes)
    assert isinstance(events[-1], OrderFilled) == complete


# ---------------------------------------------------------------- REST shapes


def test_rest_answers(exchange_data: Path) -> None:
    docs = schemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    executed = docs["rest_sendorder_executed"]["sendStatus"]["orderEvents"]
    assert executed_amount(executed) == 10
    assert executed_amount(docs["rest_sendorder_placed"]["sendStatus"]["orderEvents"]) == 0
    edit = [{"type": "EDIT", "old": {}, "new": {"quantity": Decimal(1501), "limitPrice": 7200}}]
    assert edited_to(edit) == (Decimal(1501), Decimal(7200))
    assert edited_to([]) is None

    item = {
        "order_id": "o1",
        "cliOrdId": "c1",
        "symbol": "PI_XBTUSD",
        "side": "sell",
        "orderType": "lmt",
        "limitPrice": Decimal(10640),
        "unfilledSize": 304,
        "receivedTime": "2019-09-05T17:01:17.410Z",
        "status": "untouched",
        "filledSize": 6,
        "lastUpdateTime": "2019-09-05T17:01:17.410Z",
    }
    snapshot = snapshot_from_rest(item, "acct", instrument_of, None)
    assert snapshot is not None and (snapshot.qty, snapshot.filled_qty) == (
        Decimal(310),
        Decimal(6),
    )
    assert snapshot.status is OrderStatus.PARTIALLY_FILLED and snapshot.side is Side.SELL
    assert snapshot_from_rest({**item, "cliOrdId": None}, "acct", instrument_of, None) is None

    rest_fill = {
        "fill_id": "f1",
        "symbol": "PI_XBTUSD",
        "side": "buy",
        "order_id": "o1",
        "size": 5490,
        "price": 9400,
        "fillTime": "2020-07-22T13:37:27.077Z",
        "fillType": "maker",
    }
    no_cids: dict[str, str] = {}
    no_fees: dict[str, tuple[Decimal, str]] = {}
    known = fill_from_rest(
        rest_fill, "acct", instrument_of, {"o1": "c1"}.get, no_fees.get, lambda _: "BTC"
    )
    assert known is not None and (known.client_order_id, known.fee, known.fee_currency) == (
        "c1",
        Decimal(0),
        "BTC",
    )
    assert known.ts == parse_iso_ns("2020-07-22T13:37:27.077Z")
    assert fill_from_rest(rest_fill, "acct", instrument_of, no_cids.get, no_fees.get, str) is None


def test_iso_times_are_exact() -> None:
    assert parse_iso_ns("1970-01-01T00:00:01.001Z") == 1_001_000_000
    ns = parse_iso_ns("2019-09-05T16:33:50.734Z")
    assert format_iso_ms(ns) == "2019-09-05T16:33:50.734Z"
