"""Kraken spot WebSocket frames (v2, and the v1 book still used by recordings).

Wire schemas keep the venue's own field names (``qty``, ``trade_id``, ``order_status`` ...)
and are converted to tradefleet's protocol types once, at the adapter's edge.

Numbers: Kraken sends prices and quantities as JSON numbers carrying the engine's
precision. :func:`decode` parses every JSON float as :class:`~decimal.Decimal` built from
the exact wire text, so ``0.00100000`` keeps its eight decimals (which the book checksum
needs) and no price ever passes through a binary float. v1 and the level3 channel send
numbers as strings; they are parsed to ``Decimal`` the same way.

Entry points: :func:`decode` (text -> JSON values) and :func:`parse_frame` (JSON value ->
one of the frame classes below). Both raise :class:`MalformedMessage` on bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeAlias

from workers.broker.adapters import wirecheck
from workers.broker.adapters.kraken.errors import MalformedMessage

MessageType: TypeAlias = Literal["snapshot", "update"]


def decode(text: str | bytes) -> Any:
    """Parse one frame's JSON text; JSON floats become ``Decimal`` from their exact text.

    Raises :class:`MalformedMessage` if the text is not JSON.
    """
    return wirecheck.decode(text, MalformedMessage)


def to_decimal(value: object, what: str = "number") -> Decimal:
    """Convert a decoded JSON number or numeric string to ``Decimal``.

    Accepts ``Decimal`` (from :func:`decode`), ``int`` and ``str``; refuses ``float`` and
    ``bool`` so a float-parsed frame can never leak binary rounding into a price.
    Raises :class:`MalformedMessage` otherwise.
    """
    return wirecheck.to_decimal(value, what, MalformedMessage)


def _get(obj: Mapping[str, Any], key: str, what: str) -> Any:
    return wirecheck.get(obj, key, what, MalformedMessage)


def _as_int(value: object, what: str) -> int:
    return wirecheck.as_int(value, what, MalformedMessage, digit_strings=True)


def _message_type(obj: Mapping[str, Any], what: str) -> MessageType:
    kind = _get(obj, "type", what)
    if kind != "snapshot" and kind != "update":
        raise MalformedMessage(f"{what}: unknown type {kind!r}")
    return kind  # type: ignore[no-any-return]


def _data_list(obj: Mapping[str, Any], what: str) -> list[Any]:
    data = _get(obj, "data", what)
    if not isinstance(data, list):
        raise MalformedMessage(f"{what}: data must be an array")
    return data


# --------------------------------------------------------------------------- v2 book


class BookLevel(NamedTuple):
    """One ``{"price", "qty"}`` entry of a v2 ``book`` frame; ``qty == 0`` deletes."""

    price: Decimal
    qty: Decimal


@dataclass(frozen=True, slots=True)
class BookData:
    """One element of a v2 ``book`` frame's ``data`` array (one symbol)."""

    symbol: str
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    checksum: int
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class BookMessage:
    """v2 ``{"channel": "book", "type": "snapshot"|"update", "data": [...]}``."""

    channel: Literal["book"]
    type: MessageType
    data: tuple[BookData, ...]


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


def _book_data(raw: Mapping[str, Any]) -> BookData:
    what = "book data"
    timestamp = raw.get("timestamp") if isinstance(raw, dict) else None
    return BookData(
        symbol=_get(raw, "symbol", what),
        bids=_levels(raw.get("bids", []), "bids"),
        asks=_levels(raw.get("asks", []), "asks"),
        checksum=_as_int(_get(raw, "checksum", what), "checksum"),
        timestamp=timestamp,
    )


# --------------------------------------------------------------------------- v2 level3


class Level3Order(NamedTuple):
    """One order of a v2 ``level3`` frame. ``event`` is set on updates only."""

    order_id: str
    limit_price: Decimal
    order_qty: Decimal
    timestamp: str | None
    event: str | None


@dataclass(frozen=True, slots=True)
class Level3Data:
    """One symbol of a v2 ``level3`` frame; orders in book and queue order."""

    symbol: str
    bids: tuple[Level3Order, ...]
    asks: tuple[Level3Order, ...]
    checksum: int
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class Level3Message:
    """v2 ``{"channel": "level3", ...}``."""

    channel: Literal["level3"]
    type: MessageType
    data: tuple[Level3Data, ...]


