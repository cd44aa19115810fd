"""Configuration of one Kraken spot account session (:class:`KrakenSpotConfig`).

Endpoints default to Kraken's production URLs; tests point every one of them at a local
fake. Credentials are :class:`~pydantic.SecretStr`: their value is read only to sign a
request and never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from protocol.market import Instrument, InstrumentSpec
from tradefleet.config import ConfigDecimal
from workers.broker.adapters.kraken.ratelimit import MAX_CANCEL_COST, Tier
from workers.broker.adapters.kraken.reconnect import ReconnectPolicy
from workers.broker.adapters.kraken.signing import decode_secret

PRODUCTION_REST_URL = "https://api.kraken.com"
PRODUCTION_WS_PUBLIC_URL = "wss://ws.kraken.com/v2"
PRODUCTION_WS_PRIVATE_URL = "wss://ws-auth.kraken.com/v2"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KrakenInstrument(_Frozen):
    """Trading rules of one pair, used when the venue's ``instrument`` channel is not read."""

    instrument: Instrument = Field(description="Canonical name, e.g. BTC/USD.")
    tick_size: ConfigDecimal = Field(gt=0, description="Price increment (price_increment).")
    lot_size: ConfigDecimal = Field(gt=0, description="Quantity increment (qty_increment).")
    min_qty: ConfigDecimal = Field(gt=0, description="Smallest order quantity (qty_min).")
    price_precision: int = Field(ge=0, le=18, description="Decimals of prices on the wire.")
    qty_precision: int = Field(ge=0, le=18, description="Decimals of quantities on the wire.")

    def spec(self) -> InstrumentSpec:
        """The rules in protocol terms."""
        return InstrumentSpec(
            instrument=self.instrument,
            tick_size=self.tick_size,
            lot_size=self.lot_size,
            min_qty=self.min_qty,
        )


def _default_instruments() -> list[KrakenInstrument]:
    # Values of the v2 instrument snapshot in ../shared/data/exchanges/reference.
    return [
        KrakenInstrument(
            instrument="BTC/USD",
            tick_size=Decimal("0.1"),
            lot_size=Decimal("0.00000001"),
            min_qty=Decimal("0.0001"),
            price_precision=1,
            qty_precision=8,
        ),
        KrakenInstrument(
            instrument="ETH/USD",
            tick_size=Decimal("0.01"),
            lot_size=Decimal("0.00000001"),
            min_qty=Decimal("0.002"),
            price_precision=2,
            qty_precision=8,
        ),
    ]


