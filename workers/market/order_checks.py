"""Checks the Market makes on an algo's order requests before routing them (pure).

Schema errors (a missing field, a negative quantity, a float price) are caught earlier by
`protocol.session.parse_client_message`. Here: the session may act only on its own account
(a `signal` too: it is routed like an order request),
and a new order must fit the instrument's trading rules as the account's Broker announced them
in `link_welcome`. The Broker checks again (risk limits, order state); refusing obvious
mistakes here spares a round trip and names the field to fix.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from decimal import Decimal

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec
from protocol.orders import CancelOrder, GetOpenOrders, GetPositions, ModifyOrder, NewOrder
from protocol.session import ProtocolError
from protocol.signals import Signal

OrderRequest = NewOrder | CancelOrder | ModifyOrder | GetPositions | GetOpenOrders | Signal


def check_request(
    request: OrderRequest, account: str, specs: Mapping[str, InstrumentSpec] | None
) -> ProtocolError | None:
    """The error to answer `request` with, or None if it may be routed.

    `account` is the session's account; `specs` the Broker's instruments (None while unknown:
    then only the account is checked and the Broker judges the rest).
    """
    ref = getattr(request, "ref", None)
    client_order_id = getattr(request, "client_order_id", None)
    if request.account != account:
        return ProtocolError(
            ErrorCode.FORBIDDEN,
            f"this session trades account {account!r}, not {request.account!r}",
            field="account", ref=ref, client_order_id=client_order_id)
    if isinstance(request, NewOrder) and specs is not None:
        return _check_new_order(request, specs)
    return None


def _check_new_order(order: NewOrder, specs: Mapping[str, InstrumentSpec]) -> ProtocolError | None:
    spec = specs.get(order.instrument)
    cid = order.client_order_id
    if spec is None:
        return ProtocolError(ErrorCode.UNKNOWN_INSTRUMENT,
                             f"account {order.account!r} does not trade {order.instrument!r}",
                             field="instrument", client_order_id=cid)
    if order.price is not None and not _is_multiple(order.price, spec.tick_size):
        return ProtocolError(ErrorCode.PRICE_OFF_TICK,
                             f"price {order.price} is not a multiple of the tick size "
                             f"{spec.tick_size} of {spec.instrument}",
                             field="price", client_order_id=cid)
    if not _is_multiple(order.qty, spec.lot_size):
        return ProtocolError(ErrorCode.QTY_OFF_LOT,
                             f"qty {order.qty} is not a multiple of the lot size "
                             f"{spec.lot_size} of {spec.instrument}",
                             field="qty", client_order_id=cid)
    if order.qty < spec.min_qty:
        return ProtocolError(ErrorCode.QTY_BELOW_MIN,
                             f"qty {order.qty} is below the minimum {spec.min_qty} of "
                             f"{spec.instrument}",
                             field="qty", client_order_id=cid)
    return None


# Wire decimals have at most 64 characters; this precision holds any quotient of two of them
# exactly, where the default context (28 digits) would raise on a long price and a tiny tick.
_EXACT = decimal.Context(prec=200, traps=[decimal.InvalidOperation])


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    return _EXACT.remainder(value, step) == 0
