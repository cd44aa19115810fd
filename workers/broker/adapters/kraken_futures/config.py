"""Configuration of one Kraken Futures account session (the live adapter).

URLs default to the real venue; tests point them at the fake venue on loopback. The API
key and secret are `SecretStr`: they are never logged, printed or put in a repr.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from workers.broker.adapters.kraken_futures.ratelimit import DERIVATIVES_BUDGET

REAL_REST_URL = "https://futures.kraken.com"
REAL_WS_URL = "wss://futures.kraken.com/ws/v1"


class KrakenFuturesConfig(BaseModel):
    """Everything one `KrakenFuturesAdapter` needs; frozen once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="tradefleet's name for the account this session trades.",
    )
    api_key: SecretStr = Field(description="Kraken Futures API key (public half).")
    api_secret: SecretStr = Field(description="Kraken Futures API secret, base64 as issued.")
    rest_url: str = Field(
        default=REAL_REST_URL,
        description="Base URL of the REST API; paths start with /derivatives/api/v3.",
    )
    ws_url: str = Field(default=REAL_WS_URL, description="URL of the WebSocket v1 feed.")
    contract_type: Literal["PF", "PI"] = Field(
        default="PF",
        description="Which perpetual a canonical pair trades: PF (linear, multi-collateral; "
        "sizes in base units) or PI (inverse; sizes in contracts of one quote unit).",
    )
    default_book_depth: int = Field(
        default=25, ge=1, le=1000, description="Book levels per side when a subscriber names none."
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for one REST answer or WebSocket handshake."
    )
    cancel_reserve_units: int = Field(
        default=30,
        ge=0,
        lt=DERIVATIVES_BUDGET,
        description="Rate-limit cost units kept free for cancels: other calls are refused "
        "locally when they would leave less than this in the 10-second budget.",
    )
    reconnect_initial_s: float = Field(
        default=0.25, gt=0, description="First delay before re-opening a dropped feed."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="Longest delay between attempts to re-open the feed."
    )
    # Kraken Futures allows 100 concurrent connections and 100 requests per second per IP
    # (PROTOCOL_NOTES §7): the cap keeps a long outage from turning into a connect storm.
    heartbeat_s: float = Field(
        default=30.0,
        gt=0,
        description="WebSocket ping interval; Kraken closes feeds silent for 60 s.",
    )
    max_queue: int = Field(
        default=10_000,
        ge=10,
        description="Events held for a slow consumer before the feed stops reading.",
    )

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")
