"""The venue's trading rules checked before an order is journaled. Pure, no I/O.

An order that breaks a rule the venue published (`InstrumentSpec`: listed instruments, tick
size, lot size, minimum quantity) is answered with a coded `error` naming the field, and
nothing is journaled: its client_order_id stays free for the corrected order. Whatever the
venue refuses beyond these rules comes back as `order_rejected`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec
from protocol.orders import ModifyOrder, NewOrder

_EXACT = Context(prec=160)


@dataclass(frozen=True, slots=True)
class RuleViolation:
    code: ErrorCode
    message: str
    field: str


def check_new_order(specs: Mapping[str, InstrumentSpec], order: NewOrder) -> RuleViolation | None:
    """The first rule `order` breaks, or None when the venue's published rules allow it."""
    spec = specs.get(order.instrument)
    if spec is None:
        return RuleViolation(ErrorCode.UNKNOWN_INSTRUMENT,
                             f"the venue does not list {order.instrument}", "instrument")
    return _check_qty(spec, order.qty) or _check_price(spec, order.price)


def check_modify(spec: InstrumentSpec | None, modify: ModifyOrder) -> RuleViolation | None:
    """The first rule a modification of an order on `spec`'s instrument breaks, or None."""
    if spec is None:
        return None
    return _check_qty(spec, modify.qty) or _check_price(spec, modify.price)


def _check_qty(spec: InstrumentSpec, qty: Decimal | None) -> RuleViolation | None:
    if qty is None:
        return None
    if _EXACT.remainder(qty, spec.lot_size) != 0:
        return RuleViolation(ErrorCode.QTY_OFF_LOT, f"qty {qty} is not a multiple of the lot "
                                                    f"size {spec.lot_size} of {spec.instrument}",
                             "qty")
    if qty < spec.min_qty:
        return RuleViolation(ErrorCode.QTY_BELOW_MIN, f"qty {qty} is below the minimum "
                                                      f"{spec.min_qty} of {spec.instrument}",
                             "qty")
    return None


def _check_price(spec: InstrumentSpec, price: Decimal | None) -> RuleViolation | None:
    if price is None or _EXACT.remainder(price, spec.tick_size) == 0:
        return None
    return RuleViolation(ErrorCode.PRICE_OFF_TICK, f"price {price} is not a multiple of the "
                                                   f"tick size {spec.tick_size} of "
                                                   f"{spec.instrument}", "price")
