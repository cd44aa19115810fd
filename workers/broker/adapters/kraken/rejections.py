"""Kraken error strings -> what the caller should do (the one place that decides).

Kraken reports failures as ``"<category>:<message>"`` strings, in REST ``error`` arrays
and in the ``error`` field of failed v2 responses (PROTOCOL_NOTES §6). The same strings
come from both APIs, so one table maps them to the adapter contract:

* credentials and permissions -> :class:`FatalAdapterError` (fix the account);
* the venue busy, throttled, unavailable, a stale session or nonce ->
  :class:`RetryableAdapterError`;
* a refusal of this one order or request -> :class:`OrderRejectedError` with a code.
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from workers.broker.adapters.base import (
    AdapterError,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)

_FATAL = (
    "EAPI:Invalid key",
    "EAPI:Invalid signature",
    "EAPI:Bad request",
    "EAPI:Feature disabled",
    "EGeneral:Permission denied",
    "EAccount:Invalid permissions",
    "EGeneral:Unknown method",
)

_RETRYABLE = (
    "EAPI:Invalid nonce",
    "EAPI:Rate limit exceeded",
    "EService:Unavailable",
    "EService:Busy",
    "EService:Throttled",
    "EService: Throttled",
    "EService:Deadline elapsed",
    "EService:Timeout",
    "EGeneral:Temporary lockout",
    "EGeneral:Internal error",
    "EAuth:Rate limit exceeded",
    "EAuth:Too many requests",
    "ESession:Invalid session",
)

# Order refusals, most specific first.
_REJECTIONS: tuple[tuple[str, ErrorCode], ...] = (
    ("EOrder:Rate limit exceeded", ErrorCode.RATE_LIMITED),
    ("EOrder:Domain rate limit exceeded", ErrorCode.RATE_LIMITED),
    # Too many open orders on the pair: cancel some first (not a rate problem).
    ("EOrder:Orders limit exceeded", ErrorCode.INVALID_ORDER),
    ("EOrder:Positions limit exceeded", ErrorCode.INVALID_ORDER),
    ("EOrder:Order minimum not met", ErrorCode.QTY_BELOW_MIN),
    ("EOrder:Cost minimum not met", ErrorCode.INVALID_ORDER),
    ("EOrder:Tick size check failed", ErrorCode.PRICE_OFF_TICK),
    ("EOrder:Unknown order", ErrorCode.ORDER_NOT_FOUND),
    ("EOrder:Invalid order", ErrorCode.INVALID_ORDER),
    ("EOrder:Insufficient funds", ErrorCode.INVALID_ORDER),
    ("EQuery:Unknown asset pair", ErrorCode.UNKNOWN_INSTRUMENT),
    ("EService:Market in cancel_only mode", ErrorCode.UNAVAILABLE),
    ("EService:Market in post_only mode", ErrorCode.UNAVAILABLE),
    ("EService:Market in limit_only mode", ErrorCode.UNAVAILABLE),
    ("EGeneral:Invalid arguments", ErrorCode.INVALID_ORDER),
)


def _matches(error: str, prefix: str) -> bool:
    return error == prefix or error.startswith((prefix + ":", prefix + " "))


def error_for_kraken(
    error: str,
    *,
    what: str,
    client_order_id: str | None = None,
    retry_after: float | None = None,
) -> AdapterError:
    """The adapter error for one Kraken error string. ``what`` names the request in the
    message (``"add_order BTC/USD"``); the message always quotes Kraken's own text."""
    message = f"{what}: Kraken answered {error!r}"
    for prefix in _FATAL:
        if _matches(error, prefix):
            return FatalAdapterError(message)
    for prefix in _RETRYABLE:
        if _matches(error, prefix):
            return RetryableAdapterError(message, retry_after=retry_after)
    lowered = error.lower()
    if "duplicate" in lowered or "already in use" in lowered:
        return OrderRejectedError(
            ErrorCode.DUPLICATE_ORDER, message, client_order_id=client_order_id
        )
    for prefix, code in _REJECTIONS:
        if _matches(error, prefix):
            return OrderRejectedError(code, message, client_order_id=client_order_id)
    if error.startswith(("EOrder:", "EFunding:")):
        return OrderRejectedError(ErrorCode.INVALID_ORDER, message, client_order_id=client_order_id)
    if error.startswith("EService:"):
        return RetryableAdapterError(message, retry_after=retry_after)
    # An error category this adapter does not know: the request may or may not be at fault,
    # and nothing says the session is broken. Let the caller try again later.
    return RetryableAdapterError(message, retry_after=retry_after)
