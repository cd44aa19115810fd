"""Every exception the SDK raises derives from `ClientError`; each says what to do next."""

from __future__ import annotations


class ClientError(Exception):
    """Root of the SDK's exceptions."""


class AuthError(ClientError):
    """The API token was refused, or it may not trade the account asked for. Fix the token or
    the account; retrying as is will not help."""


class ConnectionLost(ClientError):
    """The client is closed, gave up reconnecting, or could not reach the platform. Connect
    again (`MarketClient.connect`) to carry on; the session can be resumed by its id."""


class RequestFailed(ClientError):
    """The server refused a request (a subscription, a query). `code` is the machine-readable
    reason (`protocol.errors.ErrorCode` values), `field` the offending field when known."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 ref: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.ref = ref


class RequestTimeout(ClientError, TimeoutError):
    """No answer in time. The request may still be carried out; asking again is safe for
    queries and for orders with the same client_order_id."""


class OrderRejected(ClientError):
    """The order was refused — by the SDK's own checks, the Market, the Broker's risk checks or
    the venue. Nothing was placed. `code` says why (e.g. `price_off_tick`, `unavailable`);
    fix the order (or wait, for `unavailable`) and place it again."""

    def __init__(self, code: str, message: str, *, client_order_id: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.client_order_id = client_order_id
        self.field = field


class OrderNotFilled(ClientError):
    """`OrderHandle.filled()` was awaited but the order ended otherwise (cancelled or
    expired). `status` is how it ended; what did fill is in the handle's `fills`."""

    def __init__(self, client_order_id: str, status: str) -> None:
        super().__init__(f"order {client_order_id} ended {status}, not filled")
        self.client_order_id = client_order_id
        self.status = status
