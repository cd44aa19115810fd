"""Kraken Futures WebSocket v1 frames and REST order-entry responses.

Field names are the venue's own (``product_id``, ``tickSize``, ``sendStatus``...), so a
reader can hold a frame next to Kraken's documentation. Prices and quantities are
``Decimal`` built from the exact JSON text (:func:`decode` parses floats that way); a
float never carries a price.

Entry points: :func:`decode`, :func:`parse_frame` (WebSocket) and
:func:`parse_rest_response` (``sendorder``/``cancelorder``/errors). They raise
:class:`MalformedMessage` on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeAlias

from workers.broker.adapters import wirecheck
from workers.broker.adapters.kraken_futures.errors import MalformedMessage

Side: TypeAlias = Literal["buy", "sell"]


def decode(text: str | bytes) -> Any:
    """Parse JSON text with every JSON float as an exact ``Decimal``."""
    return wirecheck.decode(text, MalformedMessage)


def to_decimal(value: object, what: str = "number") -> Decimal:
    """``Decimal`` from a decoded JSON number or numeric string; floats and bools refused."""
    return wirecheck.to_decimal(value, what, MalformedMessage)


def _get(obj: Mapping[str, Any], key: str, what: str) -> Any:
    return wirecheck.get(obj, key, what, MalformedMessage)


def _as_int(value: object, what: str) -> int:
    return wirecheck.as_int(value, what, MalformedMessage)


# --------------------------------------------------------------------------- book


class BookLevel(NamedTuple):
    """``{"price", "qty"}`` of a book snapshot."""

    price: Decimal
    qty: Decimal


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """``book_snapshot``: the full book of one product; deltas continue at ``seq + 1``."""

    feed: Literal["book_snapshot"]
    product_id: str
    timestamp: int
    seq: int
    tickSize: Decimal | None  # the venue's field name
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]


@dataclass(frozen=True, slots=True)
class BookDelta:
    """``book``: one level of one side; ``qty == 0`` deletes it. ``seq`` is +1 per product."""

    feed: Literal["book"]
    product_id: str
    side: Side
    seq: int
    price: Decimal
    qty: Decimal
    timestamp: int


def _levels(raw: object, what: str) -> tuple[BookLevel, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage(f"{what} must be an array")
    try:
        return tuple(
            BookLevel(to_decimal(level["price"], "price"), to_decimal(level["qty"], "qty"))
            for level in raw
        )
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"{what}: each level needs price and qty") from exc


def _book_snapshot(obj: Mapping[str, Any]) -> BookSnapshot:
    what = "book_snapshot"
    tick = obj.get("tickSize")
    return BookSnapshot(
        feed="book_snapshot",
        product_id=_get(obj, "product_id", what),
        timestamp=_as_int(_get(obj, "timestamp", what), "timestamp"),
        seq=_as_int(_get(obj, "seq", what), "seq"),
        tickSize=None if tick is None else to_decimal(tick, "tickSize"),
        bids=_levels(obj.get("bids", []), "bids"),
        asks=_levels(obj.get("asks", []), "asks"),
    )


def _book_delta(obj: Mapping[str, Any]) -> BookDelta:
    what = "book"
    side = _get(obj, "side", what)
    if side != "buy" and side != "sell":
        raise MalformedMessage(f"book: unknown side {side!r}")
    return BookDelta(
        feed="book",
        product_id=_get(obj, "product_id", what),
        side=side,
        seq=_as_int(_get(obj, "seq", what), "seq"),
        price=to_decimal(_get(obj, "price", what), "price"),
        qty=to_decimal(_get(obj, "qty", what), "qty"),
        timestamp=_as_int(_get(obj, "timestamp", what), "timestamp"),
    )


# --------------------------------------------------------------------------- trades, ticker


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade (``trade`` feed, or an element of ``trade_snapshot``)."""

    feed: Literal["trade"]
    product_id: str
    uid: str
    side: Side
    type: str
    seq: int
    time: int
    qty: Decimal
    price: Decimal


