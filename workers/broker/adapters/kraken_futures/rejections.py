"""What a Kraken Futures refusal means for the caller: the one place that decides.

Kraken Futures refuses in two ways (PROTOCOL_NOTES §8):

* ``{"result": "success", "sendStatus": {"status": "postWouldExecute", ...}}`` — the
  transport succeeded, the *order* did not. `rejection_for_status` turns every failing
  ``status`` of ``sendorder``/``editorder``/``cancelorder`` into an
  `OrderRejectedError` with a stable `ErrorCode` and a sentence naming what to fix.
* ``{"result": "error", "error": "apiLimitExceeded"}`` — the *request* failed.
  `error_for_result` decides whether that is a rejection of one order, a transient failure
  to retry, or a dead session.

And we refuse first when the rate limiter says the venue would: `local_refusal` words that
refusal with the numbers (cost, units spent, budget, reserve, when to retry).
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from workers.broker.adapters.base import (
    AdapterError,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken_futures.ratelimit import DERIVATIVES_WINDOW_SECONDS
from workers.broker.adapters.kraken_futures.requests import ORDER_ENDPOINTS, RestCall

CANCELS = frozenset({"cancelorder", "cancelallorders", "cancelallordersafter"})
"""Calls that may spend the units kept in reserve."""

SUCCESS_STATUSES: dict[str, frozenset[str]] = {
    # "cancelled" answers sendorder when an order was taken and ended at once (an IOC or
    # market order that found nothing); it did exist, so events tell the rest.
    "sendorder": frozenset({"placed", "partiallyFilled", "filled", "cancelled"}),
    "editorder": frozenset({"edited"}),
    "cancelorder": frozenset({"cancelled"}),
}

# status -> (code, what it means for the client). Statuses from the send-order, edit-order
# and cancel-order pages of the Kraken Futures documentation.
STATUS_REJECTIONS: dict[str, tuple[ErrorCode, str]] = {
    "marketSuspended": (ErrorCode.UNAVAILABLE, "the market is suspended"),
    "marketInactive": (ErrorCode.UNAVAILABLE, "the market is not trading"),
    "invalidPrice": (ErrorCode.PRICE_OFF_TICK, "the price is not a valid tick of the contract"),
    "invalidSize": (ErrorCode.QTY_OFF_LOT, "the size is not a valid multiple of the contract"),
    "tooManySmallOrders": (ErrorCode.INVALID_ORDER, "the account has too many small orders"),
    "insufficientAvailableFunds": (
        ErrorCode.INVALID_ORDER,
        "the account lacks the available margin for this order",
    ),
    "wouldCauseLiquidation": (ErrorCode.INVALID_ORDER, "the order would cause a liquidation"),
    "clientOrderIdAlreadyExist": (
        ErrorCode.DUPLICATE_ORDER,
        "the venue already has an order with this client_order_id",
    ),
    "clientOrderIdTooBig": (ErrorCode.INVALID_FIELD, "the client_order_id is too long"),
    "clientOrderIdInvalid": (ErrorCode.INVALID_FIELD, "the client_order_id is not accepted"),
    "maxPositionViolation": (ErrorCode.INVALID_ORDER, "the order exceeds the maximum position"),
    "outsidePriceCollar": (ErrorCode.INVALID_ORDER, "the price is outside the venue's collar"),
    "wouldIncreasePriceDislocation": (
        ErrorCode.INVALID_ORDER,
        "the price is too far from the mark price",
    ),
    "notFound": (ErrorCode.ORDER_NOT_FOUND, "the venue has no open order with this id"),
    "orderForEditNotFound": (ErrorCode.ORDER_NOT_FOUND, "the venue has no open order to edit"),
    "orderForEditNotAStop": (ErrorCode.ORDER_NOT_MODIFIABLE, "only stop orders take a stop price"),
    "filled": (ErrorCode.ORDER_NOT_CANCELLABLE, "the order is already filled"),
    "postWouldExecute": (
        ErrorCode.INVALID_ORDER,
        "a post-only order would have taken liquidity",
    ),
    "iocWouldNotExecute": (
        ErrorCode.NO_LIQUIDITY,
        "an IOC order found nothing to trade against at its price",
    ),
    "selfFill": (ErrorCode.INVALID_ORDER, "the order would trade against the account's own"),
    "wouldNotReducePosition": (ErrorCode.INVALID_ORDER, "a reduce-only order would not reduce"),
    "marketIsPostOnly": (ErrorCode.INVALID_ORDER, "the market accepts post-only orders only"),
    "tooManyOrders": (ErrorCode.FLOOD, "the account has too many open orders"),
    "fixedLeverageTooHigh": (ErrorCode.INVALID_ORDER, "the account's fixed leverage is too high"),
    "wouldProcessAfterSpecifiedTime": (
        ErrorCode.UNAVAILABLE,
        "the venue could not process the request in time",
    ),
}


def rejection_for_status(
    endpoint: str, status: str, *, client_order_id: str | None = None
) -> OrderRejectedError | None:
    """None when `status` means `endpoint` succeeded, else the coded rejection. An unknown
    failing status is still a rejection (`invalid_order`), with the venue's word quoted."""
    if status in SUCCESS_STATUSES.get(endpoint, frozenset()):
        return None
    code, meaning = STATUS_REJECTIONS.get(
        status, (ErrorCode.INVALID_ORDER, "the venue refused the request")
    )
    if status == "filled" and endpoint == "editorder":
        code = ErrorCode.ORDER_NOT_MODIFIABLE
    return OrderRejectedError(
        code,
        f"Kraken Futures refused {endpoint}: {meaning} ({status})",
        client_order_id=client_order_id,
    )


