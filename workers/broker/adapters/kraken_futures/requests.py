"""Kraken Futures REST requests, built and signed without I/O.

Each builder returns a `RestCall`: the endpoint (which is also its rate-limit bucket), the
HTTP method, and the parameters in the order they go on the wire. `RestCall.post_data` is
the exact URL-encoded text that is both sent and signed, so what the venue hashes is what we
hashed. Order parameters follow PROTOCOL_NOTES §8:

======================  =====================================================
tradefleet              Kraken Futures ``sendorder``
======================  =====================================================
limit, GTC              ``orderType=lmt`` + ``limitPrice``
limit, IOC              ``orderType=ioc`` + ``limitPrice``
market                  ``orderType=mkt``
client_order_id         ``cliOrdId`` (our idempotency key, globally unique)
qty                     ``size`` (base units for PF, contracts for PI)
======================  =====================================================

``editorder`` takes the new *open* size (Kraken's default "relative" size mode), while
tradefleet's `modify_order` names the new *total*; `editorder_call` converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal
from urllib.parse import urlencode

from protocol.errors import ErrorCode
from protocol.market import Side, format_decimal
from protocol.orders import NewOrder, OrderType, TimeInForce
from workers.broker.adapters.base import OrderRejectedError
from workers.broker.adapters.kraken_futures.signing import sign_request

API_PREFIX = "/derivatives/api/v3"

ORDER_ENDPOINTS = frozenset({"sendorder", "editorder", "cancelorder"})
"""Endpoints whose refusal concerns one order (a rejection), not the session."""


@dataclass(frozen=True, slots=True)
class RestCall:
    """One REST request: `endpoint` names the path's last segment and the cost bucket."""

    method: Literal["GET", "POST"]
    endpoint: str
    params: tuple[tuple[str, str], ...] = ()
    signed: bool = True
    last_fill_time: bool = False  # `fills` costs 25 units instead of 2 with it

    @property
    def path(self) -> str:
        return f"{API_PREFIX}/{self.endpoint}"

    @property
    def post_data(self) -> str:
        """The parameters exactly as sent (query string for GET, form body for POST)."""
        return urlencode(self.params)


def signed_headers(call: RestCall, api_key: str, api_secret: str, nonce: str) -> dict[str, str]:
    """``APIKey``, ``Nonce`` and ``Authent`` for `call`. Raises `InvalidSecret` when the
    secret is not base64."""
    return {
        "APIKey": api_key,
        "Nonce": nonce,
        "Authent": sign_request(api_secret, call.path, nonce, call.post_data),
    }


class NonceSource:
    """Strictly increasing nonces, starting near the wall clock in milliseconds so that a
    restarted process (same key) continues above its predecessor."""

    def __init__(self, start_ms: int) -> None:
        self._last = start_ms - 1

    def next(self, now_ms: int) -> str:
        self._last = max(self._last + 1, now_ms)
        return str(self._last)


def _order_type(order: NewOrder) -> str:
    if order.order_type is OrderType.MARKET:
        return "mkt"
    return "ioc" if order.time_in_force is TimeInForce.IOC else "lmt"


def sendorder_call(order: NewOrder, product_id: str) -> RestCall:
    """``sendorder`` for a validated `NewOrder` on `product_id`."""
    params = [
        ("orderType", _order_type(order)),
        ("symbol", product_id),
        ("side", "buy" if order.side is Side.BUY else "sell"),
        ("size", format_decimal(order.qty)),
    ]
    if order.price is not None:
        params.append(("limitPrice", format_decimal(order.price)))
    params.append(("cliOrdId", order.client_order_id))
    return RestCall("POST", "sendorder", tuple(params))


def _order_ref(order_id: str | None, client_order_id: str, name: str) -> tuple[str, str]:
    # The venue's own id is preferred when known: it is what the venue indexes orders by.
    return (name, order_id) if order_id else ("cliOrdId", client_order_id)


def editorder_call(
    client_order_id: str,
    *,
    order_id: str | None,
    filled: Decimal,
    qty: Decimal | None,
    price: Decimal | None,
) -> RestCall:
    """``editorder`` setting the order's new total `qty` (filled part included) and/or
    `price`. Raises `OrderRejectedError(invalid_order)` when nothing changes or the new total
    does not exceed what is already filled."""
    if qty is None and price is None:
        raise OrderRejectedError(
            ErrorCode.INVALID_ORDER,
            "give a new qty and/or price",
            client_order_id=client_order_id,
        )
    params = [_order_ref(order_id, client_order_id, "orderId")]
    if qty is not None:
        if qty <= filled:
            raise OrderRejectedError(
                ErrorCode.INVALID_ORDER,
                f"the new qty {format_decimal(qty)} must exceed the {format_decimal(filled)} "
                "already filled",
                client_order_id=client_order_id,
            )
        params.append(("size", format_decimal(qty - filled)))
    if price is not None:
        params.append(("limitPrice", format_decimal(price)))
    return RestCall("POST", "editorder", tuple(params))


def cancelorder_call(client_order_id: str, *, order_id: str | None) -> RestCall:
    """``cancelorder`` by the venue's order id when known, else by our ``cliOrdId``."""
    return RestCall("POST", "cancelorder", (_order_ref(order_id, client_order_id, "order_id"),))


def openorders_call() -> RestCall:
    return RestCall("GET", "openorders")


def fills_call(last_fill_time: str | None = None) -> RestCall:
    """The 100 fills before `last_fill_time` (ISO 8601), or the latest 100."""
    if last_fill_time is None:
        return RestCall("GET", "fills")
    return RestCall("GET", "fills", (("lastFillTime", last_fill_time),), last_fill_time=True)


def accounts_call() -> RestCall:
    return RestCall("GET", "accounts")


def instruments_call() -> RestCall:
    """Public: no signature, and outside the ``/derivatives`` cost budget."""
    return RestCall("GET", "instruments", signed=False)
