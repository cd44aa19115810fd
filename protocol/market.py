"""Market data contract and the value types every data-plane message shares.

Value types
    `Money` (any finite decimal), `Price` and `Quantity` (> 0), `Size` (>= 0): exact decimals
    that travel as JSON strings. Input accepts strings in plain notation (`"42"`, `"-0.015"`)
    and ints; a float is refused because it has already lost exactness by the time we see it.
    `Instrument` is the canonical `BASE/QUOTE` spelling (`BTC/USD`); venue spellings never
    leave their adapter.

Market events (server → client), discriminated by `type`:
    ticker        {instrument, bid?, bid_qty?, ask?, ask_qty?, last?, ts}
    trade         {instrument, trade_id, price, qty, taker_side, ts}
    book_snapshot {instrument, bids: [[price, qty]…], asks: [[price, qty]…], update_id, ts}
    book_delta    {instrument, bids, asks, update_id, ts}       qty "0" deletes the level
    candle        {instrument, interval, start, open, high, low, close, volume, closed}

Every `ts`/`start` is integer nanoseconds since the Unix epoch (exact, unlike float seconds).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

# ---------------------------------------------------------------- value types

# Plain notation only: an exponent ("1e9") is legal Decimal syntax but lets a 10-byte string
# describe a number with a billion digits, and no venue sends it.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# Enough for any real price or size; a bound keeps arithmetic exact and cheap.
MAX_DECIMAL_CHARS = 64
_TOO_LONG = f"more than {MAX_DECIMAL_CHARS} characters in plain notation"


def parse_decimal(value: object) -> Decimal:
    """Turn a wire value into an exact, finite `Decimal`.

    Accepts `Decimal`, `int` and plain-notation strings, each at most `MAX_DECIMAL_CHARS`
    long in plain notation (a model built in this process is read back by the next one).
    Raises `ValueError` for floats, booleans, exponents, NaN/Infinity, over-long values and
    anything else.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite number")
        if _too_long(value):
            # A model holds only what its wire form can carry: built here from a Decimal, it
            # would be sent as a string every reader refuses (the answer would be lost).
            raise ValueError(_TOO_LONG)
        return value
    if isinstance(value, bool):  # bool is an int subclass; True is not a price
        raise ValueError("must be a decimal string, not a boolean")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, int):
        if value.bit_length() > 4 * MAX_DECIMAL_CHARS or len(str(value)) > MAX_DECIMAL_CHARS:
            raise ValueError(_TOO_LONG)
        return Decimal(value)
    if isinstance(value, float):
        raise ValueError('must be a decimal string such as "0.1": floats are not exact')  # noqa: TRY004
    if isinstance(value, str):
        if len(value) > MAX_DECIMAL_CHARS or not _DECIMAL_TEXT.fullmatch(value):
            raise ValueError('must be a decimal string in plain notation, such as "101.25"')
        try:
            return Decimal(value)
        except InvalidOperation as exc:  # unreachable given the regex, kept as a guard
            raise ValueError("not a decimal number") from exc
    raise ValueError("must be a decimal string")


def _too_long(value: Decimal) -> bool:
    text = str(value)  # fast; scientific notation only for large exponents
    if len(text) > MAX_DECIMAL_CHARS:
        return True
    return "E" in text and len(format(value, "f")) > MAX_DECIMAL_CHARS


def format_decimal(value: Decimal) -> str:
    """The wire spelling of a decimal: plain notation, trailing zeros kept as given."""
    return format(value, "f")


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must not be negative")
    return value


_AS_STRING = PlainSerializer(format_decimal, return_type=str, when_used="json")

Money = Annotated[Decimal, BeforeValidator(parse_decimal), _AS_STRING]
"""Any finite exact decimal (cash, PnL, fees — a maker rebate is a negative fee)."""
Price = Annotated[Decimal, BeforeValidator(parse_decimal), AfterValidator(_positive), _AS_STRING]
"""A strictly positive exact decimal price."""
Quantity = Annotated[Decimal, BeforeValidator(parse_decimal), AfterValidator(_positive), _AS_STRING]
"""A strictly positive exact decimal quantity (what an order asks for)."""
Size = Annotated[Decimal, BeforeValidator(parse_decimal), AfterValidator(_non_negative), _AS_STRING]
"""A non-negative exact decimal quantity (filled, remaining, book level sizes)."""

INSTRUMENT_PATTERN = r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$"
_INSTRUMENT = re.compile(INSTRUMENT_PATTERN)


def _canonical_instrument(value: str) -> str:
    if not _INSTRUMENT.fullmatch(value):
        raise ValueError("must be a canonical instrument BASE/QUOTE in upper case, like BTC/USD")
    return value


Instrument = Annotated[str, AfterValidator(_canonical_instrument)]
"""Canonical instrument name `BASE/QUOTE`, upper case, e.g. `BTC/USD`."""
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,16}$")]
"""A currency or asset code, upper case, e.g. `USD`, `BTC`."""
TimestampNs = Annotated[int, Field(ge=0)]
"""Nanoseconds since the Unix epoch."""


def split_instrument(instrument: str) -> tuple[str, str]:
    """`"BTC/USD"` → `("BTC", "USD")`. Raises `ValueError` if not canonical."""
    if not _INSTRUMENT.fullmatch(instrument):
        raise ValueError(f"not a canonical instrument: {instrument!r}")
    base, quote = instrument.split("/")
    return base, quote


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class Channel(StrEnum):
    """What a subscription delivers for one instrument."""

    TICKER = "ticker"  # L1: best bid/ask and last trade
    TRADES = "trades"
    BOOK = "book"  # L2 snapshot then deltas, `depth` levels per side
    CANDLES = "candles"