_FATAL_ERRORS = frozenset({"authenticationError", "accountInactive", "invalidAccount"})
_TRANSIENT_ERRORS = frozenset(
    {"nonceBelowThreshold", "nonceDuplicate", "unavailable", "Server Error", "marketUnavailable"}
)
_BAD_REQUEST_ERRORS = frozenset(
    {"invalidArgument", "requiredArgumentMissing", "invalidAmount", "invalidUnit"}
)


def error_for_result(
    endpoint: str, error: str, *, client_order_id: str | None = None
) -> AdapterError:
    """The `AdapterError` for ``{"result": "error", "error": <error>}`` from `endpoint`.

    ``apiLimitExceeded`` refuses an order call as `rate_limited` (nothing was placed) and makes
    a query retryable after one budget window; credential problems are fatal; nonce and
    availability problems are retryable; a malformed order is `invalid_order`."""
    is_order = endpoint in ORDER_ENDPOINTS
    if error == "apiLimitExceeded":
        message = (
            f"Kraken Futures refused {endpoint}: apiLimitExceeded (this key spent its "
            f"{DERIVATIVES_WINDOW_SECONDS:g}-second cost budget; another client may share it)"
        )
        if is_order:
            return OrderRejectedError(
                ErrorCode.RATE_LIMITED, message, client_order_id=client_order_id
            )
        return RetryableAdapterError(message, retry_after=DERIVATIVES_WINDOW_SECONDS)
    if error in _FATAL_ERRORS:
        return FatalAdapterError(
            f"Kraken Futures refused {endpoint}: {error}; check the account's API key"
        )
    if error in _TRANSIENT_ERRORS:
        return RetryableAdapterError(f"Kraken Futures could not serve {endpoint}: {error}")
    if error == "notFound" and endpoint in ("cancelorder", "editorder"):
        return OrderRejectedError(
            ErrorCode.ORDER_NOT_FOUND,
            f"Kraken Futures refused {endpoint}: no such order (notFound)",
            client_order_id=client_order_id,
        )
    if is_order:
        code = ErrorCode.INVALID_ORDER
        return OrderRejectedError(
            code, f"Kraken Futures refused {endpoint}: {error}", client_order_id=client_order_id
        )
    if error in _BAD_REQUEST_ERRORS:
        # A query we built wrong will not get better by retrying.
        return FatalAdapterError(f"Kraken Futures refused {endpoint}: {error}")
    return RetryableAdapterError(f"Kraken Futures could not serve {endpoint}: {error}")


def error_for_http(endpoint: str, status: int, error: str | None) -> AdapterError | None:
    """The error for an HTTP status that is not 2xx when the body named no `error`
    (`error_for_result` handles bodies that do). None for 2xx."""
    if 200 <= status < 300:
        return None
    if status in (401, 403):
        return FatalAdapterError(
            f"Kraken Futures refused {endpoint} with HTTP {status}; check the account's API key"
        )
    if status in (408, 425, 429) or status >= 500:
        return RetryableAdapterError(f"Kraken Futures answered {endpoint} with HTTP {status}")
    return FatalAdapterError(
        f"Kraken Futures answered {endpoint} with HTTP {status}"
        + (f" ({error})" if error else "")
        + "; the adapter and the venue disagree about the protocol"
    )


def local_refusal(
    call: RestCall,
    *,
    cost: int,
    spent: int,
    limit: int,
    reserve: int,
    window: float,
    retry_after: float,
    client_order_id: str | None,
) -> OrderRejectedError | RetryableAdapterError:
    """The error for a call the rate limiter refused: a `rate_limited` rejection for order
    calls, a retryable error (with `retry_after`) for queries."""
    kept = f" ({reserve} more are kept for cancels)" if call.endpoint not in CANCELS else ""
    message = (
        f"{call.endpoint} refused locally to stay under Kraken Futures' rate limit: it costs "
        f"{cost} units and {spent} of the {limit} units this key may spend on it per "
        f"{window:g} s are used{kept}; retry in {retry_after:.1f} s"
    )
    if call.endpoint in ORDER_ENDPOINTS:
        return OrderRejectedError(ErrorCode.RATE_LIMITED, message, client_order_id=client_order_id)
    return RetryableAdapterError(message, retry_after=retry_after)
