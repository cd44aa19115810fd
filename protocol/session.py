"""The algo ↔ Market worker WebSocket session, and the one parser for client frames.

The API token travels in the HTTP `Authorization` header of the WebSocket upgrade, never in a
frame. Then:

client → server
    hello        {session_id, protocol, resume_from_seq?}        must be the first frame
    subscribe    {instrument, channel, depth?, interval?, ref?}
    unsubscribe  {instrument, channel, depth?, interval?, ref?}
    ping / pong  {ts?, ref?}
    …and the order requests of `protocol.orders`, and `signal` (`protocol.signals`).

server → client
    welcome      {session_id, protocol, resumed, last_seq, subscriptions}
    subscribed   {instrument, channel, depth?, interval?, ref?}
    unsubscribed {instrument, channel, depth?, interval?, ref?}
    error        {code, message, field?, ref?, client_order_id?}
    reconnect    {reason, url?, retry_after_ms?}      go elsewhere (draining, shutdown…)
    ping / pong  {ts?, ref?}
    batch        {events: [server message, …]}        several events in one frame
    …and market events, order events, fills, positions, balances, open_orders, and the
    answers to signals: signal_accepted, signal_rejected, exit_fired (`protocol.signals`).

Resume: the SDK reconnects with the same session_id and `resume_from_seq` = the last `seq` it
processed; the server replays every later sequenced event in order, then live. Sequenced
events are the order events and the position manager's signal answers and exits
(`signal_accepted`, `signal_rejected`, `exit_fired`, and risk refusals as `order_rejected`):
one per-session counter, gap-free from 1, assigned by the Broker's journal. Answers to
requests (positions, open orders, errors, the answer to a re-sent signal) carry no `seq`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from protocol import PROTOCOL_VERSION
from protocol.errors import ErrorCode
from protocol.market import (
    BookDelta,
    BookSnapshot,
    Candle,
    CandleInterval,
    Channel,
    Frozen,
    Instrument,
    Ticker,
    Trade,
)
from protocol.orders import (
    BalancesSnapshot,
    CancelOrder,
    Fill,
    GetOpenOrders,
    GetPositions,
    ModifyOrder,
    NewOrder,
    OpenOrders,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSnapshot,
    PositionsSnapshot,
    Ref,
)
from protocol.signals import ExitFired, Signal, SignalAccepted, SignalRejected

SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
"""The id the MarketManager handed out with the session."""

MAX_BOOK_DEPTH = 1000


# ---------------------------------------------------------------- handshake


class Hello(Frozen):
    """First client frame: which session this connection carries and where to resume."""

    type: Literal["hello"] = Field(default="hello", description="Message discriminator.")
    session_id: SessionId = Field(description="Session id from POST /v1/sessions.")
    protocol: str = Field(
        default=PROTOCOL_VERSION, max_length=16, description="Protocol version the client speaks."
    )
    resume_from_seq: int | None = Field(
        default=None,
        ge=0,
        description="Last seq (order events, signal answers, exits) the client processed; "
        "absent for a fresh session.",
    )


class Subscription(Frozen):
    """One stream: an instrument and a channel, with the channel's parameters."""

    instrument: Instrument = Field(description="Canonical instrument, e.g. BTC/USD.")
    channel: Channel = Field(description="ticker, trades, book or candles.")
    depth: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BOOK_DEPTH,
        validate_default=True,
        description="Book levels per side (book only; 1 = L1). Absent: the server's default.",
    )
    interval: CandleInterval | None = Field(
        default=None,
        validate_default=True,
        description="Candle interval; required for candles, absent otherwise.",
    )

    @field_validator("depth")
    @classmethod
    def _depth_only_for_book(cls, depth: Any, info: ValidationInfo) -> Any:
        if depth is not None and info.data.get("channel", Channel.BOOK) is not Channel.BOOK:
            raise PydanticCustomError("not_applicable", "depth applies to the book channel only")
        return depth

    @field_validator("interval")
    @classmethod
    def _interval_only_for_candles(cls, interval: Any, info: ValidationInfo) -> Any:
        channel = info.data.get("channel")
        if channel is Channel.CANDLES and interval is None:
            raise PydanticCustomError("missing_for_choice", "the candles channel needs an interval")
        if channel is not None and channel is not Channel.CANDLES and interval is not None:
            raise PydanticCustomError(
                "not_applicable", "interval applies to the candles channel only"
            )
        return interval

    def stream(self) -> Subscription:
        """The bare stream key, without message-specific fields (usable as a dict key)."""
        return Subscription(
            instrument=self.instrument,
            channel=self.channel,
            depth=self.depth,
            interval=self.interval,
        )


