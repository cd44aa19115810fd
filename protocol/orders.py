"""Orders, fills, positions and balances on the wire.

Client → server (each names the account it acts on; `client_order_id` is chosen by the client
and is the idempotency key — re-sending a `new_order` never creates a second order):

    new_order       {client_order_id, account, instrument, side, order_type, qty, price?,
                     time_in_force}
    cancel_order    {client_order_id, account}
    modify_order    {client_order_id, account, qty?, price?}    at least one of qty/price
    get_positions   {account, ref?}
    get_open_orders {account, ref?}

Server → client order events all share the order's current state:

    {type, account, client_order_id, order_id?, instrument, side, order_type, qty, price?,
     time_in_force, status, filled_qty, remaining_qty, avg_price?, seq?, ts}

with `type` one of order_accepted, order_rejected (+reason, message), order_partially_filled
(+fill), order_filled (+fill), order_cancelled (+reason, message?), order_expired,
order_modified, order_snapshot (the state as is: the answer to a repeated `new_order` and the
items of `open_orders`). `seq` is the per-session sequence number the Market worker stamps;
Broker-side producers leave it out.

Other server messages: fill (standalone, for reconciliation), positions, balances,
open_orders. Each position of `positions` is {account, instrument, qty, avg_price?,
realized_pnl, unrealized_pnl?, fees?}: the Broker's position manager reports PnL and fees
per instrument (the venue's own view, reconciled after every connect, for any instrument it
reports that the fills never touched).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from protocol.errors import ErrorCode
from protocol.market import (
    Currency,
    Frozen,
    Instrument,
    Money,
    Price,
    Quantity,
    Side,
    Size,
    TimestampNs,
)

ClientOrderId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
"""1 to 64 characters of letters, digits and `._:-`."""
AccountId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
"""1 to 64 characters of letters, digits and `._-`."""
Ref = Annotated[str, Field(min_length=1, max_length=64)]
"""A client-chosen correlation id, echoed in the answer (and in any error) to the request."""


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "GTC"  # rests on the book until filled or cancelled
    IOC = "IOC"  # fills what it can at once; the rest is cancelled


class OrderStatus(StrEnum):
    PENDING = "pending"  # recorded, not yet acknowledged by the venue
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

# Every legal status change. A venue may skip reporting acceptance (an IOC order can be
# filled or cancelled before its ack arrives), so pending may jump straight to any outcome.
LEGAL_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {
            OrderStatus.ACCEPTED,
            OrderStatus.REJECTED,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.ACCEPTED: frozenset(
        {
            OrderStatus.ACCEPTED,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


class Liquidity(StrEnum):
    MAKER = "maker"  # the order was resting on the book
    TAKER = "taker"  # the order crossed the book


class CancelReason(StrEnum):
    REQUESTED = "requested"  # the client asked
    IOC_REMAINDER = "ioc_remainder"  # the unfilled part of an IOC order
    NO_LIQUIDITY = "no_liquidity"  # the unfilled part of a market order: the book ran dry
    SELF_TRADE = "self_trade"  # would have traded against the same account
    RISK = "risk"  # the position manager or a limit
    KILL_SWITCH = "kill_switch"
    VENUE = "venue"  # the venue cancelled it for its own reasons


# ---------------------------------------------------------------- client → server


class NewOrder(Frozen):
    """Place an order. Idempotent on (account, client_order_id)."""

    type: Literal["new_order"] = Field(default="new_order", description="Message discriminator.")
    client_order_id: ClientOrderId = Field(description="Client-chosen id; the idempotency key.")
    account: AccountId = Field(description="Account to trade on.")
    instrument: Instrument = Field(description="Canonical instrument, e.g. BTC/USD.")
    side: Side = Field(description="buy or sell.")
    order_type: OrderType = Field(default=OrderType.LIMIT, description="limit or market.")
    qty: Quantity = Field(description="Order quantity in base units, > 0.")
    price: Price | None = Field(
        default=None,
        validate_default=True,
        description="Limit price; required for limit orders, absent for market orders.",
    )
    time_in_force: TimeInForce = Field(
        default=TimeInForce.GTC,
        description="GTC or IOC. A market order never rests, whatever this says.",
    )

    @field_validator("price")
    @classmethod
    def _price_matches_type(cls, price: Any, info: ValidationInfo) -> Any:
        order_type = info.data.get("order_type")
        if order_type is OrderType.LIMIT and price is None:
            raise PydanticCustomError("missing_for_choice", "a limit order needs a price")
        if order_type is OrderType.MARKET and price is not None:
            raise PydanticCustomError("market_price", "a market order takes no price")
        return price


class CancelOrder(Frozen):
    """Cancel the rest of an order. Confirmed by `order_cancelled`; an order already
    cancelled answers with its `order_snapshot` (so a cancel may safely be sent again)."""

    type: Literal["cancel_order"] = Field(
        default="cancel_order", description="Message discriminator."
    )
    client_order_id: ClientOrderId = Field(description="The order to cancel.")
    account: AccountId = Field(description="Account the order belongs to.")


class ModifyOrder(Frozen):
    """Change an open order's total quantity and/or limit price. Confirmed by
    `order_modified`. A new price or a larger quantity loses time priority. A modify to the
    order's present qty and price changes nothing and answers with its `order_snapshot`."""

    type: Literal["modify_order"] = Field(
        default="modify_order", description="Message discriminator."
    )
    client_order_id: ClientOrderId = Field(description="The order to modify.")
    account: AccountId = Field(description="Account the order belongs to.")
    qty: Quantity | None = Field(
        default=None, description="New total quantity (filled part included); > filled qty."
    )
    price: Price | None = Field(default=None, validate_default=True, description="New limit price.")

    @field_validator("price")
    @classmethod
    def _something_changes(cls, price: Any, info: ValidationInfo) -> Any:
        if price is None and info.data.get("qty") is None:
            raise PydanticCustomError("missing_for_choice", "modify_order needs qty and/or price")
        return price