def _orders(raw: object, what: str) -> tuple[Level3Order, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage(f"{what} must be an array")
    orders = []
    for order in raw:
        orders.append(
            Level3Order(
                order_id=_get(order, "order_id", what),
                limit_price=to_decimal(_get(order, "limit_price", what), "limit_price"),
                order_qty=to_decimal(_get(order, "order_qty", what), "order_qty"),
                timestamp=order.get("timestamp"),
                event=order.get("event"),
            )
        )
    return tuple(orders)


def _level3_data(raw: Mapping[str, Any]) -> Level3Data:
    what = "level3 data"
    return Level3Data(
        symbol=_get(raw, "symbol", what),
        bids=_orders(raw.get("bids", []), "bids"),
        asks=_orders(raw.get("asks", []), "asks"),
        checksum=_as_int(_get(raw, "checksum", what), "checksum"),
        timestamp=raw.get("timestamp"),
    )


# --------------------------------------------------------------------------- v2 trade, ticker


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade; ``side`` is the taker's side, ``trade_id`` is per-book sequential."""

    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    ord_type: str
    trade_id: int
    timestamp: str


@dataclass(frozen=True, slots=True)
class TradeMessage:
    """v2 ``{"channel": "trade", ...}``; one message may batch several trades."""

    channel: Literal["trade"]
    type: MessageType
    data: tuple[Trade, ...]


def _trade(raw: Mapping[str, Any]) -> Trade:
    what = "trade"
    return Trade(
        symbol=_get(raw, "symbol", what),
        side=_get(raw, "side", what),
        price=to_decimal(_get(raw, "price", what), "price"),
        qty=to_decimal(_get(raw, "qty", what), "qty"),
        ord_type=_get(raw, "ord_type", what),
        trade_id=_as_int(_get(raw, "trade_id", what), "trade_id"),
        timestamp=_get(raw, "timestamp", what),
    )


@dataclass(frozen=True, slots=True)
class Ticker:
    """Level-1 summary of one symbol (v2 ``ticker`` channel)."""

    symbol: str
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    last: Decimal
    volume: Decimal
    vwap: Decimal
    low: Decimal
    high: Decimal
    change: Decimal
    change_pct: Decimal
    timestamp: str | None


@dataclass(frozen=True, slots=True)
class TickerMessage:
    """v2 ``{"channel": "ticker", ...}``."""

    channel: Literal["ticker"]
    type: MessageType
    data: tuple[Ticker, ...]


_TICKER_NUMBERS = (
    "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low", "high", "change",
    "change_pct",
)  # fmt: skip


def _ticker(raw: Mapping[str, Any]) -> Ticker:
    numbers = {name: to_decimal(_get(raw, name, "ticker"), name) for name in _TICKER_NUMBERS}
    return Ticker(symbol=_get(raw, "symbol", "ticker"), timestamp=raw.get("timestamp"), **numbers)


# --------------------------------------------------------------------------- v2 executions


@dataclass(frozen=True, slots=True)
class Fee:
    """One fee entry of an execution report."""

    asset: str
    qty: Decimal


_EXECUTION_NUMBERS = frozenset(
    {
        "order_qty", "limit_price", "stop_price", "last_qty", "last_price", "cost",
        "cum_qty", "cum_cost", "avg_price", "fee_usd_equiv", "display_qty", "cash_order_qty",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    """One element of an ``executions`` frame.

    Kraken sends only the fields that changed on some events (a ``new`` event carries
    just ids, status and timestamp), so every field except ``order_id`` is optional.
    Fields this class does not name are kept in ``extra`` with their wire names.
    """

    order_id: str
    exec_type: str | None = None
    order_status: str | None = None
    symbol: str | None = None
    side: str | None = None
    order_type: str | None = None
    order_qty: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    cl_ord_id: str | None = None
    order_userref: int | None = None
    exec_id: str | None = None
    trade_id: int | None = None
    last_qty: Decimal | None = None
    last_price: Decimal | None = None
    liquidity_ind: str | None = None
    cost: Decimal | None = None
    cum_qty: Decimal | None = None
    cum_cost: Decimal | None = None
    avg_price: Decimal | None = None
    fee_usd_equiv: Decimal | None = None
    fees: tuple[Fee, ...] = ()
    timestamp: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_EXECUTION_FIELDS = frozenset(ExecutionReport.__dataclass_fields__) - {"extra"}


def _execution(raw: Mapping[str, Any]) -> ExecutionReport:
    if not isinstance(raw, dict):
        raise MalformedMessage("execution report must be an object")
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "fees":
            known["fees"] = tuple(
                Fee(_get(fee, "asset", "fee"), to_decimal(_get(fee, "qty", "fee"), "fee qty"))
                for fee in value
            )
        elif key in _EXECUTION_NUMBERS:
            # display_qty / cash_order_qty have no attribute; keep them exact in extra.
            target = known if key in _EXECUTION_FIELDS else extra
            target[key] = to_decimal(value, key)
        elif key in ("order_userref", "trade_id"):
            known[key] = _as_int(value, key)
        elif key in _EXECUTION_FIELDS:
            known[key] = value
        else:
            extra[key] = value
    if "order_id" not in known:
        raise MalformedMessage("execution report: missing field 'order_id'")
    return ExecutionReport(extra=extra, **known)


@dataclass(frozen=True, slots=True)
class ExecutionsMessage:
    """v2 ``executions`` frame; ``sequence`` numbers frames of one subscription."""

    channel: Literal["executions"]
    type: MessageType
    data: tuple[ExecutionReport, ...]
    sequence: int


# --------------------------------------------------------------------------- v2 control


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """v2 ``status`` frame (first frame of a connection, and on engine status changes)."""

    channel: Literal["status"]
    type: MessageType
    data: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """v2 ``{"channel": "heartbeat"}`` (1 Hz per connection) or v1 ``{"event": "heartbeat"}``."""


@dataclass(frozen=True, slots=True)
class MethodResponse:
    """Response to a v2 request (``subscribe``, ``add_order``, ``cancel_order``, ``pong``...).

    ``success`` must be checked: a failed subscribe keeps the connection up.
    """

    method: str
    success: bool | None
    result: Mapping[str, Any] | None
    error: str | None
    req_id: int | None
    time_in: str | None
    time_out: str | None


# --------------------------------------------------------------------------- instruments


@dataclass(frozen=True, slots=True)
class PairPrecision:
    """Decimals the engine uses for one pair's prices and quantities."""

    price_precision: int
    qty_precision: int


def pair_precisions(instrument_frame: Mapping[str, Any]) -> dict[str, PairPrecision]:
    """Read ``{symbol: PairPrecision}`` from a v2 ``instrument`` snapshot frame.

    Raises :class:`MalformedMessage` if the frame has no ``data.pairs`` array.
    """
    data = _get(instrument_frame, "data", "instrument frame")
    pairs = _get(data, "pairs", "instrument data")
    if not isinstance(pairs, list):
        raise MalformedMessage("instrument data: pairs must be an array")
    return {
        _get(pair, "symbol", "pair"): PairPrecision(
            price_precision=_as_int(_get(pair, "price_precision", "pair"), "price_precision"),
            qty_precision=_as_int(_get(pair, "qty_precision", "pair"), "qty_precision"),
        )
        for pair in pairs
    }


# --------------------------------------------------------------------------- v1


class BookLevelV1(NamedTuple):
    """v1 level ``[price, volume, timestamp]`` or ``[..., "r"]`` (republished level)."""

    price: Decimal
    volume: Decimal
    timestamp: str
    update_type: str | None


@dataclass(frozen=True, slots=True)
class BookMessageV1:
    """v1 book frame ``[channelID, {"as"/"a": ..., "bs"/"b": ..., "c": ...}, ..., name, pair]``.

    ``is_snapshot`` is true for the ``as``/``bs`` form (which carries no checksum);
    ``checksum`` is the ``c`` of the last dict of an update.
    """

    channel_id: int
    asks: tuple[BookLevelV1, ...]
    bids: tuple[BookLevelV1, ...]
    checksum: int | None
    channel_name: str
    pair: str
    is_snapshot: bool

    @property
    def depth(self) -> int | None:
        """Subscribed depth from the channel name (``book-25`` -> 25)."""
        _, _, depth = self.channel_name.partition("-")
        return int(depth) if depth.isdigit() else None


def _levels_v1(raw: object, what: str) -> tuple[BookLevelV1, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage(f"v1 {what} must be an array")
    levels = []
    for level in raw:
        if not isinstance(level, list) or len(level) < 3:
            raise MalformedMessage(f"v1 {what}: level must be [price, volume, timestamp]")
        levels.append(
            BookLevelV1(
                to_decimal(level[0], "price"),
                to_decimal(level[1], "volume"),
                level[2],
                level[3] if len(level) > 3 else None,
            )
        )
    return tuple(levels)


def _book_v1(frame: list[Any]) -> BookMessageV1:
    bodies = frame[1:-2]
    if not bodies or not all(isinstance(body, dict) for body in bodies):
        raise MalformedMessage("v1 book frame: expected one or two level objects")
    first = bodies[0]
    if "as" in first or "bs" in first:
        return BookMessageV1(
            channel_id=_as_int(frame[0], "channelID"),
            asks=_levels_v1(first.get("as", []), "as"),
            bids=_levels_v1(first.get("bs", []), "bs"),
            checksum=None,
            channel_name=frame[-2],
            pair=frame[-1],
            is_snapshot=True,
        )
    asks: tuple[BookLevelV1, ...] = ()
    bids: tuple[BookLevelV1, ...] = ()
    checksum: int | None = None
    for body in bodies:
        if "a" in body:
            asks += _levels_v1(body["a"], "a")
        if "b" in body:
            bids += _levels_v1(body["b"], "b")
        if "c" in body:
            checksum = _as_int(body["c"], "checksum")
    return BookMessageV1(
        channel_id=_as_int(frame[0], "channelID"),
        asks=asks,
        bids=bids,
        checksum=checksum,
        channel_name=frame[-2],
        pair=frame[-1],
        is_snapshot=False,
    )


@dataclass(frozen=True, slots=True)
class SubscriptionStatusV1:
    """v1 ``{"event": "subscriptionStatus", ...}``; ``status`` is subscribed/unsubscribed/error."""

    status: str
    pair: str | None
    channel_name: str | None
    channel_id: int | None
    subscription: Mapping[str, Any]
    error_message: str | None


@dataclass(frozen=True, slots=True)
class EventV1:
    """Any other v1 ``{"event": ...}`` frame (``systemStatus``, ``pong``...), kept as sent."""

    event: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A well-formed frame this adapter does not interpret (kept for logging)."""

    raw: Any


SpotFrame: TypeAlias = (
    BookMessage
    | Level3Message
    | TradeMessage
    | TickerMessage
    | ExecutionsMessage
    | StatusMessage
    | Heartbeat
    | MethodResponse
    | BookMessageV1
    | SubscriptionStatusV1
    | EventV1
    | UnknownFrame
)

_HEARTBEAT = Heartbeat()


def _channel_frame(obj: dict[str, Any]) -> SpotFrame:
    channel = obj["channel"]
    what = f"{channel} frame"
    if channel == "book":
        return BookMessage(
            "book", _message_type(obj, what), tuple(_book_data(d) for d in _data_list(obj, what))
        )
    if channel == "heartbeat":
        return _HEARTBEAT
    if channel == "trade":
        return TradeMessage(
            "trade", _message_type(obj, what), tuple(_trade(d) for d in _data_list(obj, what))
        )
    if channel == "ticker":
        return TickerMessage(
            "ticker", _message_type(obj, what), tuple(_ticker(d) for d in _data_list(obj, what))
        )
    if channel == "executions":
        return ExecutionsMessage(
            "executions",
            _message_type(obj, what),
            tuple(_execution(d) for d in _data_list(obj, what)),
            _as_int(_get(obj, "sequence", what), "sequence"),
        )
    if channel == "level3":
        return Level3Message(
            "level3",
            _message_type(obj, what),
            tuple(_level3_data(d) for d in _data_list(obj, what)),
        )
    if channel == "status":
        return StatusMessage("status", _message_type(obj, what), tuple(_data_list(obj, what)))
    return UnknownFrame(obj)


def _method_response(obj: dict[str, Any]) -> MethodResponse:
    result = obj.get("result")
    return MethodResponse(
        method=obj["method"],
        success=obj.get("success"),
        result=result if isinstance(result, dict) else None,
        error=obj.get("error"),
        req_id=obj.get("req_id"),
        time_in=obj.get("time_in"),
        time_out=obj.get("time_out"),
    )


def _event_v1(obj: dict[str, Any]) -> SpotFrame:
    event = obj["event"]
    if event == "heartbeat":
        return _HEARTBEAT
    if event == "subscriptionStatus":
        subscription = obj.get("subscription")
        channel_id = obj.get("channelID")
        return SubscriptionStatusV1(
            status=_get(obj, "status", "subscriptionStatus"),
            pair=obj.get("pair"),
            channel_name=obj.get("channelName"),
            channel_id=channel_id if isinstance(channel_id, int) else None,
            subscription=subscription if isinstance(subscription, dict) else {},
            error_message=obj.get("errorMessage"),
        )
    return EventV1(event=event, fields=obj)


def parse_frame(obj: Any) -> SpotFrame:
    """Turn one decoded frame (from :func:`decode`) into a typed frame.

    v2 frames are objects with ``channel`` or ``method``; v1 frames are objects with
    ``event`` or arrays ``[channelID, body..., channelName, pair]``. Frames of an unknown
    channel come back as :class:`UnknownFrame`. Raises :class:`MalformedMessage` when a
    known frame kind lacks a documented field or carries a non-numeric price.
    """
    if isinstance(obj, dict):
        if "channel" in obj:
            return _channel_frame(obj)
        if "method" in obj:
            return _method_response(obj)
        if "event" in obj:
            return _event_v1(obj)
        return UnknownFrame(obj)
    if isinstance(obj, list) and len(obj) >= 4 and isinstance(obj[-1], str):
        channel_name = obj[-2]
        if isinstance(channel_name, str) and channel_name.startswith("book"):
            return _book_v1(obj)
        return UnknownFrame(obj)
    raise MalformedMessage(f"not a Kraken spot frame: {type(obj).__name__}")


# --------------------------------------------------------------------------- subscriptions


def book_subscription_request_depths(request: Any) -> dict[str, int]:
    """``{symbol: depth}`` of an outgoing ``book`` subscribe request (v1 or v2).

    Returns an empty dict for any other request. Used to learn depths from recordings
    that kept what was sent.
    """
    if not isinstance(request, dict):
        return {}
    if request.get("event") == "subscribe":  # v1: {"pair": [...], "subscription": {...}}
        subscription = request.get("subscription") or {}
        depth = subscription.get("depth", 10)
        if subscription.get("name") == "book" and type(depth) is int:
            return dict.fromkeys(request.get("pair") or (), depth)
    elif request.get("method") == "subscribe":  # v2: {"params": {"channel", "symbol", "depth"}}
        params = request.get("params") or {}
        depth = params.get("depth", 10)
        if params.get("channel") == "book" and type(depth) is int:
            return dict.fromkeys(params.get("symbol") or (), depth)
    return {}


def book_subscription_ack(frame: SpotFrame) -> tuple[str, int] | None:
    """``(symbol, depth)`` when ``frame`` acknowledges a ``book`` subscription, else ``None``.

    Handles the v2 subscribe response (``success`` checked) and v1 ``subscriptionStatus``.
    """
    if isinstance(frame, MethodResponse):
        result = frame.result or {}
        symbol, depth = result.get("symbol"), result.get("depth")
        if (
            frame.method == "subscribe"
            and frame.success
            and result.get("channel") == "book"
            and isinstance(symbol, str)
            and type(depth) is int
        ):
            return symbol, depth
    elif isinstance(frame, SubscriptionStatusV1):
        depth = frame.subscription.get("depth")
        if (
            frame.status == "subscribed"
            and frame.pair
            and frame.subscription.get("name") == "book"
            and type(depth) is int
        ):
            return frame.pair, depth
    return None