class Welcome(Frozen):
    """The server's answer to `hello`."""

    type: Literal["welcome"] = Field(default="welcome", description="Message discriminator.")
    session_id: SessionId = Field(description="The session this connection now carries.")
    protocol: str = Field(default=PROTOCOL_VERSION, description="Protocol version spoken.")
    resumed: bool = Field(description="True if an existing session was resumed.")
    last_seq: int = Field(
        ge=0, description="Highest seq issued in this session so far."
    )
    subscriptions: list[Subscription] = Field(
        default_factory=list, description="Streams restored by the resume."
    )


class Subscribe(Subscription):
    """Start a stream. Answered by `subscribed` (then the data), or by `error`."""

    type: Literal["subscribe"] = Field(default="subscribe", description="Message discriminator.")
    ref: Ref | None = Field(default=None, description="Echoed in the answer.")


class Unsubscribe(Subscription):
    """Stop a stream. Answered by `unsubscribed`."""

    type: Literal["unsubscribe"] = Field(
        default="unsubscribe", description="Message discriminator."
    )
    ref: Ref | None = Field(default=None, description="Echoed in the answer.")


class Subscribed(Subscription):
    """The stream is live; a `book` stream starts with a `book_snapshot`."""

    type: Literal["subscribed"] = Field(default="subscribed", description="Message discriminator.")
    ref: Ref | None = Field(default=None, description="Echo of the request's ref.")


class Unsubscribed(Subscription):
    """The stream is stopped; no more events for it."""

    type: Literal["unsubscribed"] = Field(
        default="unsubscribed", description="Message discriminator."
    )
    ref: Ref | None = Field(default=None, description="Echo of the request's ref.")


class Ping(Frozen):
    """Liveness probe, either direction; the peer answers `pong` with the same ts and ref."""

    type: Literal["ping"] = Field(default="ping", description="Message discriminator.")
    ts: int | None = Field(default=None, ge=0, description="Sender's clock, ns; echoed back.")
    ref: Ref | None = Field(default=None, description="Echoed back.")


class Pong(Frozen):
    """Answer to `ping`."""

    type: Literal["pong"] = Field(default="pong", description="Message discriminator.")
    ts: int | None = Field(default=None, ge=0, description="The ping's ts.")
    ref: Ref | None = Field(default=None, description="The ping's ref.")


class Error(Frozen):
    """A request was refused, or a frame could not be understood. The connection stays up."""

    type: Literal["error"] = Field(default="error", description="Message discriminator.")
    code: ErrorCode = Field(description="Machine-readable reason; branch on this.")
    message: str = Field(description="One sentence for a human, naming what to fix.")
    field: str | None = Field(default=None, description="Dotted path of the offending field.")
    ref: str | None = Field(default=None, description="The failed request's ref, if any.")
    client_order_id: str | None = Field(
        default=None, description="The order the failed request was about, if any."
    )


class ReconnectReason(StrEnum):
    DRAINING = "draining"  # this Market worker is being retired
    SHUTDOWN = "shutdown"
    REBALANCE = "rebalance"  # load moves elsewhere


class Reconnect(Frozen):
    """Please reconnect (through the MarketManager, or to `url`) and resume the session."""

    type: Literal["reconnect"] = Field(default="reconnect", description="Message discriminator.")
    reason: ReconnectReason = Field(description="Why the server asks.")
    url: str | None = Field(
        default=None, description="Where to go; absent: ask the MarketManager again."
    )
    retry_after_ms: int | None = Field(
        default=None, ge=0, description="Wait at least this long before reconnecting."
    )


# ---------------------------------------------------------------- unions

ClientMessage = (
    Hello
    | Subscribe
    | Unsubscribe
    | Ping
    | Pong
    | NewOrder
    | CancelOrder
    | ModifyOrder
    | GetPositions
    | GetOpenOrders
    | Signal
)

ServerEvent = (
    Welcome
    | Subscribed
    | Unsubscribed
    | Error
    | Reconnect
    | Ping
    | Pong
    | Ticker
    | Trade
    | BookSnapshot
    | BookDelta
    | Candle
    | OrderAccepted
    | OrderRejected
    | OrderPartiallyFilled
    | OrderFilled
    | OrderCancelled
    | OrderExpired
    | OrderModified
    | OrderSnapshot
    | Fill
    | PositionsSnapshot
    | BalancesSnapshot
    | OpenOrders
    | SignalAccepted
    | SignalRejected
    | ExitFired
)
"""Anything the server sends except a batch."""