def modify_reported(modify: Mapping[str, Any], qty: object, price: object) -> bool:
    """Whether an order that reports `qty` and `price` shows `modify` (a modify_order's
    fields, wire strings or decimals) carried out: each amount it asked for is the one
    reported. How the Market and the SDK know a modify needs no sending again."""
    for name, reported in (("qty", qty), ("price", price)):
        wanted = modify.get(name)
        if wanted is None:
            continue
        try:
            if Decimal(str(wanted)) != Decimal(str(reported)):
                return False
        except ArithmeticError:  # a malformed figure never matches
            return False
    return True


class GetPositions(Frozen):
    """Ask for the account's positions and balances (answered by `positions` + `balances`)."""

    type: Literal["get_positions"] = Field(
        default="get_positions", description="Message discriminator."
    )
    account: AccountId = Field(description="Account to report on.")
    ref: Ref | None = Field(default=None, description="Echoed in the answers.")


class GetOpenOrders(Frozen):
    """Ask for the account's open orders (answered by `open_orders`)."""

    type: Literal["get_open_orders"] = Field(
        default="get_open_orders", description="Message discriminator."
    )
    account: AccountId = Field(description="Account to report on.")
    session_only: bool = Field(
        default=False,
        description="Only the orders placed by this session (also by an earlier connection "
        "or process that had the same session), not all the customer's on the account.",
    )
    ref: Ref | None = Field(default=None, description="Echoed in the answer.")


# ---------------------------------------------------------------- fills


class Fill(Frozen):
    """One execution of one order. `fill_id` is unique per venue and account; a consumer that
    sees the same fill_id twice must count it once."""

    type: Literal["fill"] = Field(default="fill", description="Message discriminator.")
    fill_id: str = Field(min_length=1, max_length=64, description="Venue execution id.")
    account: AccountId = Field(description="Account that traded.")
    client_order_id: ClientOrderId = Field(description="The order that traded.")
    order_id: str | None = Field(default=None, description="Venue order id, when known.")
    instrument: Instrument = Field(description="Canonical instrument.")
    side: Side = Field(description="Side of this account's order.")
    qty: Quantity = Field(description="Executed quantity, base units.")
    price: Price = Field(description="Execution price.")
    fee: Money = Field(description="Fee charged (negative for a rebate).")
    fee_currency: Currency = Field(description="Currency the fee is charged in.")
    liquidity: Liquidity = Field(description="maker (was resting) or taker (crossed).")
    ts: TimestampNs = Field(description="Execution time, ns since the epoch.")