class ReconnectSettings(_Frozen):
    """Backoff between connection attempts (see ``reconnect.py`` for the rules)."""

    initial_s: float = Field(default=1.0, gt=0, description="First backoff delay.")
    max_s: float = Field(default=60.0, gt=0, description="Longest backoff delay.")
    multiplier: float = Field(default=2.0, ge=1, description="Backoff growth per failure.")
    jitter: float = Field(
        default=0.25, ge=0, lt=1, description="Fraction of each delay taken off at random."
    )
    maintenance_s: float = Field(
        default=5.0, ge=0, description="Least wait after a maintenance close (Kraken: 5 s)."
    )
    max_attempts_per_10min: int = Field(
        default=100,
        ge=1,
        le=150,
        description="Connection attempts allowed per rolling 10 minutes for this process "
        "(Kraken bans an IP above ~150).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectSettings:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self

    def policy(self) -> ReconnectPolicy:
        """The pure policy these settings describe."""
        return ReconnectPolicy(
            initial_s=self.initial_s,
            max_s=self.max_s,
            multiplier=self.multiplier,
            jitter=self.jitter,
            maintenance_s=self.maintenance_s,
            window_s=600.0,
            max_attempts_per_window=self.max_attempts_per_10min,
        )


TierName = Literal["starter", "intermediate", "pro"]
_TIERS: dict[str, Tier] = {
    "starter": Tier.STARTER,
    "intermediate": Tier.INTERMEDIATE,
    "pro": Tier.PRO,
}


class KrakenSpotConfig(_Frozen):
    """One account's session with Kraken spot (REST + WebSocket v2)."""

    # A validation error must not quote a rejected credential back.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    account: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$", description="tradefleet account name of this session."
    )
    api_key: SecretStr = Field(description="Kraken API key (the API-Key header).")
    api_secret: SecretStr = Field(description="Kraken API private key, base64 (signs requests).")
    rest_url: str = Field(default=PRODUCTION_REST_URL, description="REST base URL.")
    ws_public_url: str = Field(default=PRODUCTION_WS_PUBLIC_URL, description="Public WS v2 URL.")
    ws_private_url: str = Field(
        default=PRODUCTION_WS_PRIVATE_URL, description="Authenticated WS v2 URL."
    )
    tier: TierName = Field(
        default="starter",
        description="Verification tier, for the local rate counter. The venue's maxratecount "
        "overrides it when the executions subscription reports one.",
    )
    rate_reserve: float = Field(
        default=MAX_CANCEL_COST,
        ge=0,
        lt=60,
        description="Counter units kept free for cancels: adds and amends are refused locally "
        "above threshold - reserve.",
    )
    instruments_from_venue: bool = Field(
        default=True,
        description="Read pairs, increments and precisions from the v2 instrument channel; "
        "when false, use `instruments`.",
    )
    instruments: list[KrakenInstrument] = Field(
        default_factory=_default_instruments,
        description="Pairs this session trades when the instrument channel is not read.",
    )
    default_book_depth: int = Field(
        default=10, ge=1, le=1000, description="Book depth when a subscription names none."
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for one REST answer or WS response."
    )
    connect_timeout_s: float = Field(
        default=20.0, gt=0, description="Longest wait for connect() to have both sockets up."
    )
    ping_interval_s: float = Field(
        default=20.0,
        gt=0,
        description="Seconds between keepalive pings (Kraken closes idle sockets after ~60 s).",
    )
    stale_after_s: float = Field(
        default=10.0,
        gt=0,
        description="A socket that delivers nothing (heartbeats are 1 Hz) for this long is "
        "treated as dead and reopened.",
    )
    order_outcome_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="After an unanswered add_order, how long a re-send of the same "
        "client_order_id waits for the venue's executions before sending again.",
    )
    reconnect: ReconnectSettings = Field(
        default_factory=ReconnectSettings, description="Reconnect backoff."
    )
    max_queue: int = Field(
        default=10_000,
        ge=10,
        description="Undelivered events above which reading pauses (TCP pushes back).",
    )

    @field_validator("api_secret")
    @classmethod
    def _secret_is_base64(cls, value: SecretStr) -> SecretStr:
        decode_secret(value.get_secret_value())  # raises InvalidSecret, which names no secret
        return value

    @model_validator(mode="after")
    def _unique_instruments(self) -> KrakenSpotConfig:
        names = [item.instrument for item in self.instruments]
        if len(names) != len(set(names)):
            raise ValueError("instruments must be unique")
        return self

    @property
    def rate_tier(self) -> Tier:
        """The configured tier as the rate limiter names it."""
        return _TIERS[self.tier]

    @classmethod
    def from_env(cls, account: str, prefix: str, **settings: object) -> KrakenSpotConfig:
        """Build a config whose credentials come from ``{prefix}_API_KEY`` and
        ``{prefix}_API_SECRET``. Raises ``KeyError`` naming the missing variable."""
        names = (f"{prefix}_API_KEY", f"{prefix}_API_SECRET")
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            raise KeyError(f"environment variable {missing[0]} is not set")
        return cls.model_validate(
            {
                "account": account,
                "api_key": os.environ[names[0]],
                "api_secret": os.environ[names[1]],
                **settings,
            }
        )
