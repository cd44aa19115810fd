"""Wire shapes of the paper exchange's own venue protocol, shared by its server and client.

The protocol itself is described in `workers.broker.adapters.paper.server`. This module holds
what both ends must agree on and nothing else: the answer bodies, the stream frames, the
status a refusal is sent with, and the names an account may take. Pure: no I/O.

Like every venue's schemas, these stay inside the paper adapter package; the rest of the
platform sees only `protocol` types.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, TypeAdapter, model_validator

from protocol.codec import encode
from protocol.errors import ErrorBody, ErrorCode
from protocol.market import (
    CandleInterval,
    Channel,
    Currency,
    Frozen,
    Instrument,
    InstrumentSpec,
    MarketEvent,
    Money,
    Price,
    Quantity,
    TimestampNs,
)
from protocol.orders import Fill, OrderEvent, OrderSnapshot, Position

API = "/v1"
URL_FILE = Path("run") / "paper.url"
"""Where the exchange announces its URL, relative to the data dir."""

ACCOUNT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
RESERVED_ACCOUNT_PREFIX = "house-"
"""The venue's own market makers and takers trade under these names; clients may not."""

MAX_STREAM_FRAME = 64 * 1024
"""Largest frame a client may send on the stream (the venue closes with 1009 above it)."""


def account_problem(account: str) -> tuple[ErrorCode, str] | None:
    """Why `account` cannot be used on this venue, or None when it can."""
    if not ACCOUNT_RE.fullmatch(account):
        return ErrorCode.INVALID_FIELD, "an account name is 1-64 of letters, digits and ._-"
    if account.startswith(RESERVED_ACCOUNT_PREFIX):
        return ErrorCode.FORBIDDEN, f"accounts named {RESERVED_ACCOUNT_PREFIX}* belong to the venue"
    return None


# ---------------------------------------------------------------- REST bodies


class ModifyRequest(Frozen):
    """`PATCH …/orders/{client_order_id}`: the new total qty and/or limit price."""

    qty: Quantity | None = Field(default=None, description="New total quantity.")
    price: Price | None = Field(default=None, description="New limit price.")

    @model_validator(mode="after")
    def _something_changes(self) -> ModifyRequest:
        if self.qty is None and self.price is None:
            raise ValueError("give a new qty and/or price")
        return self


class OrderAnswer(Frozen):
    """The answer to a new order, a cancel, a modify or a look-up: the order's state now.
    `created` is false when a new order repeated a known `client_order_id`."""

    created: bool = Field(default=False, description="True when this request placed the order.")
    order: OrderSnapshot = Field(description="The order's state after the request.")


class OrderList(Frozen):
    orders: list[OrderSnapshot] = Field(description="Working orders, oldest first.")


FILLS_PAGE = 1000
"""Fills in one answer of `GET …/fills` at most: a request reads no more, however far back."""


class FillList(Frozen):
    fills: list[Fill] = Field(description="Fills with ts >= since, oldest first: one page.")
    more: bool = Field(
        default=False,
        description="The page is full: ask again with `offset` moved on by its length.",
    )


class InstrumentList(Frozen):
    instruments: list[InstrumentSpec] = Field(description="Every tradable instrument.")


class LedgerView(Frozen):
    """The exchange's own books for one account: the ground truth tests compare against.
    Every amount is exact (see `ledger.py` for the two rounded quotients)."""

    account: str = Field(description="The account reported on.")
    cash: dict[Currency, Money] = Field(description="Balance per currency.")
    positions: list[Position] = Field(description="One entry per instrument ever traded.")
    fees_paid: dict[Currency, Money] = Field(description="Total fees per currency.")
    ts: TimestampNs = Field(description="Venue time of the view.")


# ---------------------------------------------------------------- stream frames


class StreamRequest(Frozen):
    """Client → venue on `/v1/stream`: start or stop one market-data stream. Answered by
    `{"type": "ack", "id"}` or `{"type": "error", "id", "error"}` with the same `id`."""

    op: Literal["subscribe", "unsubscribe"] = Field(description="What to do.")
    id: int | None = Field(default=None, ge=0, description="Echoed in the answer.")
    instrument: Instrument = Field(description="Canonical instrument.")
    channel: Channel = Field(description="ticker, trades, book or candles.")
    depth: int | None = Field(default=None, ge=1, le=1000, description="Book levels per side.")
    interval: CandleInterval | None = Field(default=None, description="Candle length.")


VenueEvent = MarketEvent | OrderEvent
VENUE_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[VenueEvent, Field(discriminator="type")])
"""Validates one item of an `events` frame."""


ORDER_OPS = frozenset({"place", "cancel", "modify"})
"""Stream ops that trade (the REST order endpoints without an HTTP request each):
`{"op": "place", "id", "order": NewOrder}`, `{"op": "cancel", "id", "client_order_id"}`,
`{"op": "modify", "id", "client_order_id", "qty"?, "price"?}`, answered by `order_frame` or an
`error` frame with the same codes as REST."""


def order_frame(request_id: int | None, created: bool, order: OrderSnapshot) -> bytes:
    """The answer to an order op: the order's state right after the engine acted."""
    return (b'{"type":"order","id":' + orjson.dumps(request_id) + b',"created":'
            + (b"true" if created else b"false") + b',"order":' + encode(order) + b"}")


def hello_frame(account: str, ts: int) -> bytes:
    return encode({"type": "hello", "account": account, "ts": ts})


def ack_frame(request_id: int | None) -> bytes:
    return encode({"type": "ack", "id": request_id})


def error_frame(
    request_id: int | None, code: ErrorCode, message: str, field: str | None = None
) -> bytes:
    body = ErrorBody(code=code, message=message, field=field)
    return encode({"type": "error", "id": request_id, "error": body})


def events_frame(encoded_events: list[bytes]) -> bytes:
    """Splice already-encoded events into one frame, so a burst costs one write."""
    return b'{"type":"events","events":[' + b",".join(encoded_events) + b"]}"


# ---------------------------------------------------------------- refusals


REJECTION_STATUS: dict[ErrorCode, int] = {
    ErrorCode.ORDER_NOT_FOUND: 404,
    ErrorCode.UNKNOWN_ACCOUNT: 404,
    ErrorCode.DUPLICATE_ORDER: 409,
    ErrorCode.ORDER_NOT_CANCELLABLE: 409,
    ErrorCode.ORDER_NOT_MODIFIABLE: 409,
    ErrorCode.FORBIDDEN: 403,
}
"""HTTP status of an engine refusal; any other order code is a 400."""

REJECTION_FIELD: dict[ErrorCode, str] = {
    ErrorCode.PRICE_OFF_TICK: "price",
    ErrorCode.QTY_OFF_LOT: "qty",
    ErrorCode.QTY_BELOW_MIN: "qty",
    ErrorCode.UNKNOWN_INSTRUMENT: "instrument",
}
"""The request field an engine refusal is about, when there is one."""


def rejection_status(code: ErrorCode) -> int:
    return REJECTION_STATUS.get(code, 400)
