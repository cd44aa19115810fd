"""SDK order handles and the reconnect policy, without a network."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.orders import ORDER_EVENT, Fill, NewOrder, OrderStatus
from protocol.session import Error
from tradefleet.client import ConnectionLost, OrderNotFilled, OrderRejected, ReconnectPolicy
from tradefleet.client.orders import OrderTracker

REQUEST = NewOrder(client_order_id="c-1", account="paper-1", instrument="BTC/USD", side="buy",
                   qty="1", price="100")


def event(kind: str, status: str, filled: str = "0", **extra: Any) -> Any:
    remaining = "0" if status in ("filled", "cancelled", "rejected") else \
        str(Decimal(1) - Decimal(filled))
    return ORDER_EVENT.validate_python({
        "type": kind, "account": "paper-1", "client_order_id": "c-1", "instrument": "BTC/USD",
        "side": "buy", "order_type": "limit", "qty": "1", "price": "100",
        "time_in_force": "GTC", "status": status, "filled_qty": filled,
        "remaining_qty": remaining, "ts": 1, **extra})


def fill(fill_id: str, qty: str) -> dict[str, Any]:
    return {"fill_id": fill_id, "account": "paper-1", "client_order_id": "c-1",
            "instrument": "BTC/USD", "side": "buy", "qty": qty, "price": "100", "fee": "0",
            "fee_currency": "USD", "liquidity": "maker", "ts": 1}


async def test_handle_follows_its_events_and_counts_each_fill_once() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    waiter = asyncio.create_task(handle.filled(timeout=2))
    assert handle.status is OrderStatus.PENDING and not handle.answered
    tracker.apply(event("order_accepted", "accepted", order_id="X1"))
    assert (await handle.accepted(timeout=1)) is handle and handle.order_id == "X1"
    tracker.apply(event("order_partially_filled", "partially_filled", "0.4",
                        fill=fill("f1", "0.4")))
    tracker.fill(Fill.model_validate({"type": "fill", **fill("f1", "0.4")}))  # same fill again
    assert not waiter.done()
    tracker.apply(event("order_filled", "filled", "1", fill=fill("f2", "0.6")))
    assert (await waiter) is handle
    assert [f.fill_id for f in handle.fills] == ["f1", "f2"]
    assert handle.filled_qty == Decimal(1) and handle.is_done


async def test_rejection_raises_from_accepted_and_filled() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    tracker.apply(event("order_rejected", "rejected", reason="qty_below_min", message="small"))
    with pytest.raises(OrderRejected) as rejected:
        await handle.accepted()
    assert rejected.value.code == "qty_below_min"
    assert (await handle.done()) is handle


async def test_an_error_before_any_answer_rejects_the_order() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    tracker.error(Error(code=ErrorCode.PRICE_OFF_TICK, message="off tick", field="price",
                        client_order_id="c-1"))
    with pytest.raises(OrderRejected) as rejected:
        await handle.filled()
    assert (rejected.value.code, rejected.value.field) == ("price_off_tick", "price")


async def test_an_error_about_a_cancel_does_not_reject_the_order() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    tracker.apply(event("order_accepted", "accepted"))
    handle.amendments_in_flight += 1
    tracker.error(Error(code=ErrorCode.ORDER_NOT_CANCELLABLE, message="no",
                        client_order_id="c-1"))
    assert handle.status is OrderStatus.ACCEPTED and handle.error is None
    assert handle.last_error is not None and handle.amendments_in_flight == 0


async def test_cancelled_order_is_not_filled() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    tracker.apply(event("order_cancelled", "cancelled", reason="requested"))
    with pytest.raises(OrderNotFilled):
        await handle.filled()


async def test_waiters_learn_that_the_client_is_gone() -> None:
    tracker = OrderTracker()
    handle = tracker.add(REQUEST)
    waiter = asyncio.create_task(handle.done())
    await asyncio.sleep(0)
    tracker.lose_all(ConnectionLost("closed"))
    with pytest.raises(ConnectionLost):
        await waiter


async def test_a_wait_can_time_out() -> None:
    handle = OrderTracker().add(REQUEST)
    with pytest.raises(TimeoutError):
        await handle.accepted(timeout=0.01)


def test_orders_seen_only_in_events_get_handles_and_unanswered_ones_are_listed() -> None:
    tracker = OrderTracker()
    tracker.add(REQUEST.model_copy(update={"client_order_id": "waiting"}))
    tracker.apply(event("order_accepted", "accepted"))
    assert tracker.handles["c-1"].status is OrderStatus.ACCEPTED
    assert [h.client_order_id for h in tracker.unanswered()] == ["waiting"]


def test_reconnect_delays_grow_with_jitter_up_to_a_cap_and_reset() -> None:
    policy = ReconnectPolicy(initial_s=0.1, maximum_s=1.0, rng=random.Random(7))
    delays = [policy.next_delay() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[5:])
    policy.reset()
    assert policy.next_delay() <= 0.1
