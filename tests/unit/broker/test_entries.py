"""Journal entry payloads: what an `event` entry holds is the event's wire form."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.market import Side
from protocol.orders import (
    CancelReason,
    Fill,
    Liquidity,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderPartiallyFilled,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from workers.broker.account import event_payload, stamped_event

COMMON = {"account": "paper-1", "client_order_id": "c1", "order_id": "P-1",
          "instrument": "BTC/USD", "side": Side.BUY, "order_type": OrderType.LIMIT,
          "qty": Decimal(2), "price": Decimal("100.5"), "time_in_force": TimeInForce.GTC,
          "ts": 1_700_000_000_000_000_000}


def events() -> list[OrderEvent]:
    fill = Fill(account="paper-1", fill_id="f1", order_id="P-1", client_order_id="c1", instrument="BTC/USD",
                side=Side.BUY, qty=Decimal("0.5"), price=Decimal("100.5"),
                fee=Decimal("-0.01"), fee_currency="USD", liquidity=Liquidity.MAKER,
                ts=COMMON["ts"])
    return [
        OrderAccepted(**COMMON, status=OrderStatus.ACCEPTED, filled_qty=Decimal(0),
                      remaining_qty=Decimal(2)),
        OrderPartiallyFilled(**COMMON, status=OrderStatus.PARTIALLY_FILLED, fill=fill,
                             filled_qty=Decimal("0.5"), remaining_qty=Decimal("1.5"),
                             avg_price=Decimal("100.5")),
        OrderCancelled(**COMMON, status=OrderStatus.CANCELLED, filled_qty=Decimal("0.5"),
                       remaining_qty=Decimal(0), avg_price=Decimal("100.5"),
                       reason=CancelReason.REQUESTED),
    ]


@given(seq=st.integers(min_value=1, max_value=2**53))
def test_a_stamped_event_says_what_the_stamped_model_says(seq: int) -> None:
    for event in events():
        expected = decode(encode(event.model_copy(update={"seq": seq})))
        assert decode(stamped_event(event_payload(event), seq)) == expected
        assert expected["seq"] == seq


def test_without_a_seq_the_payload_is_the_event_as_it_is() -> None:
    for event in events():
        assert decode(stamped_event(event_payload(event), None)) == decode(encode(event))
        assert "seq" not in decode(stamped_event(event_payload(event), None))
