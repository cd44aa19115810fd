"""Venue rules checked before an order is journaled."""

from __future__ import annotations

from decimal import Decimal

import pytest

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec
from protocol.orders import ModifyOrder, NewOrder
from workers.broker.rules import check_modify, check_new_order

D = Decimal
SPEC = InstrumentSpec(instrument="BTC/USD", tick_size=D("0.5"), lot_size=D("0.01"),
                      min_qty=D("0.02"))
SPECS = {SPEC.instrument: SPEC}


def order(**changes: object) -> NewOrder:
    fields: dict[str, object] = {"client_order_id": "c1", "account": "a",
                                 "instrument": "BTC/USD", "side": "buy", "qty": "0.05",
                                 "price": "100.5"}
    fields.update(changes)
    return NewOrder.model_validate(fields)


def test_an_order_within_the_rules_passes() -> None:
    assert check_new_order(SPECS, order()) is None
    assert check_new_order(SPECS, order(order_type="market", price=None)) is None


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"instrument": "ETH/USD"}, ErrorCode.UNKNOWN_INSTRUMENT, "instrument"),
        ({"qty": "0.055"}, ErrorCode.QTY_OFF_LOT, "qty"),
        ({"qty": "0.01"}, ErrorCode.QTY_BELOW_MIN, "qty"),
        ({"price": "100.25"}, ErrorCode.PRICE_OFF_TICK, "price"),
    ],
)
def test_each_broken_rule_names_its_code_and_field(changes: dict[str, object], code: ErrorCode,
                                                   field: str) -> None:
    violation = check_new_order(SPECS, order(**changes))
    assert violation is not None
    assert (violation.code, violation.field) == (code, field)
    assert "BTC/USD" in violation.message or "ETH/USD" in violation.message


def test_a_modification_is_held_to_the_same_rules() -> None:
    ok = ModifyOrder(client_order_id="c1", account="a", price=D("101"))
    bad = ModifyOrder(client_order_id="c1", account="a", qty=D("0.015"))
    assert check_modify(SPEC, ok) is None
    violation = check_modify(SPEC, bad)
    assert violation is not None and violation.code is ErrorCode.QTY_OFF_LOT