def _trade(obj: Mapping[str, Any]) -> Trade:
    what = "trade"
    return Trade(
        feed="trade",
        product_id=_get(obj, "product_id", what),
        uid=_get(obj, "uid", what),
        side=_get(obj, "side", what),
        type=_get(obj, "type", what),
        seq=_as_int(_get(obj, "seq", what), "seq"),
        time=_as_int(_get(obj, "time", what), "time"),
        qty=to_decimal(_get(obj, "qty", what), "qty"),
        price=to_decimal(_get(obj, "price", what), "price"),
    )


@dataclass(frozen=True, slots=True)
class TradeSnapshot:
    """``trade_snapshot``: recent trades, newest first."""

    feed: Literal["trade_snapshot"]
    product_id: str
    trades: tuple[Trade, ...]


@dataclass(frozen=True, slots=True)
class TickerLite:
    """``ticker_lite``: best bid/ask and daily figures of one product."""

    feed: Literal["ticker_lite"]
    product_id: str
    bid: Decimal | None
    ask: Decimal | None
    change: Decimal | None
    premium: Decimal | None
    volume: Decimal | None
    tag: str | None
    pair: str | None
    dtm: int | None
    maturityTime: int | None  # the venue's field name


def _optional_decimal(obj: Mapping[str, Any], key: str) -> Decimal | None:
    value = obj.get(key)
    return None if value is None else to_decimal(value, key)


def _ticker_lite(obj: Mapping[str, Any]) -> TickerLite:
    return TickerLite(
        feed="ticker_lite",
        product_id=_get(obj, "product_id", "ticker_lite"),
        bid=_optional_decimal(obj, "bid"),
        ask=_optional_decimal(obj, "ask"),
        change=_optional_decimal(obj, "change"),
        premium=_optional_decimal(obj, "premium"),
        volume=_optional_decimal(obj, "volume"),
        tag=obj.get("tag"),
        pair=obj.get("pair"),
        dtm=obj.get("dtm"),
        maturityTime=obj.get("maturityTime"),
    )


# --------------------------------------------------------------------------- private feeds


@dataclass(frozen=True, slots=True)
class Fill:
    """One own execution from ``fills``/``fills_snapshot``."""

    instrument: str
    time: int
    price: Decimal
    seq: int
    buy: bool
    qty: Decimal
    remaining_order_qty: Decimal
    order_id: str
    fill_id: str
    fill_type: str
    fee_paid: Decimal
    fee_currency: str
    cli_ord_id: str | None
    taker_order_type: str | None
    order_type: str | None


def _fill(obj: Mapping[str, Any]) -> Fill:
    what = "fill"
    return Fill(
        instrument=_get(obj, "instrument", what),
        time=_as_int(_get(obj, "time", what), "time"),
        price=to_decimal(_get(obj, "price", what), "price"),
        seq=_as_int(_get(obj, "seq", what), "seq"),
        buy=bool(_get(obj, "buy", what)),
        qty=to_decimal(_get(obj, "qty", what), "qty"),
        remaining_order_qty=to_decimal(_get(obj, "remaining_order_qty", what), "remaining"),
        order_id=_get(obj, "order_id", what),
        fill_id=_get(obj, "fill_id", what),
        fill_type=_get(obj, "fill_type", what),
        fee_paid=to_decimal(_get(obj, "fee_paid", what), "fee_paid"),
        fee_currency=_get(obj, "fee_currency", what),
        cli_ord_id=obj.get("cli_ord_id"),
        taker_order_type=obj.get("taker_order_type"),
        order_type=obj.get("order_type"),
    )


@dataclass(frozen=True, slots=True)
class FillsMessage:
    """``fills`` or ``fills_snapshot`` frame."""

    feed: Literal["fills", "fills_snapshot"]
    account: str | None
    fills: tuple[Fill, ...]


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """The ``order`` object of an ``open_orders`` frame (``direction`` 0 = buy, 1 = sell)."""

    instrument: str
    time: int
    last_update_time: int
    qty: Decimal
    filled: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    type: str
    order_id: str
    direction: int
    reduce_only: bool
    cli_ord_id: str | None


@dataclass(frozen=True, slots=True)
class OpenOrdersMessage:
    """``open_orders`` frame: an order placed/changed, or (``is_cancel``) removed."""

    feed: Literal["open_orders"]
    order: OpenOrder | None
    order_id: str
    is_cancel: bool
    reason: str | None