# ---------------------------------------------------------------- order events


class _OrderEvent(Frozen):
    """Fields common to every order event: the order's full state after the change."""

    # Statuses this kind of event may report; None = any.
    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = None

    account: AccountId = Field(description="Account the order belongs to.")
    client_order_id: ClientOrderId = Field(description="Client-chosen order id.")
    order_id: str | None = Field(default=None, description="Venue order id, when known.")
    instrument: Instrument = Field(description="Canonical instrument.")
    side: Side = Field(description="buy or sell.")
    order_type: OrderType = Field(description="limit or market.")
    qty: Quantity = Field(description="Total order quantity (after any modification).")
    price: Price | None = Field(default=None, description="Limit price; absent for market.")
    time_in_force: TimeInForce = Field(description="GTC or IOC.")
    status: OrderStatus = Field(description="Order status after this event.")
    filled_qty: Size = Field(description="Quantity filled so far.")
    remaining_qty: Size = Field(
        description="Quantity still working on the book; 0 once the order is finished."
    )
    avg_price: Price | None = Field(default=None, description="Average fill price, if filled.")
    seq: int | None = Field(
        default=None,
        ge=1,
        description="Per-session sequence number stamped by the Market worker.",
    )
    ts: TimestampNs = Field(description="Time of the change, ns since the epoch.")

    @model_validator(mode="after")
    def _quantities_add_up(self) -> _OrderEvent:
        if self.filled_qty > self.qty:
            raise ValueError("filled_qty exceeds qty")
        if self.filled_qty + self.remaining_qty > self.qty:
            raise ValueError("filled_qty + remaining_qty exceeds qty")
        if self.status.is_terminal and self.remaining_qty != 0:
            raise ValueError(f"a {self.status} order has no remaining qty")
        allowed = self.allowed_statuses
        if allowed is not None and self.status not in allowed:
            raise ValueError(f"{self.status} is not a possible status for this event")
        return self


class OrderAccepted(_OrderEvent):
    """The venue acknowledged the order; it is working."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset({OrderStatus.ACCEPTED})
    type: Literal["order_accepted"] = Field(
        default="order_accepted", description="Message discriminator."
    )


class OrderRejected(_OrderEvent):
    """The venue or a pre-trade check refused the order; nothing was placed."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset({OrderStatus.REJECTED})
    type: Literal["order_rejected"] = Field(
        default="order_rejected", description="Message discriminator."
    )
    reason: ErrorCode = Field(description="Machine-readable reason.")
    message: str = Field(description="Human-readable explanation naming what to fix.")


class OrderPartiallyFilled(_OrderEvent):
    """Part of the order executed; the rest is still working."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset(
        {OrderStatus.PARTIALLY_FILLED}
    )
    type: Literal["order_partially_filled"] = Field(
        default="order_partially_filled", description="Message discriminator."
    )
    fill: Fill = Field(description="The execution that caused this event.")


class OrderFilled(_OrderEvent):
    """The order is completely executed."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset({OrderStatus.FILLED})
    type: Literal["order_filled"] = Field(
        default="order_filled", description="Message discriminator."
    )
    fill: Fill = Field(description="The execution that completed the order.")


class OrderCancelled(_OrderEvent):
    """The order's remainder was cancelled; it will not trade again."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset({OrderStatus.CANCELLED})
    type: Literal["order_cancelled"] = Field(
        default="order_cancelled", description="Message discriminator."
    )
    reason: CancelReason = Field(description="Why it was cancelled.")
    message: str | None = Field(default=None, description="Optional detail for humans.")


class OrderExpired(_OrderEvent):
    """The order's time in force ran out (e.g. a session end); it will not trade again."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset({OrderStatus.EXPIRED})
    type: Literal["order_expired"] = Field(
        default="order_expired", description="Message discriminator."
    )


