"""Requests the adapter sends to Kraken spot, built from canonical values (pure).

WebSocket v2 requests are dicts ``{"method": ..., "params": {...}}``; the socket adds
``req_id``. REST requests are form parameter dicts (the REST client adds ``nonce``).
Quantities and prices stay :class:`~decimal.Decimal` in WS requests (``wire.encode_frame``
writes them as exact JSON numbers) and become plain-notation strings in REST forms.

Client order ids: Kraken accepts a ``cl_ord_id`` that is a UUID (36 characters with
hyphens, or 32 hex digits) or free text of at most 18 characters, and checks uniqueness
among open orders only. A tradefleet ``client_order_id`` that fits is sent as is; a longer
one is sent as a deterministic UUID derived from the account and the id
(:func:`venue_cl_ord_id`), so a re-send maps to the same venue id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from protocol.market import CandleInterval, format_decimal
from protocol.orders import NewOrder, OrderType, TimeInForce

BOOK_DEPTHS = (10, 25, 100, 500, 1000)
"""Depths the v2 book channel accepts; anything else is refused, not rounded."""

OHLC_MINUTES: dict[CandleInterval, int] = {
    CandleInterval.M1: 1,
    CandleInterval.M5: 5,
    CandleInterval.M15: 15,
    CandleInterval.H1: 60,
    CandleInterval.H4: 240,
    CandleInterval.D1: 1440,
}
"""Candle intervals as the v2 ohlc channel spells them (minutes)."""

INTERVAL_OF_MINUTES = {minutes: interval for interval, minutes in OHLC_MINUTES.items()}

MAX_FREE_TEXT_CL_ORD_ID = 18
_LONG_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_SHORT_UUID = re.compile(r"^[0-9a-fA-F]{32}$")
# Fixed namespace so every process derives the same venue id for the same order.
_CL_ORD_ID_NAMESPACE = uuid.UUID("6f1c6c52-3d5e-4a55-9a57-1b1e4c0e7a21")


def kraken_depth(depth: int) -> int:
    """The smallest book depth Kraken offers that covers ``depth`` levels.

    Raises ``ValueError`` when ``depth`` is below 1 or above Kraken's largest depth.
    """
    if depth < 1:
        raise ValueError("book depth must be at least 1")
    for offered in BOOK_DEPTHS:
        if offered >= depth:
            return offered
    raise ValueError(f"Kraken books go {BOOK_DEPTHS[-1]} levels deep at most, not {depth}")


def venue_cl_ord_id(client_order_id: str, account: str) -> str:
    """The ``cl_ord_id`` Kraken gets for our ``client_order_id`` (see module docstring)."""
    if (
        len(client_order_id) <= MAX_FREE_TEXT_CL_ORD_ID
        or _LONG_UUID.match(client_order_id)
        or _SHORT_UUID.match(client_order_id)
    ):
        return client_order_id
    return str(uuid.uuid5(_CL_ORD_ID_NAMESPACE, f"{account}/{client_order_id}"))


def rest_pair(v1_symbol: str) -> str:
    """REST pair name from a v1/wsname symbol: ``XBT/USD`` -> ``XBTUSD``."""
    return v1_symbol.replace("/", "")


# ---------------------------------------------------------------- WebSocket v2


def ping() -> dict[str, Any]:
    """Keepalive request; Kraken answers ``{"method": "pong", ...}``."""
    return {"method": "ping"}


def subscribe(channel: str, symbols: Iterable[str] | None = None, **params: Any) -> dict[str, Any]:
    """A v2 ``subscribe`` request for ``channel`` (``symbols`` omitted for ``instrument``
    and ``executions``). ``params`` are added as given (``depth``, ``interval``, ``token``...)."""
    body: dict[str, Any] = {"channel": channel}
    if symbols is not None:
        body["symbol"] = list(symbols)
    body.update(params)
    return {"method": "subscribe", "params": body}


def unsubscribe(
    channel: str, symbols: Iterable[str] | None = None, **params: Any
) -> dict[str, Any]:
    """The matching v2 ``unsubscribe`` request."""
    request = subscribe(channel, symbols, **params)
    request["method"] = "unsubscribe"
    return request


def subscribe_executions(token: str) -> dict[str, Any]:
    """Subscribe to this account's order and fill events: open orders in the snapshot, all
    status transitions, no historical fills (those are reconciled by REST)."""
    return subscribe(
        "executions", token=token, snap_orders=True, snap_trades=False, order_status=True
    )


def add_order(request: NewOrder, *, symbol: str, cl_ord_id: str, token: str) -> dict[str, Any]:
    """A v2 ``add_order`` for a canonical :class:`NewOrder` (limit or market)."""
    params: dict[str, Any] = {
        "order_type": request.order_type.value,
        "side": request.side.value,
        "order_qty": request.qty,
        "symbol": symbol,
    }
    if request.order_type is OrderType.LIMIT:
        assert request.price is not None  # NewOrder guarantees it for limit orders
        params["limit_price"] = request.price
        params["time_in_force"] = "ioc" if request.time_in_force is TimeInForce.IOC else "gtc"
    params["cl_ord_id"] = cl_ord_id
    params["token"] = token
    return {"method": "add_order", "params": params}


def amend_order(
    *,
    token: str,
    order_id: str | None = None,
    cl_ord_id: str | None = None,
    qty: Decimal | None = None,
    price: Decimal | None = None,
) -> dict[str, Any]:
    """A v2 ``amend_order``; names the order by ``order_id`` when known, else ``cl_ord_id``.

    Raises ``ValueError`` when no order or no change is given.
    """
    if order_id is None and cl_ord_id is None:
        raise ValueError("amend_order needs order_id or cl_ord_id")
    if qty is None and price is None:
        raise ValueError("amend_order needs a new qty and/or price")
    params: dict[str, Any] = {"order_id": order_id} if order_id else {"cl_ord_id": cl_ord_id}
    if qty is not None:
        params["order_qty"] = qty
    if price is not None:
        params["limit_price"] = price
    params["token"] = token
    return {"method": "amend_order", "params": params}


def cancel_order(
    *, token: str, order_id: str | None = None, cl_ord_id: str | None = None
) -> dict[str, Any]:
    """A v2 ``cancel_order`` for one order (by ``order_id`` when known)."""
    if order_id is None and cl_ord_id is None:
        raise ValueError("cancel_order needs order_id or cl_ord_id")
    params: dict[str, Any] = {"order_id": [order_id]} if order_id else {"cl_ord_id": [cl_ord_id]}
    params["token"] = token
    return {"method": "cancel_order", "params": params}


# ---------------------------------------------------------------- REST (form parameters)


def rest_add_order(request: NewOrder, *, pair: str, cl_ord_id: str) -> dict[str, str]:
    """``POST /0/private/AddOrder`` parameters for a canonical :class:`NewOrder`."""
    params = {
        "ordertype": request.order_type.value,
        "type": request.side.value,
        "volume": format_decimal(request.qty),
        "pair": pair,
    }
    if request.order_type is OrderType.LIMIT:
        assert request.price is not None
        params["price"] = format_decimal(request.price)
        params["timeinforce"] = request.time_in_force.value
    params["cl_ord_id"] = cl_ord_id
    return params


def rest_cancel_order(
    *, order_id: str | None = None, cl_ord_id: str | None = None
) -> dict[str, str]:
    """``POST /0/private/CancelOrder`` parameters for one order."""
    if order_id:
        return {"txid": order_id}
    if cl_ord_id:
        return {"cl_ord_id": cl_ord_id}
    raise ValueError("CancelOrder needs order_id or cl_ord_id")