def _open_order(raw: Mapping[str, Any], what: str) -> OpenOrder:
    return OpenOrder(
        instrument=_get(raw, "instrument", what),
        time=_as_int(_get(raw, "time", what), "time"),
        last_update_time=_as_int(_get(raw, "last_update_time", what), "last_update_time"),
        qty=to_decimal(_get(raw, "qty", what), "qty"),
        filled=to_decimal(_get(raw, "filled", what), "filled"),
        limit_price=_optional_decimal(raw, "limit_price"),
        stop_price=_optional_decimal(raw, "stop_price"),
        type=_get(raw, "type", what),
        order_id=_get(raw, "order_id", what),
        direction=_as_int(_get(raw, "direction", what), "direction"),
        reduce_only=bool(raw.get("reduce_only", False)),
        cli_ord_id=raw.get("cli_ord_id"),
    )


def _open_orders(obj: Mapping[str, Any]) -> OpenOrdersMessage:
    what = "open_orders"
    raw = obj.get("order")
    order = _open_order(raw, what) if isinstance(raw, dict) else None
    order_id = order.order_id if order is not None else _get(obj, "order_id", what)
    return OpenOrdersMessage(
        feed="open_orders",
        order=order,
        order_id=order_id,
        is_cancel=bool(obj.get("is_cancel", False)),
        reason=obj.get("reason"),
    )


@dataclass(frozen=True, slots=True)
class OpenOrdersSnapshot:
    """``open_orders_snapshot``: every open order of the account, sent after subscribing."""

    feed: Literal["open_orders_snapshot"]
    account: str | None
    orders: tuple[OpenOrder, ...]


def _open_orders_snapshot(obj: Mapping[str, Any]) -> OpenOrdersSnapshot:
    what = "open_orders_snapshot"
    orders = obj.get("orders", [])
    if not isinstance(orders, list) or not all(isinstance(o, dict) for o in orders):
        raise MalformedMessage(f"{what}: orders must be an array of objects")
    return OpenOrdersSnapshot(
        "open_orders_snapshot", obj.get("account"), tuple(_open_order(o, what) for o in orders)
    )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class EventMessage:
    """``{"event": ...}`` frames: ``info``, ``subscribed``, ``challenge``, ``error``, ...

    ``message`` carries the challenge text or the error text; ``product_ids`` the
    products of a (un)subscribe ack.
    """

    event: str
    feed: str | None
    product_ids: tuple[str, ...]
    message: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """Any other feed frame (``ticker``, ``heartbeat``, ...) kept with its wire fields."""

    feed: str
    raw: Mapping[str, Any]


FuturesFrame: TypeAlias = (
    BookSnapshot
    | BookDelta
    | Trade
    | TradeSnapshot
    | TickerLite
    | FillsMessage
    | OpenOrdersMessage
    | OpenOrdersSnapshot
    | EventMessage
    | FeedMessage
)


def parse_frame(obj: Any) -> FuturesFrame:
    """Turn one decoded WebSocket frame into a typed frame.

    Raises :class:`MalformedMessage` for non-objects and for known feeds missing a
    documented field.
    """
    if not isinstance(obj, dict):
        raise MalformedMessage(f"not a Kraken Futures frame: {type(obj).__name__}")
    feed = obj.get("feed")
    if "event" in obj:
        product_ids = obj.get("product_ids") or ()
        return EventMessage(
            event=obj["event"],
            feed=feed,
            product_ids=tuple(product_ids),
            message=obj.get("message"),
            raw=obj,
        )
    if feed == "book":
        return _book_delta(obj)
    if feed == "book_snapshot":
        return _book_snapshot(obj)
    if feed == "trade":
        return _trade(obj)
    if feed == "trade_snapshot":
        trades = obj.get("trades", [])
        if not isinstance(trades, list):
            raise MalformedMessage("trade_snapshot: trades must be an array")
        return TradeSnapshot(
            "trade_snapshot", _get(obj, "product_id", "trade_snapshot"), tuple(map(_trade, trades))
        )
    if feed == "ticker_lite":
        return _ticker_lite(obj)
    if feed == "fills" or feed == "fills_snapshot":
        fills = obj.get("fills", [])
        if not isinstance(fills, list):
            raise MalformedMessage(f"{feed}: fills must be an array")
        return FillsMessage(feed, obj.get("account"), tuple(map(_fill, fills)))
    if feed == "open_orders":
        return _open_orders(obj)
    if feed == "open_orders_snapshot":
        return _open_orders_snapshot(obj)
    if isinstance(feed, str):
        return FeedMessage(feed, obj)
    raise MalformedMessage("frame has neither 'event' nor 'feed'")