class CandleInterval(StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"

    @property
    def nanoseconds(self) -> int:
        return _INTERVAL_NS[self]


_MINUTE_NS = 60 * 1_000_000_000
_INTERVAL_NS = {
    CandleInterval.M1: _MINUTE_NS,
    CandleInterval.M5: 5 * _MINUTE_NS,
    CandleInterval.M15: 15 * _MINUTE_NS,
    CandleInterval.H1: 60 * _MINUTE_NS,
    CandleInterval.H4: 240 * _MINUTE_NS,
    CandleInterval.D1: 1440 * _MINUTE_NS,
}


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstrumentSpec(Frozen):
    """Trading rules of one instrument at one venue, in canonical terms."""

    instrument: Instrument = Field(description="Canonical name, e.g. BTC/USD.")
    tick_size: Price = Field(description="Prices must be whole multiples of this.")
    lot_size: Quantity = Field(description="Quantities must be whole multiples of this.")
    min_qty: Quantity = Field(description="Smallest order quantity accepted.")

    @property
    def base(self) -> str:
        return split_instrument(self.instrument)[0]

    @property
    def quote(self) -> str:
        return split_instrument(self.instrument)[1]


# ---------------------------------------------------------------- market events


class Ticker(Frozen):
    """Level 1: best bid and ask with their sizes, and the last trade price."""

    type: Literal["ticker"] = Field(default="ticker", description="Message discriminator.")
    instrument: Instrument = Field(description="Canonical instrument.")
    bid: Price | None = Field(default=None, description="Best bid price; absent if no bids.")
    bid_qty: Size | None = Field(default=None, description="Size at the best bid.")
    ask: Price | None = Field(default=None, description="Best ask price; absent if no asks.")
    ask_qty: Size | None = Field(default=None, description="Size at the best ask.")
    last: Price | None = Field(default=None, description="Price of the last trade, if any.")
    ts: TimestampNs = Field(description="Venue time of this state, ns since the epoch.")


class Trade(Frozen):
    """One public trade on the venue's tape."""

    type: Literal["trade"] = Field(default="trade", description="Message discriminator.")
    instrument: Instrument = Field(description="Canonical instrument.")
    trade_id: str = Field(min_length=1, max_length=64, description="Venue trade id.")
    price: Price = Field(description="Execution price.")
    qty: Quantity = Field(description="Executed quantity, in base units.")
    taker_side: Side = Field(description="Side of the aggressing (taker) order.")
    ts: TimestampNs = Field(description="Execution time, ns since the epoch.")


BookLevel = tuple[Price, Size]
"""One price level on the wire: `["101.5", "0.25"]`."""


class BookSnapshot(Frozen):
    """The full top of an L2 book: bids best (highest) first, asks best (lowest) first."""

    type: Literal["book_snapshot"] = Field(
        default="book_snapshot", description="Message discriminator."
    )
    instrument: Instrument = Field(description="Canonical instrument.")
    bids: list[BookLevel] = Field(description="[price, qty] pairs, highest price first.")
    asks: list[BookLevel] = Field(description="[price, qty] pairs, lowest price first.")
    update_id: int = Field(ge=0, description="Book version; the next delta carries update_id+1.")
    ts: TimestampNs = Field(description="Venue time of this state, ns since the epoch.")

    @model_validator(mode="after")
    def _levels_sorted(self) -> BookSnapshot:
        bid_prices = [p for p, _ in self.bids]
        ask_prices = [p for p, _ in self.asks]
        if any(b >= a for a, b in pairwise(bid_prices)):
            raise ValueError("bids must be strictly descending by price")
        if any(b <= a for a, b in pairwise(ask_prices)):
            raise ValueError("asks must be strictly ascending by price")
        if any(q == 0 for _, q in self.bids) or any(q == 0 for _, q in self.asks):
            raise ValueError("a snapshot level must have a non-zero quantity")
        return self


class BookDelta(Frozen):
    """Changed L2 levels since `update_id - 1`. Each level is the new absolute size at that
    price; size "0" removes the level. Apply only on top of update_id - 1, else resnapshot."""

    type: Literal["book_delta"] = Field(default="book_delta", description="Message discriminator.")
    instrument: Instrument = Field(description="Canonical instrument.")
    bids: list[BookLevel] = Field(default_factory=list, description="Changed bid levels.")
    asks: list[BookLevel] = Field(default_factory=list, description="Changed ask levels.")
    update_id: int = Field(ge=1, description="Book version after applying this delta.")
    ts: TimestampNs = Field(description="Venue time of the change, ns since the epoch.")


class Candle(Frozen):
    """OHLCV over one interval. Sent while the interval runs (`closed` false) and once when
    it ends (`closed` true); the last message for a `start` is final."""

    type: Literal["candle"] = Field(default="candle", description="Message discriminator.")
    instrument: Instrument = Field(description="Canonical instrument.")
    interval: CandleInterval = Field(description="Candle length.")
    start: TimestampNs = Field(description="Interval start, ns since the epoch.")
    open: Price = Field(description="First trade price in the interval.")
    high: Price = Field(description="Highest trade price in the interval.")
    low: Price = Field(description="Lowest trade price in the interval.")
    close: Price = Field(description="Last trade price in the interval so far.")
    volume: Size = Field(description="Traded quantity in base units.")
    closed: bool = Field(default=False, description="True once the interval has ended.")

    @model_validator(mode="after")
    def _consistent(self) -> Candle:
        if not (self.low <= min(self.open, self.close) and self.high >= max(self.open, self.close)):
            raise ValueError("need low <= open, close <= high")
        return self


MarketEvent = Ticker | Trade | BookSnapshot | BookDelta | Candle
MARKET_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[MarketEvent, Field(discriminator="type")])
"""Validates any market event from a dict/JSON, choosing the model by `type`."""
