"""Signals: trading intent the position manager turns into orders, with server-side exits.

An algo may send a `signal` instead of orders. The account's position manager sizes it,
checks it against the account's risk limits, places the order that moves the position to
the signal's target, and holds the signal's exits (stop-loss, take-profit, trailing stop,
time exit) on the server, so they fire while the algo is disconnected.

Client → server:

    signal {signal_id, account, instrument,
            direction? ("long" | "short" | "flat"), target_qty?,
            qty?, risk_fraction?, entry_price?,
            stop_loss?, take_profit?, trailing_distance?, time_exit_at?, expires_at?}

* Exactly one of `direction` and `target_qty`. `target_qty` is the signed position wanted
  (negative = short, "0" = flat). `long`/`short` take exactly one size: `qty`, or
  `risk_fraction` of the account's equity to lose if the stop is hit (needs `stop_loss`;
  qty = equity × risk_fraction / |entry − stop_loss|, rounded down to the lot size).
* The signal's target *replaces* the position: long 1 while long 0.4 buys 0.6.
* `entry_price` makes the entry a GTC limit order; without it the entry is a market order.
* Exits are prices (`stop_loss`, `take_profit`), a price distance behind the best price since
  entry (`trailing_distance`), or a time (`time_exit_at`, ns since the epoch). A new signal on
  the same instrument replaces the exits of the previous one; `flat` closes and removes them.
* `expires_at`: a signal that reaches the position manager at or after this time is refused
  (`signal_expired`) instead of acted on late.
* `signal_id` is the idempotency key per account: re-sending it changes nothing and answers
  with the first outcome again.

Server → client:

    signal_accepted {account, signal_id, instrument, target_qty, position_qty,
                     client_order_id?, side?, qty?, exits?, seq?, ts}
    signal_rejected {account, signal_id, code, message, seq?, ts}
    exit_fired      {account, signal_id, instrument, kind, trigger_price?, position_qty,
                     client_order_id?, close_qty, seq?, ts}

Sequencing: the first answer to a signal and every `exit_fired` are journaled by the Broker
before they are sent, and carry the session's `seq` — the same per-session counter as the
order events, so a session's order events and signal answers form one gap-free run 1, 2, 3…
`exit_fired` goes to the session that sent the signal, connected or not: a session that
resumes with `resume_from_seq` gets the answers and exits it missed in the replay, in order
and once. A signal sent again (same `signal_id`) is answered again with the first outcome
but without `seq` (the answer to a repeat is not a new event); a `signal_rejected` for a
signal naming another account is not journaled either and has no `seq`.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from protocol.errors import ErrorCode
from protocol.market import (
    Frozen,
    Instrument,
    Money,
    Price,
    Quantity,
    Side,
    Size,
    TimestampNs,
    format_decimal,
    parse_decimal,
)
from protocol.orders import AccountId, ClientOrderId

POSITION_MANAGER_PREFIX = "pm:"
"""The client_order_id prefix of the orders the position manager places itself (a signal's
entry `pm:<signal_id>:e`, a close `pm:<plan>:x<n>`); reserved: an algo's `new_order` may
not use it. Their events go to the session of the signal they serve."""

SignalId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,48}$")]
"""1 to 48 characters of letters, digits and `._-` (the position manager derives order ids
from it, which must stay within 64 characters)."""


def _unit_fraction(value: Decimal) -> Decimal:
    if not 0 < value <= 1:
        raise ValueError("must be greater than 0 and at most 1")
    return value


RiskFraction = Annotated[
    Decimal,
    BeforeValidator(parse_decimal),
    AfterValidator(_unit_fraction),
    PlainSerializer(format_decimal, return_type=str, when_used="json"),
]
"""A decimal in (0, 1]: the share of equity put at risk, e.g. "0.01" for one percent."""


class Direction(StrEnum):
    LONG = "long"
    SHORT = "short"
    FLAT = "flat"


class ExitKind(StrEnum):
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"
    TIME = "time"  # the signal's time_exit_at came


def _not_applicable(message: str) -> PydanticCustomError:
    return PydanticCustomError("not_applicable", message)


class Signal(Frozen):
    """Move the position in `instrument` to a target and hold exits on it. Idempotent on
    (account, signal_id)."""

    type: Literal["signal"] = Field(default="signal", description="Message discriminator.")
    signal_id: SignalId = Field(description="Client-chosen id; the idempotency key.")
    account: AccountId = Field(description="Account to trade on.")
    instrument: Instrument = Field(description="Canonical instrument, e.g. BTC/USD.")
    direction: Direction | None = Field(
        default=None, description="long, short or flat; or give target_qty instead."
    )
    target_qty: Money | None = Field(
        default=None,
        validate_default=True,
        description="Signed position wanted (negative = short); instead of direction.",
    )
    qty: Quantity | None = Field(
        default=None,
        validate_default=True,
        description="Position size for long/short, base units; or give risk_fraction.",
    )
    risk_fraction: RiskFraction | None = Field(
        default=None,
        validate_default=True,
        description="Share of equity lost if stop_loss is hit; sizes long/short instead of qty.",
    )
    entry_price: Price | None = Field(
        default=None,
        validate_default=True,
        description="Limit price of the entry order (GTC); absent: a market order.",
    )
    stop_loss: Price | None = Field(
        default=None,
        validate_default=True,
        description="Close the position when the price reaches this level against it.",
    )
    take_profit: Price | None = Field(
        default=None,
        validate_default=True,
        description="Close the position when the price reaches this level in its favour.",
    )
    trailing_distance: Price | None = Field(
        default=None,
        validate_default=True,
        description="Close when the price falls back this far from its best since entry.",
    )
    time_exit_at: TimestampNs | None = Field(
        default=None,
        validate_default=True,
        description="Close the position at this time, ns since the epoch.",
    )
    expires_at: TimestampNs | None = Field(
        default=None, description="Refuse the signal if it is processed at or after this time."
    )

    @field_validator("target_qty")
    @classmethod
    def _one_intent(cls, target: Any, info: ValidationInfo) -> Any:
        direction = info.data.get("direction")
        if direction is not None and target is not None:
            raise _not_applicable("give direction or target_qty, not both")
        if direction is None and target is None and "direction" in info.data:
            raise PydanticCustomError(
                "missing_for_choice", "a signal needs a direction or a target_qty"
            )
        return target

    @field_validator("qty")
    @classmethod
    def _qty_only_for_long_short(cls, qty: Any, info: ValidationInfo) -> Any:
        if qty is not None and not _is_long_short(info):
            raise _not_applicable("qty applies to direction long or short only")
        return qty

    @field_validator("risk_fraction")
    @classmethod
    def _one_size(cls, fraction: Any, info: ValidationInfo) -> Any:
        if fraction is not None and not _is_long_short(info):
            raise _not_applicable("risk_fraction applies to direction long or short only")
        if _is_long_short(info) and "qty" in info.data:
            has_qty = info.data["qty"] is not None
            if has_qty and fraction is not None:
                raise _not_applicable("give qty or risk_fraction, not both")
            if not has_qty and fraction is None:
                raise PydanticCustomError(
                    "missing_for_choice", "a long or short signal needs qty or risk_fraction"
                )
        return fraction

    @field_validator("entry_price", "stop_loss", "take_profit", "trailing_distance", "time_exit_at")
    @classmethod
    def _only_when_opening(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and _is_flat(info):
            raise _not_applicable(f"{info.field_name} does not apply to a flat signal")
        return value

    @field_validator("stop_loss")
    @classmethod
    def _stop_for_risk_sizing(cls, stop: Any, info: ValidationInfo) -> Any:
        if stop is None and info.data.get("risk_fraction") is not None:
            raise PydanticCustomError(
                "missing_for_choice", "sizing by risk_fraction needs a stop_loss"
            )
        return stop

    @field_validator("take_profit")
    @classmethod
    def _take_profit_beyond_stop(cls, take_profit: Any, info: ValidationInfo) -> Any:
        stop = info.data.get("stop_loss")
        side = _intended_side(info)
        if take_profit is None or stop is None or side is None:
            return take_profit
        if side is Side.BUY and take_profit <= stop:
            raise _not_applicable("a long signal needs take_profit above stop_loss")
        if side is Side.SELL and take_profit >= stop:
            raise _not_applicable("a short signal needs take_profit below stop_loss")
        return take_profit

    @property
    def target_side(self) -> Side | None:
        """buy for a long target, sell for a short one, None for flat."""
        if self.direction is Direction.LONG:
            return Side.BUY
        if self.direction is Direction.SHORT:
            return Side.SELL
        if self.target_qty is not None and self.target_qty != 0:
            return Side.BUY if self.target_qty > 0 else Side.SELL
        return None

    @property
    def has_exits(self) -> bool:
        return any(
            v is not None
            for v in (self.stop_loss, self.take_profit, self.trailing_distance, self.time_exit_at)
        )


def _is_long_short(info: ValidationInfo) -> bool:
    return info.data.get("direction") in (Direction.LONG, Direction.SHORT)


def _is_flat(info: ValidationInfo) -> bool:
    if info.data.get("direction") is Direction.FLAT:
        return True
    target = info.data.get("target_qty")
    return target is not None and target == 0


def _intended_side(info: ValidationInfo) -> Side | None:
    direction = info.data.get("direction")
    if direction is Direction.LONG:
        return Side.BUY
    if direction is Direction.SHORT:
        return Side.SELL
    target = info.data.get("target_qty")
    if target is not None and target != 0:
        return Side.BUY if target > 0 else Side.SELL
    return None


# ---------------------------------------------------------------- server → client


class ExitLevels(Frozen):
    """The exits held on a position, as the position manager holds them."""

    stop_loss: Price | None = Field(default=None, description="Stop-loss price.")
    take_profit: Price | None = Field(default=None, description="Take-profit price.")
    trailing_distance: Price | None = Field(default=None, description="Trailing distance.")
    trail_anchor: Price | None = Field(
        default=None, description="Best price since entry, which the trailing stop follows."
    )
    time_exit_at: TimestampNs | None = Field(default=None, description="Time exit, ns.")


class SignalAccepted(Frozen):
    """The signal passed the risk checks; its order (if the position must move) is placed
    and its exits are held."""

    type: Literal["signal_accepted"] = Field(
        default="signal_accepted", description="Message discriminator."
    )
    account: AccountId = Field(description="Account the signal trades.")
    signal_id: SignalId = Field(description="The signal's id.")
    instrument: Instrument = Field(description="Canonical instrument.")
    target_qty: Money = Field(description="Signed position the signal aims for.")
    position_qty: Money = Field(description="Signed position when the signal was accepted.")
    client_order_id: ClientOrderId | None = Field(
        default=None, description="The order placed to reach the target; absent if none."
    )
    side: Side | None = Field(default=None, description="That order's side.")
    qty: Quantity | None = Field(default=None, description="That order's quantity.")
    exits: ExitLevels | None = Field(default=None, description="Exits now held; absent if none.")
    seq: int | None = Field(
        default=None,
        ge=1,
        description="Per-session sequence number (shared with order events); absent on the "
        "answer to a repeated signal.",
    )
    ts: TimestampNs = Field(description="Time of the decision, ns since the epoch.")


class SignalRejected(Frozen):
    """The signal was refused; nothing was placed and earlier exits are unchanged."""

    type: Literal["signal_rejected"] = Field(
        default="signal_rejected", description="Message discriminator."
    )
    account: AccountId = Field(description="Account the signal named.")
    signal_id: SignalId = Field(description="The signal's id.")
    code: ErrorCode = Field(description="Machine-readable reason.")
    message: str = Field(description="One sentence naming the limit or field and the numbers.")
    seq: int | None = Field(
        default=None,
        ge=1,
        description="Per-session sequence number (shared with order events); absent on the "
        "answer to a repeated signal.",
    )
    ts: TimestampNs = Field(description="Time of the decision, ns since the epoch.")


class ExitFired(Frozen):
    """An exit of a signal's position fired (once); its siblings are cancelled and the
    position is being closed."""

    type: Literal["exit_fired"] = Field(default="exit_fired", description="Message discriminator.")
    account: AccountId = Field(description="Account holding the position.")
    signal_id: SignalId = Field(description="The signal whose exit fired.")
    instrument: Instrument = Field(description="Canonical instrument.")
    kind: ExitKind = Field(description="Which exit fired.")
    trigger_price: Price | None = Field(
        default=None, description="Market price that triggered it; absent for time and flat."
    )
    position_qty: Money = Field(description="Signed position when it fired.")
    client_order_id: ClientOrderId | None = Field(
        default=None, description="The closing order; absent if nothing could be closed yet."
    )
    close_qty: Size = Field(description="Quantity of the closing order (0 if none).")
    seq: int | None = Field(
        default=None, ge=1, description="Per-session sequence number (shared with order events)."
    )
    ts: TimestampNs = Field(description="Time it fired, ns since the epoch.")


__all__ = [
    "Direction",
    "ExitFired",
    "ExitKind",
    "ExitLevels",
    "RiskFraction",
    "Signal",
    "SignalAccepted",
    "SignalId",
    "SignalRejected",
]