class OrderModified(_OrderEvent):
    """The order's qty and/or price changed; the fields carry the new values."""

    allowed_statuses: ClassVar[frozenset[OrderStatus] | None] = frozenset(
        {OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED}
    )
    type: Literal["order_modified"] = Field(
        default="order_modified", description="Message discriminator."
    )


class OrderSnapshot(_OrderEvent):
    """The order's state as it is, without a change: the answer to a repeated `new_order`
    and one item of `open_orders`."""

    type: Literal["order_snapshot"] = Field(
        default="order_snapshot", description="Message discriminator."
    )


OrderEvent = (
    OrderAccepted
    | OrderRejected
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCancelled
    | OrderExpired
    | OrderModified
    | OrderSnapshot
)
ORDER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[OrderEvent, Field(discriminator="type")])
"""Validates any order event from a dict/JSON, choosing the model by `type`."""


# ---------------------------------------------------------------- account state


class Position(Frozen):
    """Net holding of one instrument in one account."""

    account: AccountId = Field(description="Account holding the position.")
    instrument: Instrument = Field(description="Canonical instrument.")
    qty: Money = Field(description="Net quantity in base units; negative when short.")
    avg_price: Price | None = Field(
        default=None, description="Average entry price of the open quantity; absent when flat."
    )
    realized_pnl: Money = Field(
        description="Profit realised by reducing the position, in quote currency, before fees."
    )
    unrealized_pnl: Money | None = Field(
        default=None,
        description="PnL of the open quantity at the current market price, in quote "
        "currency; absent when no price is known (or from a Broker that does not report it).",
    )
    fees: dict[Currency, Money] | None = Field(
        default=None,
        description="Fees paid on the instrument's fills, per currency (a rebate is negative); "
        "absent from a Broker that does not report them.",
    )


class PositionsSnapshot(Frozen):
    """All non-empty positions of one account."""

    type: Literal["positions"] = Field(default="positions", description="Message discriminator.")
    account: AccountId = Field(description="Account reported on.")
    positions: list[Position] = Field(description="One entry per instrument ever traded.")
    ref: Ref | None = Field(default=None, description="Echo of the request's ref.")
    ts: TimestampNs = Field(description="Time of the snapshot, ns since the epoch.")


class BalancesSnapshot(Frozen):
    """Cash per currency of one account."""

    type: Literal["balances"] = Field(default="balances", description="Message discriminator.")
    account: AccountId = Field(description="Account reported on.")
    cash: dict[Currency, Money] = Field(description="Balance per currency code.")
    ref: Ref | None = Field(default=None, description="Echo of the request's ref.")
    ts: TimestampNs = Field(description="Time of the snapshot, ns since the epoch.")


class OpenOrders(Frozen):
    """Every working order of one account."""

    type: Literal["open_orders"] = Field(
        default="open_orders", description="Message discriminator."
    )
    account: AccountId = Field(description="Account reported on.")
    orders: list[OrderSnapshot] = Field(description="Working orders, oldest first.")
    ref: Ref | None = Field(default=None, description="Echo of the request's ref.")
    ts: TimestampNs = Field(description="Time of the snapshot, ns since the epoch.")


__all__ = [
    "LEGAL_TRANSITIONS",
    "ORDER_EVENT",
    "TERMINAL_STATUSES",
    "AccountId",
    "BalancesSnapshot",
    "CancelOrder",
    "CancelReason",
    "ClientOrderId",
    "Fill",
    "GetOpenOrders",
    "GetPositions",
    "Liquidity",
    "ModifyOrder",
    "NewOrder",
    "OpenOrders",
    "OrderAccepted",
    "OrderCancelled",
    "OrderEvent",
    "OrderExpired",
    "OrderFilled",
    "OrderModified",
    "OrderPartiallyFilled",
    "OrderRejected",
    "OrderSnapshot",
    "OrderStatus",
    "OrderType",
    "Position",
    "PositionsSnapshot",
    "Ref",
    "TimeInForce",
]
