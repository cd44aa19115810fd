"""Error codes carried by every error a client can receive, over REST or WebSocket."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Stable, machine-readable reasons. Clients branch on these, never on message text."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    BAD_JSON = "bad_json"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    STALE_EPOCH = "stale_epoch"
    DRAINING = "draining"
    NOT_READY = "not_ready"
    RATE_LIMITED = "rate_limited"
    OVERSIZE = "oversize"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # Data plane: why an order or a request about one was refused. A client may retry only
    # after fixing the input (or, for `flood`, after slowing down).
    INVALID_ORDER = "invalid_order"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    UNKNOWN_ACCOUNT = "unknown_account"
    PRICE_OFF_TICK = "price_off_tick"
    QTY_OFF_LOT = "qty_off_lot"
    QTY_BELOW_MIN = "qty_below_min"
    DUPLICATE_ORDER = "duplicate_order"
    ORDER_NOT_FOUND = "order_not_found"
    ORDER_NOT_CANCELLABLE = "order_not_cancellable"
    ORDER_NOT_MODIFIABLE = "order_not_modifiable"
    ILLEGAL_TRANSITION = "illegal_transition"
    NO_LIQUIDITY = "no_liquidity"
    FLOOD = "flood"
    # Position manager: pre-trade risk limits and signals. The order or signal is valid but
    # the account's limits refuse it now; the message names the limit and the numbers.
    KILL_SWITCH = "kill_switch"
    RISK_INSTRUMENT_NOT_ALLOWED = "risk_instrument_not_allowed"
    RISK_NO_PRICE = "risk_no_price"
    RISK_NO_EQUITY = "risk_no_equity"
    RISK_PRICE_BAND = "risk_price_band"
    RISK_ORDER_NOTIONAL = "risk_order_notional"
    RISK_ORDER_RATE = "risk_order_rate"
    RISK_DAILY_LOSS = "risk_daily_loss"
    RISK_MAX_POSITIONS = "risk_max_positions"
    RISK_POSITION_SIZE = "risk_position_size"
    RISK_POSITION_NOTIONAL = "risk_position_notional"
    RISK_GROSS_EXPOSURE = "risk_gross_exposure"
    SIGNAL_EXPIRED = "signal_expired"
    DUPLICATE_SIGNAL = "duplicate_signal"  # the signal_id of one finished long ago


class ErrorBody(BaseModel):
    """The JSON body of every error response: `{"error": {"code", "message", "field"}}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ErrorCode = Field(description="Machine-readable reason.")
    message: str = Field(description="One sentence for a human, naming what to fix.")
    field: str | None = Field(default=None, description="Dotted path of the offending field.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    error: ErrorBody