# --------------------------------------------------------------------------- REST


@dataclass(frozen=True, slots=True)
class SendStatus:
    """``sendStatus`` of ``sendorder``. A rejection still arrives with ``result: success``;
    ``status`` (``placed``, ``iocWouldNotExecute``, ...) says what happened."""

    order_id: str | None
    status: str
    receivedTime: str | None  # the venue's field name
    orderEvents: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class SendOrderResponse:
    """Successful transport-level answer to ``sendorder``."""

    result: Literal["success"]
    sendStatus: SendStatus
    serverTime: str | None


@dataclass(frozen=True, slots=True)
class CancelStatus:
    """``cancelStatus`` of ``cancelorder``: ``cancelled``, ``filled`` or ``notFound``."""

    status: str
    order_id: str | None
    receivedTime: str | None
    orderEvents: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class CancelOrderResponse:
    """Successful transport-level answer to ``cancelorder``."""

    result: Literal["success"]
    cancelStatus: CancelStatus
    serverTime: str | None


@dataclass(frozen=True, slots=True)
class EditStatus:
    """``editStatus`` of ``editorder``: ``edited``, or why not (``orderForEditNotFound``...).
    Like ``sendStatus``, a refusal still arrives with ``result: success``."""

    status: str
    orderId: str | None  # the venue's field name (camel case here, unlike sendStatus)
    receivedTime: str | None
    orderEvents: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class EditOrderResponse:
    """Successful transport-level answer to ``editorder``."""

    result: Literal["success"]
    editStatus: EditStatus
    serverTime: str | None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """``{"result": "error", "error": ...}`` (e.g. ``apiLimitExceeded``)."""

    result: Literal["error"]
    error: str
    serverTime: str | None


RestResponse: TypeAlias = (
    SendOrderResponse | CancelOrderResponse | EditOrderResponse | ErrorResponse
)


def parse_rest_response(obj: Any) -> RestResponse:
    """Parse a decoded ``sendorder``/``cancelorder``/``editorder`` response or an error."""
    if not isinstance(obj, dict):
        raise MalformedMessage("REST response must be an object")
    result = obj.get("result")
    if result == "error":
        return ErrorResponse("error", str(obj.get("error")), obj.get("serverTime"))
    if result != "success":
        raise MalformedMessage(f"unknown REST result {result!r}")
    if "sendStatus" in obj:
        raw = obj["sendStatus"]
        return SendOrderResponse(
            "success",
            SendStatus(
                order_id=raw.get("order_id"),
                status=_get(raw, "status", "sendStatus"),
                receivedTime=raw.get("receivedTime"),
                orderEvents=tuple(raw.get("orderEvents", ())),
            ),
            obj.get("serverTime"),
        )
    if "cancelStatus" in obj:
        raw = obj["cancelStatus"]
        return CancelOrderResponse(
            "success",
            CancelStatus(
                status=_get(raw, "status", "cancelStatus"),
                order_id=raw.get("order_id"),
                receivedTime=raw.get("receivedTime"),
                orderEvents=tuple(raw.get("orderEvents", ())),
            ),
            obj.get("serverTime"),
        )
    if "editStatus" in obj:
        raw = obj["editStatus"]
        return EditOrderResponse(
            "success",
            EditStatus(
                status=_get(raw, "status", "editStatus"),
                orderId=raw.get("orderId"),
                receivedTime=raw.get("receivedTime"),
                orderEvents=tuple(raw.get("orderEvents", ())),
            ),
            obj.get("serverTime"),
        )
    raise MalformedMessage("success response without sendStatus, cancelStatus or editStatus")
