"""The broker `Adapter` contract: what every venue (Kraken, Alpaca, ccxt, paper…) implements.

An adapter holds one account's session with one venue and speaks only canonical `protocol`
types to the rest of the Broker worker. Venue symbols, JSON shapes, signing and rate limits
stay inside the adapter package.

Lifecycle: `connect()` once, then any other call, then `close()`. `events()` is the single
stream of everything the venue tells us — market data for the subscribed streams, every order
state change of this account's orders (fills arrive inside `order_partially_filled` /
`order_filled`), and `ConnectionChanged` notices — in venue order. It has one consumer.

Errors: every failure is an `AdapterError`; its subclass says what the caller should do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from protocol.errors import ErrorCode
from protocol.market import CandleInterval, Channel, InstrumentSpec, MarketEvent
from protocol.orders import BalancesSnapshot, Fill, NewOrder, OrderEvent, OrderSnapshot, Position

# ---------------------------------------------------------------- errors


class AdapterError(Exception):
    """Root of every adapter failure. Catch this to catch them all."""


class RetryableAdapterError(AdapterError):
    """A transient failure (network, timeout, venue overloaded, rate limited). The same call
    may succeed later; wait at least `retry_after` seconds when given."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalAdapterError(AdapterError):
    """The session cannot work (bad credentials, account disabled, venue API changed).
    Retrying will not help: stop and report to the operator."""


class OrderRejectedError(AdapterError):
    """The venue refused this one request (bad price, unknown order, insufficient funds…).
    The session is fine; do not resend the same request. `code` says why."""

    def __init__(self, code: ErrorCode, message: str, *, client_order_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_order_id = client_order_id


def is_retryable(exc: BaseException) -> bool:
    """The one place that decides whether a failed adapter call may be tried again."""
    return isinstance(exc, RetryableAdapterError)


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class OrderAck:
    """The venue took the order. Its later life is reported through `events()`."""

    client_order_id: str
    order_id: str  # the venue's id for the order
    ts: int  # ns since the epoch, venue time when known


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The venue session went down or came back. After `connected=True` following a loss,
    market data streams restart with snapshots and order state may have moved on: the Broker
    reconciles with `open_orders()` and `fills_since()`."""

    connected: bool
    reason: str
    ts: int


AdapterEvent = MarketEvent | OrderEvent | ConnectionChanged
"""What `Adapter.events()` yields."""


# ---------------------------------------------------------------- the contract


class Adapter(ABC):
    """One account's session with one venue, in canonical terms.

    Implementations must be safe to call from one asyncio task at a time per method, must not
    block the event loop, and must convert every third-party error into an `AdapterError`
    subclass at the boundary (`raise … from exc`).
    """

    #: Short venue name, e.g. "paper", "kraken". Used in logs and metrics.
    venue: str
    #: The account this session trades for.
    account: str

    @abstractmethod
    async def connect(self) -> None:
        """Open the venue session (and authenticate). Returns once orders can be placed.
        Raises `RetryableAdapterError` or `FatalAdapterError`."""

    @abstractmethod
    async def close(self) -> None:
        """Close the session and end `events()`. Cancels nothing at the venue. Idempotent."""

    @abstractmethod
    async def subscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        """Start delivering `channel` for `instrument` through `events()`. A book stream begins
        with a `book_snapshot`. Subscribing twice to the same stream is a no-op. Raises
        `OrderRejectedError(unknown_instrument)` for an instrument the venue does not list."""

    @abstractmethod
    async def unsubscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        """Stop a stream started by `subscribe`. Unknown streams are ignored."""

    @abstractmethod
    async def place_order(self, request: NewOrder) -> OrderAck:
        """Send a new order. Returns once the venue has taken it; acceptance, fills and the
        end of the order are reported by `events()` (an `order_accepted` always comes, even
        if the venue reports it only implicitly). A synchronous refusal raises
        `OrderRejectedError` with a code (price_off_tick, qty_off_lot, duplicate_order…)."""

    @abstractmethod
    async def cancel_order(self, client_order_id: str, *, order_id: str | None = None) -> None:
        """Ask the venue to cancel an order; `order_cancelled` confirms in `events()`. Raises
        `OrderRejectedError(order_not_found | order_not_cancellable)` when it cannot."""

    @abstractmethod
    async def modify_order(
        self,
        client_order_id: str,
        *,
        order_id: str | None = None,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> None:
        """Change an open order's total qty and/or price; `order_modified` confirms. Raises
        `OrderRejectedError` when the venue refuses. Venues without native modify may cancel
        and replace, keeping `client_order_id`."""

    @abstractmethod
    async def open_orders(self) -> list[OrderSnapshot]:
        """Every working order of the account, as the venue sees it now."""

    @abstractmethod
    async def fills_since(self, ts: int) -> list[Fill]:
        """Every fill of the account with `fill.ts >= ts` (ns), oldest first."""

    @abstractmethod
    async def instruments(self) -> list[InstrumentSpec]:
        """Every tradable instrument with its tick size, lot size and minimum quantity."""

    @abstractmethod
    async def balances(self) -> BalancesSnapshot:
        """Cash per currency of the account."""

    async def positions(self) -> list[Position]:
        """Net positions per instrument. Spot venues that hold assets as balances may keep
        this default (no positions)."""
        return []

    @abstractmethod
    def events(self) -> AsyncIterator[AdapterEvent]:
        """The venue's stream, in order; it ends after `close()`. Single consumer."""
