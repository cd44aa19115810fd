"""Risk limits on the wire and in the config: what an operator may set per account.

The limits travel in the fleet configuration (`accounts.<name>.risk`), over the BrokerManager's
REST API (`PUT /v1/accounts/{account}/limits`) and down the control pipe to the account's order
owner, whose position manager (`workers/broker/risk/`) enforces them. Every limit is optional:
absent means not limited. Amounts are exact decimals written as strings.
"""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_serializer,
)

from protocol.market import Currency, Instrument, format_decimal, parse_decimal

_EXACT = Context(prec=60)

_AS_STRING = PlainSerializer(format_decimal, return_type=str, when_used="json")


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _band(value: Decimal) -> Decimal:
    if not 0 < value < 1:
        raise ValueError('must be a fraction between 0 and 1, e.g. "0.05" for 5%')
    return value


Amount = Annotated[Decimal, BeforeValidator(parse_decimal), AfterValidator(_positive), _AS_STRING]
"""A strictly positive exact decimal, written as a string ("10000")."""
BandFraction = Annotated[Decimal, BeforeValidator(parse_decimal), AfterValidator(_band), _AS_STRING]
"""A fraction strictly between 0 and 1, written as a string ("0.05")."""
TraderTag = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrderRate(_Config):
    """At most `max_orders` new orders in any window of `window_seconds`."""

    max_orders: int = Field(ge=1, description="Orders allowed per window.")
    window_seconds: Amount = Field(description='Window length in seconds, e.g. "1" or "0.5".')

    @property
    def window_ns(self) -> int:
        return int(_EXACT.multiply(self.window_seconds, Decimal(1_000_000_000)))


class LimitSet(_Config):
    """One set of limits. Every limit is optional: absent means not limited."""

    max_open_positions: int | None = Field(
        default=None, ge=0, description="Instruments with a position or a working order."
    )
    max_position_qty: dict[Instrument, Amount] = Field(
        default_factory=dict,
        description="Largest position magnitude per instrument, in base units "
        "(instruments not listed are not limited by quantity).",
    )
    max_position_notional: Amount | None = Field(
        default=None, description="Largest position value per instrument, in `currency`."
    )
    max_gross_exposure: Amount | None = Field(
        default=None, description="Largest sum of position values over all instruments."
    )
    max_order_notional: Amount | None = Field(
        default=None, description="Largest value of one order (qty × price), in `currency`."
    )
    max_order_rate: OrderRate | None = Field(
        default=None, description="Most new orders per time window."
    )
    price_band: BandFraction | None = Field(
        default=None,
        description="Largest distance of a limit price from the reference price (mid, else "
        "last trade), as a fraction of it; market orders are valued at its upper edge.",
    )
    allowed_instruments: frozenset[Instrument] | None = Field(
        default=None, description="The only instruments that may be traded; absent: any."
    )
    daily_loss_limit: Amount | None = Field(
        default=None,
        description="Realized loss net of fees since 00:00 UTC at which only orders that "
        "reduce a position are accepted.",
    )

    @field_serializer("allowed_instruments")
    def _sorted(self, instruments: frozenset[str] | None) -> list[str] | None:
        return None if instruments is None else sorted(instruments)


class RiskLimits(LimitSet):
    """The limits of one account, with optional stricter sets per trader tag."""

    currency: Currency = Field(
        default="USD", description="Quote currency every notional and loss limit is counted in."
    )
    trader_tags: dict[TraderTag, LimitSet] = Field(
        default_factory=dict,
        description="Extra limits for the orders of traders with this tag; they apply on top "
        "of the account's limits, measured on the whole account.",
    )