class Batch(Frozen):
    """Several server events in one frame, in order. Never nested."""

    type: Literal["batch"] = Field(default="batch", description="Message discriminator.")
    events: list[Annotated[ServerEvent, Field(discriminator="type")]] = Field(
        description="The events, to be processed in list order."
    )


ServerMessage = ServerEvent | Batch

_SERVER_MESSAGE: TypeAdapter[Any] = TypeAdapter(
    Annotated[ServerMessage, Field(discriminator="type")]
)


def encode_batch(encoded_events: Iterable[bytes]) -> bytes:
    """Build a `batch` frame from events that are already JSON-encoded.

    Fan-out encodes each event once and splices the same bytes into every client's batch, so
    no event is re-serialised per client. Each item must be one encoded server event.
    """
    return b'{"type":"batch","events":[' + b",".join(encoded_events) + b"]}"


# ---------------------------------------------------------------- parsing


class ProtocolError(ValueError):
    """A client frame was refused. The client must fix its input; the connection stays up.

    `code` is the ErrorCode to send, `field` the dotted path of the offending field (None when
    the frame as a whole is wrong), `ref`/`client_order_id` are echoed from the frame when it
    carried them, so the client can tell which request failed.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        ref: str | None = None,
        client_order_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.ref = ref
        self.client_order_id = client_order_id

    def to_error(self) -> Error:
        """The `error` frame to send back."""
        return Error(
            code=self.code,
            message=self.message,
            field=self.field,
            ref=self.ref,
            client_order_id=self.client_order_id,
        )


def _models_by_type(union: Any) -> dict[str, type[BaseModel]]:
    return {model.model_fields["type"].default: model for model in union.__args__}


_CLIENT_MODELS = _models_by_type(ClientMessage)

# pydantic error type → our code. Anything not listed is a bad value. "missing_for_choice" is
# raised by our validators when a field is required by another one's value (a limit price).
_CODE_OF_ERROR_TYPE = {
    "missing": ErrorCode.MISSING_FIELD,
    "missing_for_choice": ErrorCode.MISSING_FIELD,
    "extra_forbidden": ErrorCode.UNKNOWN_FIELD,
}


def _echo(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and len(value) <= 64 else None


def parse_client_message(data: dict[str, Any]) -> ClientMessage:
    """Validate one decoded client frame and return its typed message.

    Raises `ProtocolError` with:
      unknown_type  — `type` absent from the known client messages;
      missing_field — a required field is absent (`field` names it; also `type` itself);
      unknown_field — a field this message does not have (`field` names it);
      invalid_field — a value of the wrong type or out of range, e.g. a float price.
    When several fields are wrong, the first one in declaration order is reported.
    """
    ref = _echo(data, "ref")
    client_order_id = _echo(data, "client_order_id")
    kind = data.get("type")
    if kind is None:
        raise ProtocolError(
            ErrorCode.MISSING_FIELD,
            "every frame needs a type",
            field="type",
            ref=ref,
            client_order_id=client_order_id,
        )
    model = _CLIENT_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {str(kind)[:40]!r}",
            field="type",
            ref=ref,
            client_order_id=client_order_id,
        )
    try:
        message: ClientMessage = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise _protocol_error(exc, ref=ref, client_order_id=client_order_id) from exc
    return message


def _protocol_error(
    exc: ValidationError, *, ref: str | None, client_order_id: str | None
) -> ProtocolError:
    first = exc.errors(include_url=False, include_input=False)[0]
    # Cap the echoed path: an unknown field's name is client input of any length.
    field = ".".join(str(part) for part in first["loc"])[:100] or None
    code = _CODE_OF_ERROR_TYPE.get(first["type"], ErrorCode.INVALID_FIELD)
    if first["type"] == "missing":
        message = f"missing field {field!r}"
    elif code is ErrorCode.UNKNOWN_FIELD:
        message = f"unknown field {field!r}"
    else:
        # pydantic prefixes messages raised by our validators with "Value error, ".
        detail = first["msg"].removeprefix("Value error, ")
        message = f"{field}: {detail}" if field else detail
    return ProtocolError(code, message, field=field, ref=ref, client_order_id=client_order_id)


def parse_server_message(data: dict[str, Any]) -> ServerMessage:
    """Validate one decoded server frame (what the SDK receives). Raises `ValidationError`."""
    message: ServerMessage = _SERVER_MESSAGE.validate_python(data)
    return message


__all__ = [
    "Batch",
    "ClientMessage",
    "Error",
    "Hello",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reconnect",
    "ReconnectReason",
    "ServerEvent",
    "ServerMessage",
    "SessionId",
    "Subscribe",
    "Subscribed",
    "Subscription",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "encode_batch",
    "parse_client_message",
    "parse_server_message",
]
