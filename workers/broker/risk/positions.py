"""Positions of one account, built from its fills. Pure, no I/O.

Per instrument: the signed quantity, the average entry price of the open quantity, realized
PnL and fees. Arithmetic is exact: average prices are kept as fractions, so buying 1 at 100
and 2 at 101 and selling all 3 at 102 realizes exactly 4, and a fill that takes a position
through zero closes the old side at its average price and opens the rest at the fill price.

Realized PnL is counted in the instrument's quote currency, before fees. Fees are kept per
currency; a fee charged in the base or quote currency also counts against the day's net PnL
(a base-currency fee valued at the fill price). The day of a fill is the UTC date of its
`ts`; `daily_loss(now)` reads the day of `now`, the injected clock.

Fills are counted once per `fill_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from protocol.market import Side, split_instrument
from protocol.orders import Fill, Position
from workers.broker.risk.amounts import EXACT, ZERO, to_decimal
from workers.broker.risk.limits import Holding

DAY_NS = 86_400 * 1_000_000_000
_KEPT_DAYS = 3  # today and a little slack for a venue clock a day behind


def utc_day(ts_ns: int) -> int:
    """Days since 1970-01-01 of the UTC date containing `ts_ns`."""
    return ts_ns // DAY_NS


@dataclass(slots=True)
class InstrumentPosition:
    """Net holding of one instrument."""

    instrument: str
    qty: Decimal = ZERO
    avg_price: Fraction | None = None  # of the open quantity; None when flat
    realized: Fraction = Fraction(0)  # quote currency, before fees
    fees: dict[str, Decimal] = field(default_factory=dict)

    def apply(self, side: Side, qty: Decimal, price: Decimal) -> Fraction:
        """Book one execution; return the PnL it realized."""
        signed = qty if side is Side.BUY else -qty
        exact_price = Fraction(price)
        if self.qty == 0 or (self.qty > 0) == (signed > 0):
            held = Fraction(abs(self.qty))
            average = self.avg_price or Fraction(0)
            self.avg_price = (average * held + exact_price * Fraction(qty)) / (held + Fraction(qty))
            self.qty = EXACT.add(self.qty, signed)
            return Fraction(0)
        # A position taken over from the venue without its price reduces at the fill price.
        average = self.avg_price if self.avg_price is not None else exact_price
        closed = min(qty, abs(self.qty))
        direction = 1 if self.qty > 0 else -1
        realized = Fraction(closed) * (exact_price - average) * direction
        self.realized += realized
        self.qty = EXACT.add(self.qty, signed)
        if self.qty == 0:
            self.avg_price = None
        elif (self.qty > 0) != (direction > 0):  # went through zero: the rest is a new position
            self.avg_price = exact_price
        return realized

    def unrealized(self, mark: Decimal) -> Decimal:
        """PnL of the open quantity if it were closed at `mark`."""
        if self.avg_price is None:
            return ZERO
        return to_decimal(Fraction(self.qty) * (Fraction(mark) - self.avg_price))

    @property
    def holding(self) -> Holding:
        avg = None if self.avg_price is None else to_decimal(self.avg_price)
        return Holding(self.qty, avg)


class PositionBook:
    """Every position of one account, plus the realized PnL of recent UTC days."""

    def __init__(self, account: str) -> None:
        self.account = account
        self._positions: dict[str, InstrumentPosition] = {}
        self._fill_ids: set[str] = set()
        self._daily: dict[int, dict[str, Fraction]] = {}  # day → currency → net realized

    # ------------------------------------------------------------ input

    def apply(self, fill: Fill) -> bool:
        """Book `fill`. Returns False (and changes nothing) if its fill_id was seen before."""
        if fill.fill_id in self._fill_ids:
            return False
        self._fill_ids.add(fill.fill_id)
        position = self._positions.setdefault(fill.instrument, InstrumentPosition(fill.instrument))
        realized = position.apply(fill.side, fill.qty, fill.price)
        position.fees[fill.fee_currency] = EXACT.add(
            position.fees.get(fill.fee_currency, ZERO), fill.fee
        )
        base, quote = split_instrument(fill.instrument)
        net = realized
        if fill.fee_currency == quote:
            net -= Fraction(fill.fee)
        elif fill.fee_currency == base:
            net -= Fraction(fill.fee) * Fraction(fill.price)
        day = utc_day(fill.ts)
        per_currency = self._daily.setdefault(day, {})
        per_currency[quote] = per_currency.get(quote, Fraction(0)) + net
        for old in [d for d in self._daily if d <= max(self._daily) - _KEPT_DAYS]:
            del self._daily[old]
        return True

    def correct(self, instrument: str, qty: Decimal, avg_price: Decimal | None) -> None:
        """Take the venue's word for a position: its quantity, and its average price when
        it gives one (else ours is kept while the side stays; none after a flip). Realized
        PnL and fees stay as the fills made them."""
        position = self._positions.setdefault(instrument, InstrumentPosition(instrument))
        flipped = position.qty == 0 or (position.qty > 0) != (qty > 0)
        position.qty = qty
        if qty == 0:
            position.avg_price = None
        elif avg_price is not None:
            position.avg_price = Fraction(avg_price)
        elif flipped:
            position.avg_price = None

    # ------------------------------------------------------------ queries

    def qty(self, instrument: str) -> Decimal:
        position = self._positions.get(instrument)
        return ZERO if position is None else position.qty

    def get(self, instrument: str) -> InstrumentPosition | None:
        return self._positions.get(instrument)

    def holdings(self) -> dict[str, Holding]:
        """Non-flat positions as the risk engine reads them."""
        return {k: p.holding for k, p in self._positions.items() if p.qty != 0}

    def daily_realized(self, now: int, currency: str) -> Decimal:
        """Realized PnL net of fees of fills on the UTC day of `now`, in `currency`."""
        return to_decimal(self._daily.get(utc_day(now), {}).get(currency, Fraction(0)))

    def daily_loss(self, now: int, currency: str) -> Decimal:
        """Today's realized loss net of fees (positive when losing, 0 when winning)."""
        return max(ZERO, -self.daily_realized(now, currency))

    def positions(self) -> list[Position]:
        """Every instrument ever traded, as the wire reports positions."""
        out: list[Position] = []
        for instrument in sorted(self._positions):
            p = self._positions[instrument]
            out.append(
                Position(
                    account=self.account,
                    instrument=instrument,
                    qty=p.qty,
                    avg_price=None if p.avg_price is None else to_decimal(p.avg_price),
                    realized_pnl=to_decimal(p.realized),
                )
            )
        return out

    # ------------------------------------------------------------ durable form

    def snapshot(self) -> dict[str, Any]:
        """Everything the book knows, as JSON-ready data (fractions as "n/d" strings)."""
        return {
            "positions": {
                k: {
                    "qty": str(p.qty),
                    "avg_price": None if p.avg_price is None else str(p.avg_price),
                    "realized": str(p.realized),
                    "fees": {c: str(v) for c, v in sorted(p.fees.items())},
                }
                for k, p in sorted(self._positions.items())
            },
            "fill_ids": sorted(self._fill_ids),
            "daily": {
                str(day): {c: str(v) for c, v in sorted(per.items())}
                for day, per in sorted(self._daily.items())
            },
        }

    @classmethod
    def restore(cls, account: str, data: dict[str, Any]) -> PositionBook:
        """The book `snapshot()` described."""
        book = cls(account)
        for instrument, p in data["positions"].items():
            book._positions[instrument] = InstrumentPosition(
                instrument=instrument,
                qty=Decimal(p["qty"]),
                avg_price=None if p["avg_price"] is None else Fraction(p["avg_price"]),
                realized=Fraction(p["realized"]),
                fees={c: Decimal(v) for c, v in p["fees"].items()},
            )
        book._fill_ids = set(data["fill_ids"])
        book._daily = {
            int(day): {c: Fraction(v) for c, v in per.items()} for day, per in data["daily"].items()
        }
        return book
