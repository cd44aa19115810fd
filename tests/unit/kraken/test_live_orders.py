"""The live adapter's order core: Kraken execution reports (documented and REST-recorded
shapes) turned into protocol order events with fills -- no socket involved."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.market import Side
from protocol.orders import (
    CancelReason,
    Liquidity,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderStatus,
    TimeInForce,
)
from workers.broker.adapters.kraken.errors import MalformedMessage
from workers.broker.adapters.kraken.orders import (
    OrderTracker,
    RestTrade,
    fill_from_rest,
    foreign_client_order_id,
    rest_order_reports,
    snapshot_from_rest,
)
from workers.broker.adapters.kraken.schemas import ExecutionReport, ExecutionsMessage, parse_frame

from .recordings import load

D = Decimal
NOW = 1_700_000_000_000_000_000
ACCOUNT = "kraken-main"


def frame(data: list[dict[str, Any]], sequence: int = 1, kind: str = "update") -> ExecutionsMessage:
    parsed = parse_frame(
        {"channel": "executions", "type": kind, "data": data, "sequence": sequence}
    )
    assert isinstance(parsed, ExecutionsMessage)
    return parsed


def ours(tracker: OrderTracker, **overrides: Any) -> NewOrder:
    fields: dict[str, Any] = {
        "client_order_id": "algo-7",
        "account": ACCOUNT,
        "instrument": "BTC/USD",
        "side": Side.SELL,
        "qty": "0.010",
        "price": "26500.0",
    }
    fields.update(overrides)
    request = NewOrder.model_validate(fields)
    tracker.expect(request, request.client_order_id, NOW)
    return request


def trade(
    exec_id: str, qty: str, price: str, *, cum: str | None = None, **extra: Any
) -> dict[str, Any]:
    report = {
        "order_id": "OK4GJX-KSTLS-7DZZO5",
        "exec_id": exec_id,
        "exec_type": "trade",
        "last_qty": D(qty),
        "last_price": D(price),
        "liquidity_ind": "m",
        "fees": [{"asset": "USD", "qty": D("0.0100")}],
        "timestamp": "2023-09-22T10:33:05.709993Z",
    }
    if cum is not None:
        report["cum_qty"] = D(cum)
    report.update(extra)
    return report


@pytest.fixture(scope="module")
def doc(exchange_data: Path) -> dict[str, Any]:
    data: dict[str, Any] = load(exchange_data / "kraken_spot_v2/v2_doc_examples.json")
    return data


@pytest.fixture(scope="module")
def rest(exchange_data: Path) -> dict[str, Any]:
    data: dict[str, Any] = load(exchange_data / "kraken_rest/kraken_rest_real_responses.json")
    return data


def test_the_documented_pending_new_new_trade_sequence(doc: dict[str, Any]) -> None:
    """An order placed outside tradefleet (order_userref 3): learned from pending_new."""
    tracker = OrderTracker(ACCOUNT)
    events = []
    for raw in doc["executions_sequence_pending_new_new_trade"]:
        parsed = parse_frame(raw)
        assert isinstance(parsed, ExecutionsMessage)
        events += tracker.receive(parsed, NOW)
    accepted, filled = events
    assert isinstance(accepted, OrderAccepted) and isinstance(filled, OrderFilled)
    assert accepted.client_order_id == "kraken:OK4GJX-KSTLS-7DZZO5"
    assert (accepted.qty, accepted.price, accepted.side) == (D("0.005"), D("26500.0"), Side.SELL)
    assert accepted.ts == 1695378785_709982000
    fill = filled.fill
    assert (fill.fill_id, fill.qty, fill.price) == ("TGBB7L-HT5LX-J3BZ4A", D("0.005"), D("26599.9"))
    assert (fill.fee, fill.fee_currency, fill.liquidity) == (D("0.3458"), "USD", Liquidity.TAKER)
    assert (filled.status, filled.filled_qty, filled.remaining_qty) == (
        OrderStatus.FILLED,
        D("0.005"),
        D(0),
    )
    assert filled.avg_price == D("26599.9")
    assert tracker.needs_resync is False


def test_our_order_reported_before_its_ack_is_matched_by_cl_ord_id() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    pending = {
        "order_id": "OA",
        "cl_ord_id": "algo-7",
        "exec_type": "pending_new",
        "order_status": "pending_new",
        "symbol": "BTC/USD",
        "order_qty": D("0.010"),
    }
    assert tracker.receive(frame([pending]), NOW) == []
    tracker.acknowledged("algo-7", "OA")
    (accepted,) = tracker.receive(frame([{"order_id": "OA", "exec_type": "new"}]), NOW)
    assert isinstance(accepted, OrderAccepted)
    assert (accepted.client_order_id, accepted.order_id, accepted.qty) == (
        "algo-7",
        "OA",
        D("0.010"),
    )


def test_partial_fills_then_the_last_fill_completes_the_order_each_fill_once() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    tracker.acknowledged("algo-7", "OK4GJX-KSTLS-7DZZO5")
    first = tracker.receive(frame([trade("T1", "0.004", "26500.0", cum="0.004")]), NOW)
    assert [type(e) for e in first] == [OrderAccepted, OrderPartiallyFilled]
    partial = first[1]
    assert isinstance(partial, OrderPartiallyFilled)
    assert (partial.filled_qty, partial.remaining_qty, partial.fill.liquidity) == (
        D("0.004"),
        D("0.006"),
        Liquidity.MAKER,
    )
    assert tracker.receive(frame([trade("T1", "0.004", "26500.0")]), NOW) == []  # duplicate
    (done,) = tracker.receive(frame([trade("T2", "0.006", "26501.0")]), NOW)
    assert isinstance(done, OrderFilled) and done.filled_qty == D("0.010")
    assert done.avg_price == (D("0.004") * D("26500.0") + D("0.006") * D("26501.0")) / D("0.010")
    assert (
        tracker.receive(frame([{"order_id": "OK4GJX-KSTLS-7DZZO5", "exec_type": "filled"}]), NOW)
        == []
    )


@pytest.mark.parametrize(
    ("requested", "tif", "reason_text", "reason"),
    [
        (True, TimeInForce.GTC, "User requested", CancelReason.REQUESTED),
        (False, TimeInForce.IOC, "Immediate or cancel", CancelReason.IOC_REMAINDER),
        (False, TimeInForce.GTC, "Self trade prevention", CancelReason.SELF_TRADE),
        (False, TimeInForce.GTC, "Post only order", CancelReason.VENUE),
    ],
)
def test_cancel_reasons(
    requested: bool, tif: TimeInForce, reason_text: str, reason: CancelReason
) -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker, time_in_force=tif)
    tracker.acknowledged("algo-7", "OA")
    tracker.receive(frame([{"order_id": "OA", "exec_type": "new"}]), NOW)
    order = tracker.find("algo-7")
    assert order is not None
    order.cancel_requested = requested
    cancel = {
        "order_id": "OA",
        "exec_type": "canceled",
        "order_status": "canceled",
        "cum_qty": D("0"),
        "cancel_reason": reason_text,
        "reason": reason_text,
    }
    (cancelled,) = tracker.receive(frame([cancel]), NOW)
    assert isinstance(cancelled, OrderCancelled)
    assert (cancelled.reason, cancelled.message, cancelled.remaining_qty) == (
        reason,
        reason_text,
        D(0),
    )
    assert tracker.unfinished() == []


def test_an_amend_reports_the_new_terms() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    tracker.acknowledged("algo-7", "6LYQGW-FH922-U6JTUM")
    amend = {
        "timestamp": "2024-10-13T13:38:39.273886Z",
        "exec_type": "amended",
        "order_status": "new",
        "cum_qty": D("0E-8"),
        "reason": "User requested",
        "amended": True,
        "order_qty": D("5.10000000"),
        "limit_price": D("0.9600"),
        "limit_price_type": "static",
        "order_userref": 0,
        "order_id": "6LYQGW-FH922-U6JTUM",
    }
    accepted, modified = tracker.receive(frame([amend]), NOW)
    assert isinstance(accepted, OrderAccepted) and isinstance(modified, OrderModified)
    assert (modified.qty, modified.price, modified.status) == (
        D("5.1"),
        D("0.96"),
        OrderStatus.ACCEPTED,
    )


def test_a_fill_before_any_new_report_still_starts_with_order_accepted() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    tracker.acknowledged("algo-7", "OK4GJX-KSTLS-7DZZO5")
    events = tracker.receive(frame([trade("T1", "0.010", "26500.0")]), NOW)
    assert [type(e) for e in events] == [OrderAccepted, OrderFilled]


def test_reports_that_cannot_be_applied_ask_for_a_resync() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    tracker.acknowledged("algo-7", "OA")
    tracker.receive(frame([{"order_id": "OA", "exec_type": "filled"}]), NOW)  # fills never seen
    assert tracker.needs_resync
    tracker.needs_resync = False
    tracker.receive(frame([{"order_id": "OZ", "exec_type": "new"}]), NOW)  # unknown, no terms
    assert tracker.needs_resync


def test_a_snapshot_teaches_open_orders_and_notices_what_ended_meanwhile() -> None:
    tracker = OrderTracker(ACCOUNT)
    ours(tracker)
    tracker.acknowledged("algo-7", "OA")
    tracker.receive(frame([{"order_id": "OA", "exec_type": "new"}]), NOW)
    listed = {
        "order_id": "OB",
        "exec_type": "new",
        "order_status": "new",
        "symbol": "ETH/USD",
        "side": "buy",
        "order_type": "limit",
        "order_qty": D("1.5"),
        "limit_price": D("1800.00"),
        "cl_ord_id": "manual-1",
        "time_in_force": "GTC",
    }
    (learned,) = tracker.receive(frame([listed], kind="snapshot"), NOW)
    assert isinstance(learned, OrderAccepted) and learned.client_order_id == "manual-1"
    assert tracker.needs_resync  # OA is no longer open and we never heard how it ended


def test_foreign_ids() -> None:
    assert foreign_client_order_id("manual-1", "OA") == "manual-1"
    assert foreign_client_order_id("has spaces", "OA") == "kraken:OA"
    assert foreign_client_order_id(None, "OA") == "kraken:OA"


# ---------------------------------------------------------------- REST records


def test_a_recorded_rest_order_and_its_trade_bring_the_tracker_up_to_date(
    rest: dict[str, Any],
) -> None:
    """The real QueryOrders answer of a filled LTC/USDT market order (ccxt recording)."""
    txid, info = next(iter(rest["QueryOrders_closed_market"]["result"].items()))
    fill = RestTrade(
        txid=info["trades"][0],
        order_id=txid,
        pair="LTCUSDT",
        side=Side.BUY,
        price=D("71.05741"),
        qty=D("0.10000000"),
        cost=D("7.105741"),
        fee=D("0.018475"),
        maker=False,
        ts=1705260547_472000000,
    )
    reports = rest_order_reports(txid, info, symbol="LTC/USDT", trades=[fill])
    assert [r.exec_type for r in reports] == ["pending_new", "new", "restated", "trade", "filled"]
    tracker = OrderTracker(ACCOUNT)
    events = [e for report in reports for e in tracker.apply(report, NOW)]
    accepted, filled = events
    assert accepted.client_order_id == "kraken:OGMZCL-KC6MC-ZRBGM6"
    assert isinstance(filled, OrderFilled)
    assert (filled.fill.fill_id, filled.fill.fee, filled.fill.fee_currency) == (
        "TWA6QJ-ZO4EM-6QIHQJ",
        D("0.018475"),
        "USDT",
    )
    assert filled.order_type == "market" and filled.price is None
    # Applying the same REST answer again changes nothing.
    assert [e for report in reports for e in tracker.apply(report, NOW)] == []


def test_a_recorded_open_order_becomes_a_snapshot(rest: dict[str, Any]) -> None:
    txid, info = next(iter(rest["QueryOrders_open_limit_post_only"]["result"].items()))
    snapshot = snapshot_from_rest(
        txid,
        info,
        account=ACCOUNT,
        instrument="LTC/USDT",
        client_order_id="kraken:" + txid,
        now_ns=NOW,
    )
    assert (snapshot.status, snapshot.qty, snapshot.price, snapshot.filled_qty) == (
        OrderStatus.ACCEPTED,
        D("0.1"),
        D("50"),
        D(0),
    )
    assert snapshot.ts == 1705259439_563000000
    txid, info = next(iter(rest["OpenOrders_take_profit"]["result"]["open"].items()))
    with pytest.raises(MalformedMessage):  # take-profit orders are not modelled
        snapshot_from_rest(
            txid, info, account=ACCOUNT, instrument="LTC/USDT", client_order_id="x", now_ns=NOW
        )


def test_rest_trades_become_fills() -> None:
    raw = {
        "ordertxid": "OA",
        "pair": "XBTUSD",
        "time": D("1705260547.4728"),
        "type": "sell",
        "ordertype": "limit",
        "price": "29431.0",
        "cost": "294.31",
        "fee": "0.7358",
        "vol": "0.01000000",
        "maker": True,
    }
    trade = RestTrade.parse("TX1", raw)
    fill = fill_from_rest(trade, account=ACCOUNT, instrument="BTC/USD", client_order_id="algo-7")
    assert (fill.fill_id, fill.side, fill.qty, fill.liquidity, fill.fee_currency) == (
        "TX1",
        Side.SELL,
        D("0.01"),
        Liquidity.MAKER,
        "USD",
    )
    with pytest.raises(MalformedMessage):
        RestTrade.parse("TX2", {"pair": "XBTUSD"})


# ---------------------------------------------------------------- property


@settings(max_examples=80, deadline=None)
@given(
    parts=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    duplicates=st.lists(st.integers(0, 11), max_size=6),
)
def test_fills_add_up_to_the_order_and_each_counts_once(
    parts: list[int], duplicates: list[int]
) -> None:
    """Whatever the split of an order into fills and however often reports repeat, the
    events carry each fill once, filled_qty never goes back, and the last event is a fill
    of the whole quantity."""
    lot = D("0.00000001")
    qty = sum(parts) * lot
    tracker = OrderTracker(ACCOUNT)
    ours(tracker, qty=format(qty, "f"))
    tracker.acknowledged("algo-7", "OK4GJX-KSTLS-7DZZO5")
    reports = [trade(f"T{i}", format(part * lot, "f"), "26500.0") for i, part in enumerate(parts)]
    for index in duplicates:
        if index < len(reports):
            reports.insert(index + 1, copy.deepcopy(reports[index]))
    events = []
    for sequence, report in enumerate(reports, start=1):
        events += tracker.receive(frame([report], sequence), NOW)
    fills = [e.fill for e in events if isinstance(e, OrderPartiallyFilled | OrderFilled)]
    assert sorted(f.fill_id for f in fills) == sorted(f"T{i}" for i in range(len(parts)))
    assert sum(f.qty for f in fills) == qty
    filled = [e.filled_qty for e in events]
    assert filled == sorted(filled)
    assert isinstance(events[-1], OrderFilled) and events[-1].filled_qty == qty


def test_a_bare_report_for_an_unknown_order_produces_nothing() -> None:
    assert OrderTracker(ACCOUNT).apply(ExecutionReport(order_id="OA"), NOW) == []
