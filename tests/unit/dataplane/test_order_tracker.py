"""The Broker's pure order state machine."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.orders import (
    LEGAL_TRANSITIONS,
    CancelOrder,
    CancelReason,
    Fill,
    ModifyOrder,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSnapshot,
    OrderStatus,
)
from workers.broker.adapters.paper.engine import OrderRefused
from workers.broker.orders import (
    CancelAtVenue,
    Emit,
    Journal,
    ModifyAtVenue,
    OrderStateError,
    OrderTracker,
    PlaceAtVenue,
    Refuse,
    TrackerInput,
    VenueRefused,
)

from .conftest import FakeClock, make_engine, order

D = Decimal
REQUEST = order("c1", "acct", "buy", "2", "100")


def tracker() -> OrderTracker:
    return OrderTracker("acct", FakeClock())


def venue_state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "account": "acct",
        "client_order_id": "c1",
        "order_id": "V1",
        "instrument": "BTC/USD",
        "side": "buy",
        "order_type": "limit",
        "qty": D(2),
        "price": D(100),
        "time_in_force": "GTC",
        "status": OrderStatus.ACCEPTED,
        "filled_qty": D(0),
        "remaining_qty": D(2),
        "ts": 10,
    }
    state.update(changes)
    return state


def fill(fill_id: str, qty: str, price: str = "100") -> Fill:
    return Fill(
        fill_id=fill_id,
        account="acct",
        client_order_id="c1",
        order_id="V1",
        instrument="BTC/USD",
        side="buy",
        qty=D(qty),
        price=D(price),
        fee=D(0),
        fee_currency="USD",
        liquidity="maker",
        ts=11,
    )


def partial(fill_id: str, qty: str, filled: str, price: str = "100") -> OrderPartiallyFilled:
    return OrderPartiallyFilled(
        **venue_state(
            status=OrderStatus.PARTIALLY_FILLED,
            filled_qty=D(filled),
            remaining_qty=D(2) - D(filled),
        ),
        fill=fill(fill_id, qty, price),
    )


def filled(fill_id: str, qty: str) -> OrderFilled:
    return OrderFilled(
        **venue_state(status=OrderStatus.FILLED, filled_qty=D(2), remaining_qty=D(0)),
        fill=fill(fill_id, qty),
    )


def accepted() -> OrderAccepted:
    return OrderAccepted(**venue_state())


def cancelled() -> OrderCancelled:
    return OrderCancelled(
        **venue_state(status=OrderStatus.CANCELLED, remaining_qty=D(0)),
        reason=CancelReason.REQUESTED,
    )


def emitted(effects: list[Any]) -> list[OrderEvent]:
    return [e.event for e in effects if isinstance(e, Emit)]


# ---------------------------------------------------------------- new orders


def test_new_order_is_journaled_before_it_is_sent() -> None:
    t = tracker()
    effects = t.receive(REQUEST)
    assert effects == [Journal(REQUEST), PlaceAtVenue(REQUEST)]
    assert t.status("c1") is OrderStatus.PENDING


def test_repeated_client_order_id_creates_nothing_and_returns_the_state() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    effects = t.receive(REQUEST)
    (snapshot,) = emitted(effects)
    assert len(effects) == 1 and isinstance(snapshot, OrderSnapshot)
    assert snapshot.status is OrderStatus.ACCEPTED and snapshot.order_id == "V1"
    # Even with other parameters, the id names the existing order.
    again = t.receive(order("c1", "acct", "sell", "5", "90"))
    assert [type(e) for e in again] == [Emit] and len(t.open_orders()) == 1


def test_lifecycle_to_filled_with_average_price() -> None:
    t = tracker()
    t.receive(REQUEST)
    (ack,) = emitted(t.receive(accepted()))
    assert isinstance(ack, OrderAccepted)
    (part,) = emitted(t.receive(partial("f1", "0.5", "0.5", "100")))
    assert (part.status, part.filled_qty, part.remaining_qty) == (
        OrderStatus.PARTIALLY_FILLED,
        D("0.5"),
        D("1.5"),
    )
    effects = t.receive(filled("f2", "1.5"))
    assert isinstance(effects[0], Journal) and isinstance(effects[1], Emit)
    assert effects[0].entry == effects[1].event
    (done,) = emitted(effects)
    assert isinstance(done, OrderFilled)
    assert (done.status, done.filled_qty, done.remaining_qty, done.avg_price) == (
        OrderStatus.FILLED,
        D(2),
        D(0),
        D(100),
    )
    assert t.open_orders() == []


def test_venue_refusal_of_a_new_order_becomes_order_rejected() -> None:
    t = tracker()
    t.receive(REQUEST)
    effects = t.receive(VenueRefused("c1", "place", ErrorCode.PRICE_OFF_TICK, "off tick"))
    (event,) = emitted(effects)
    assert isinstance(event, OrderRejected) and event.reason is ErrorCode.PRICE_OFF_TICK
    assert isinstance(effects[0], Journal)
    assert t.status("c1") is OrderStatus.REJECTED


def test_duplicate_refusal_keeps_the_order_pending_for_reconciliation() -> None:
    t = tracker()
    t.receive(REQUEST)
    assert t.receive(VenueRefused("c1", "place", ErrorCode.DUPLICATE_ORDER, "dup")) == []
    assert t.status("c1") is OrderStatus.PENDING


def test_fill_before_ack_implies_acceptance_and_a_late_ack_is_ignored() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(partial("f1", "1", "1"))
    assert t.status("c1") is OrderStatus.PARTIALLY_FILLED
    assert t.receive(accepted()) == []
    assert t.status("c1") is OrderStatus.PARTIALLY_FILLED


def test_a_fill_is_counted_once_per_fill_id() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(partial("f1", "1", "1"))
    assert t.receive(partial("f1", "1", "1")) == []
    state = t.get("c1")
    assert state is not None and state.filled_qty == D(1)


# ---------------------------------------------------------------- impossible actions


def expect_error(t: OrderTracker, message: Any, code: ErrorCode) -> None:
    before = t.get("c1")
    with pytest.raises(OrderStateError) as caught:
        t.receive(message)
    assert caught.value.code is code
    after = t.get("c1")
    if before is not None and after is not None:  # nothing changed (ts aside)
        assert before.model_copy(update={"ts": 0}) == after.model_copy(update={"ts": 0})


def test_cancel_of_a_filled_order_is_refused() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(filled("f1", "2"))
    expect_error(
        t, CancelOrder(client_order_id="c1", account="acct"), ErrorCode.ORDER_NOT_CANCELLABLE
    )


def test_a_repeated_cancel_or_a_modify_that_changes_nothing_is_answered_with_the_state(
) -> None:
    # What an amendment re-sent after a failover meets when its first copy was carried out.
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    [answer] = t.receive(ModifyOrder(client_order_id="c1", account="acct", price=REQUEST.price))
    assert isinstance(answer, Emit) and answer.event.type == "order_snapshot"
    assert not any(isinstance(e, ModifyAtVenue) for e in t.receive(
        ModifyOrder(client_order_id="c1", account="acct", qty=REQUEST.qty)))
    effects = t.receive(ModifyOrder(client_order_id="c1", account="acct", qty=D(3)))
    assert any(isinstance(e, ModifyAtVenue) for e in effects)  # a real change goes out
    t.receive(cancelled())
    [answer] = t.receive(CancelOrder(client_order_id="c1", account="acct"))
    assert isinstance(answer, Emit) and answer.event.type == "order_snapshot"
    assert answer.event.status is OrderStatus.CANCELLED


def test_modify_of_a_cancelled_order_is_refused() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(cancelled())
    expect_error(
        t,
        ModifyOrder(client_order_id="c1", account="acct", qty=D(3)),
        ErrorCode.ORDER_NOT_MODIFIABLE,
    )


def test_fill_exceeding_the_remaining_qty_is_refused() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(partial("f1", "1.5", "1.5"))
    expect_error(t, partial("f2", "1", "2"), ErrorCode.ILLEGAL_TRANSITION)


def test_fill_after_cancel_and_reject_after_accept_are_contradictions() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    expect_error(
        t,
        OrderRejected(
            **venue_state(status=OrderStatus.REJECTED, remaining_qty=D(0)),
            reason=ErrorCode.INVALID_ORDER,
            message="no",
        ),
        ErrorCode.ILLEGAL_TRANSITION,
    )
    t.receive(cancelled())
    expect_error(t, partial("f9", "1", "1"), ErrorCode.ILLEGAL_TRANSITION)


def test_unknown_orders_and_foreign_accounts() -> None:
    t = tracker()
    expect_error(t, CancelOrder(client_order_id="nope", account="acct"), ErrorCode.ORDER_NOT_FOUND)
    expect_error(t, accepted(), ErrorCode.ORDER_NOT_FOUND)
    expect_error(t, order("x", "someone-else", "buy", "1", "1"), ErrorCode.FORBIDDEN)


def test_modify_below_filled_and_of_market_orders_is_refused() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(partial("f1", "1", "1"))
    expect_error(
        t, ModifyOrder(client_order_id="c1", account="acct", qty=D(1)), ErrorCode.INVALID_ORDER
    )
    t.receive(order("m1", "acct", "buy", "1"))
    with pytest.raises(OrderStateError) as caught:
        t.receive(ModifyOrder(client_order_id="m1", account="acct", qty=D(3)))
    assert caught.value.code is ErrorCode.ORDER_NOT_MODIFIABLE


# ---------------------------------------------------------------- cancel / modify flow


def test_cancel_flow_and_repeated_news_is_quiet() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    request = CancelOrder(client_order_id="c1", account="acct")
    assert t.receive(request) == [Journal(request), CancelAtVenue("c1", "V1")]
    assert t.receive(request) == []  # one cancel in flight is enough
    (event,) = emitted(t.receive(cancelled()))
    assert isinstance(event, OrderCancelled) and event.remaining_qty == 0
    assert t.receive(cancelled()) == []


def test_refused_cancel_is_reported_to_the_requester_and_can_be_retried() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    request = CancelOrder(client_order_id="c1", account="acct")
    t.receive(request)
    effects = t.receive(VenueRefused("c1", "cancel", ErrorCode.UNAVAILABLE, "try later"))
    assert effects == [Refuse("c1", ErrorCode.UNAVAILABLE, "try later")]
    assert t.status("c1") is OrderStatus.ACCEPTED
    assert [type(e) for e in t.receive(request)] == [Journal, CancelAtVenue]


def test_modify_flow_updates_qty_and_price() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(accepted())
    request = ModifyOrder(client_order_id="c1", account="acct", qty=D(3), price=D(99))
    assert t.receive(request) == [Journal(request), ModifyAtVenue("c1", "V1", D(3), D(99))]
    (event,) = emitted(
        t.receive(OrderModified(**venue_state(qty=D(3), price=D(99), remaining_qty=D(3))))
    )
    assert (event.qty, event.price, event.remaining_qty) == (D(3), D(99), D(3))


def test_replaying_the_journal_rebuilds_the_same_state() -> None:
    t = tracker()
    journal: list[Any] = []
    messages: list[TrackerInput] = [
        REQUEST,
        accepted(),
        partial("f1", "0.5", "0.5"),
        CancelOrder(client_order_id="c1", account="acct"),
        cancelled(),
    ]
    for message in messages:
        journal += [e.entry for e in t.receive(message) if isinstance(e, Journal)]
    rebuilt = tracker()
    for entry in journal:
        rebuilt.receive(entry)
    again, live = rebuilt.get("c1"), t.get("c1")
    assert again is not None and live is not None
    assert again.model_copy(update={"ts": 0}) == live.model_copy(update={"ts": 0})


def test_expiry_ends_the_order() -> None:
    t = tracker()
    t.receive(REQUEST)
    t.receive(partial("f1", "1", "1"))
    (event,) = emitted(
        t.receive(
            OrderExpired(
                **venue_state(status=OrderStatus.EXPIRED, filled_qty=D(1), remaining_qty=D(0))
            )
        )
    )
    assert event.status is OrderStatus.EXPIRED and event.filled_qty == D(1)


# ---------------------------------------------------------------- properties


tracker_inputs = st.lists(
    st.one_of(
        st.builds(lambda: REQUEST),
        st.builds(accepted),
        st.builds(cancelled),
        st.builds(lambda: CancelOrder(client_order_id="c1", account="acct")),
        st.builds(
            lambda q: ModifyOrder(client_order_id="c1", account="acct", qty=D(q)), st.integers(1, 4)
        ),
        st.builds(
            lambda i, q: partial(f"f{i}", str(q), "0.5"),
            st.integers(0, 5),
            st.sampled_from(["0.5", "1", "1.5"]),
        ),
        st.builds(lambda i: filled(f"f{i}", "0.5"), st.integers(0, 5)),
        st.builds(
            lambda c: VenueRefused("c1", "place", c, "no"),
            st.sampled_from([ErrorCode.INVALID_ORDER, ErrorCode.DUPLICATE_ORDER]),
        ),
        st.builds(
            lambda: OrderExpired(**venue_state(status=OrderStatus.EXPIRED, remaining_qty=D(0)))
        ),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracker_inputs)
def test_any_input_sequence_only_makes_legal_transitions(inputs: list[Any]) -> None:
    t = tracker()
    for message in inputs:
        before = t.get("c1")
        try:
            effects = t.receive(message)
        except OrderStateError:
            after = t.get("c1")
            assert (before is None and after is None) or (
                before is not None
                and after is not None
                and before.model_copy(update={"ts": 0}) == after.model_copy(update={"ts": 0})
            )
            continue
        after = t.get("c1")
        if before is not None and after is not None and after.status != before.status:
            assert after.status in LEGAL_TRANSITIONS[before.status]
        if after is not None:
            assert after.filled_qty <= after.qty
        for event in emitted(effects):
            assert event.filled_qty + event.remaining_qty <= event.qty


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["buy", "sell"]),
            st.integers(2, 20),
            st.one_of(st.none(), st.integers(196, 204)),
            st.sampled_from(["new", "new", "cancel"]),
        ),
        max_size=40,
    )
)
def test_tracker_agrees_with_the_paper_venue(
    script: list[tuple[str, int, int | None, str]],
) -> None:
    """Drive real venue events through the tracker: both must end with the same orders."""
    engine = make_engine(accounts=("acct", "other"))
    t = OrderTracker("acct", FakeClock())
    for n, (side, lots, ticks, action) in enumerate(script):
        # The counterparty provides liquidity so that acct's orders trade.
        engine.submit(
            order(
                f"liq{n}",
                "other",
                "sell" if side == "buy" else "buy",
                str(lots * D("0.1")),
                str(200 * D("0.5")),
            )
        )
        if action == "cancel" and t.open_orders():
            target = t.open_orders()[0].client_order_id
            effects = t.receive(CancelOrder(client_order_id=target, account="acct"))
            try:
                venue_events = engine.cancel("acct", target)
            except OrderRefused as exc:
                t.receive(VenueRefused(target, "cancel", exc.code, exc.message))
                continue
        else:
            price = None if ticks is None else str(ticks * D("0.5"))
            request = order(f"a{n}", "acct", side, str(lots * D("0.1")), price)
            effects = t.receive(request)
            assert any(isinstance(e, PlaceAtVenue) for e in effects)
            venue_events = engine.submit(request)
        for event in venue_events:
            if getattr(event, "account", None) == "acct":
                t.receive(event)  # type: ignore[arg-type]
    for ours in [t.get(f"a{n}") for n in range(len(script))]:
        if ours is None:
            continue
        venue = engine.order("acct", ours.client_order_id)
        assert venue is not None
        assert (ours.status, ours.filled_qty, ours.remaining_qty, ours.avg_price) == (
            venue.status,
            venue.filled_qty,
            venue.remaining_qty,
            venue.avg_price,
        )
