"""Turning a `signal` into a target position and the orders that reach it. Pure, no I/O.

Sizing:
* `qty` or `target_qty` must be whole lots (`qty_off_lot` otherwise);
* `risk_fraction`: qty = equity × risk_fraction / |entry − stop_loss|, rounded down to the
  lot size, where entry is the signal's `entry_price` or else the reference price (mid, else
  last trade); below the venue's minimum order it is refused (`qty_below_min`);
* exits must sit on the right side of the entry: below it for a long's stop-loss, above it
  for its take-profit (and the mirror for a short), else `invalid_order`.

Orders the position manager places get ids it derives from the signal, under the reserved
prefix `pm:` (an algo's own order may not use it): the entry `pm:<signal_id>:e`, the n-th
close of an exit `pm:<signal_id>:x<n>`. Entries are market orders, or GTC limit orders at
`entry_price`; closes are IOC market orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec, Side
from protocol.orders import NewOrder, OrderType, TimeInForce
from protocol.signals import POSITION_MANAGER_PREFIX, Direction, Signal
from workers.broker.risk.amounts import EXACT, ZERO, floor_to_lot, money, plain

ORDER_ID_PREFIX = POSITION_MANAGER_PREFIX
"""Client order ids under this prefix belong to the position manager."""


class SignalRefusal(Exception):
    """The signal cannot be acted on; `code` and `message` go back to the algo."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Sizing:
    target_qty: Decimal  # signed position wanted
    entry_price: Decimal | None  # where the entry is expected to trade, when known


def size(
    signal: Signal,
    spec: InstrumentSpec,
    reference: Decimal | None,
    equity: Decimal | None,
) -> Sizing:
    """The signed target position `signal` asks for. Raises `SignalRefusal`."""
    entry = signal.entry_price if signal.entry_price is not None else reference
    side = signal.target_side
    if side is not None and entry is not None:
        _check_exit_sides(signal, side, entry)
    if signal.direction is Direction.FLAT:
        return Sizing(ZERO, entry)
    if signal.target_qty is not None:
        _check_lots(abs(signal.target_qty), spec, "target_qty")
        return Sizing(signal.target_qty, entry)
    assert side is not None
    sign = Decimal(1) if side is Side.BUY else Decimal(-1)
    if signal.qty is not None:
        _check_lots(signal.qty, spec, "qty")
        return Sizing(EXACT.multiply(sign, signal.qty), entry)
    assert signal.risk_fraction is not None and signal.stop_loss is not None
    if entry is None:
        raise SignalRefusal(
            ErrorCode.RISK_NO_PRICE,
            f"no trade or quote of {signal.instrument} has been seen yet to size the signal by "
            "risk_fraction; give entry_price or qty",
        )
    if equity is None or equity <= 0:
        raise SignalRefusal(
            ErrorCode.RISK_NO_EQUITY,
            "the account's equity is not known yet, so risk_fraction cannot be turned into a "
            "quantity; give qty",
        )
    distance = abs(EXACT.subtract(entry, signal.stop_loss))
    at_risk = EXACT.multiply(equity, signal.risk_fraction)
    qty = floor_to_lot(EXACT.divide(at_risk, distance), spec.lot_size)
    if qty < spec.min_qty:
        raise SignalRefusal(
            ErrorCode.QTY_BELOW_MIN,
            f"risk sizing gives {plain(qty)} {signal.instrument} (equity {money(equity)} × "
            f"risk_fraction {plain(signal.risk_fraction)} / stop distance {plain(distance)}), "
            f"below the minimum order {plain(spec.min_qty)}",
        )
    return Sizing(EXACT.multiply(sign, qty), entry)


def _check_lots(qty: Decimal, spec: InstrumentSpec, name: str) -> None:
    if EXACT.remainder(qty, spec.lot_size) != 0:
        raise SignalRefusal(
            ErrorCode.QTY_OFF_LOT,
            f"{name} {plain(qty)} is not a multiple of the lot size {plain(spec.lot_size)} of "
            f"{spec.instrument}",
        )


def _check_exit_sides(signal: Signal, side: Side, entry: Decimal) -> None:
    long = side is Side.BUY
    word, below, above = ("long", "below", "above") if long else ("short", "above", "below")
    stop, take = signal.stop_loss, signal.take_profit
    if stop is not None and (stop >= entry if long else stop <= entry):
        raise SignalRefusal(
            ErrorCode.INVALID_ORDER,
            f"stop_loss {plain(stop)} must be {below} the entry price {plain(entry)} of a "
            f"{word} signal",
        )
    if take is not None and (take <= entry if long else take >= entry):
        raise SignalRefusal(
            ErrorCode.INVALID_ORDER,
            f"take_profit {plain(take)} must be {above} the entry price {plain(entry)} of a "
            f"{word} signal",
        )


def entry_order(
    signal: Signal, target: Decimal, position: Decimal, spec: InstrumentSpec
) -> NewOrder | None:
    """The order that moves `position` to `target`, or None when it is there (or less than
    the venue's minimum order away)."""
    delta = EXACT.subtract(target, position)
    qty = floor_to_lot(abs(delta), spec.lot_size)
    if qty == 0 or qty < spec.min_qty:
        return None
    limit = signal.entry_price
    return NewOrder(
        client_order_id=f"{ORDER_ID_PREFIX}{signal.signal_id}:e",
        account=signal.account,
        instrument=signal.instrument,
        side=Side.BUY if delta > 0 else Side.SELL,
        order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
        qty=qty,
        price=limit,
        time_in_force=TimeInForce.IOC if limit is None else TimeInForce.GTC,
    )


def close_order(
    account: str, plan_id: str, attempt: int, instrument: str, side: Side, qty: Decimal
) -> NewOrder:
    """The `attempt`-th (from 1) closing order of plan `plan_id`."""
    return NewOrder(
        client_order_id=f"{ORDER_ID_PREFIX}{plan_id}:x{attempt}",
        account=account,
        instrument=instrument,
        side=side,
        order_type=OrderType.MARKET,
        qty=qty,
        time_in_force=TimeInForce.IOC,
    )
