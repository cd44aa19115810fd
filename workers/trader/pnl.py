"""A hosted trader's own profit and loss, from the fills of its own orders. Pure: no I/O.

`PnlLedger.observe(event)` takes the events of the trader's SDK session as they come (order
events, standalone fills, tickers, trades; anything else is ignored) and keeps, per
instrument:

* the position (signed: negative is short) and its average cost (average-cost method: buying
  into a long, or selling into a short, moves the average; reducing leaves it as is and
  realizes `(price - average) × closed qty` with the position's sign; going through zero
  opens the rest at the fill's price);
* realized PnL (before fees) and the fees paid, per fee currency;
* unrealized PnL, `(mark - average) × position`, marked at the last price seen: the last
  ticker (its last trade, else its mid) or public trade of the instrument, else the last fill.

A fill is counted once, by `fill_id`, whichever way it arrives (in an order event and again
as a standalone `fill`, or replayed after a reconnect). Every amount is a `Decimal`;
`report()` gives strings, for the worker's status info.

The ledger covers what the trader's session traded, across the trader's runs: `state()` is
kept with the session (`workers.trader.service.SavedSession`) and a new run starts from it
(`PnlLedger.restore`) and from the session's events after `last_seq`, the highest seq the
ledger saw. It is not the account's history (the account's books are the Broker's
`position_pnl`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)
SEEN_FILLS = 10_000  # fill ids remembered for deduplication
KEPT_FILL_IDS = 200
"""Newest fill ids kept in `state()`: a fill seen as a standalone `fill` just before a restart
may come again in its order event, replayed after the saved seq."""


@dataclass
class InstrumentPnl:
    instrument: str
    position: Decimal = ZERO
    avg_cost: Decimal | None = None
    realized: Decimal = ZERO
    fees: dict[str, Decimal] = field(default_factory=dict)
    mark: Decimal | None = None
    mark_source: str | None = None  # "ticker", "trade" or "fill"
    fills: int = 0
    bought: Decimal = ZERO
    sold: Decimal = ZERO

    @property
    def quote(self) -> str | None:
        _, sep, quote = self.instrument.partition("/")
        return quote if sep and quote else None

    @property
    def unrealized(self) -> Decimal | None:
        if self.position == 0:
            return ZERO
        if self.avg_cost is None or self.mark is None:
            return None
        return (self.mark - self.avg_cost) * self.position

    def apply_fill(self, side: str, qty: Decimal, price: Decimal, fee: Decimal,
                   fee_currency: str) -> None:
        signed = qty if side == "buy" else -qty
        self.fills += 1
        if side == "buy":
            self.bought += qty
        else:
            self.sold += qty
        self.fees[fee_currency] = self.fees.get(fee_currency, ZERO) + fee
        held = self.position
        if held == 0 or (held > 0) == (signed > 0):
            cost = (self.avg_cost or ZERO) * abs(held) + price * qty
            self.position = held + signed
            self.avg_cost = cost / abs(self.position)
        else:
            closed = min(abs(held), qty)
            direction = 1 if held > 0 else -1
            assert self.avg_cost is not None  # a non-zero position always has a cost
            self.realized += (price - self.avg_cost) * closed * direction
            self.position = held + signed
            if self.position == 0:
                self.avg_cost = None
            elif (self.position > 0) != (held > 0):
                self.avg_cost = price  # went through zero: the rest is a new position
        if self.mark_source in (None, "fill"):
            self.mark, self.mark_source = price, "fill"

    def set_mark(self, price: Decimal, source: str) -> None:
        self.mark, self.mark_source = price, source

    def state(self) -> dict[str, Any]:
        return {"position": str(self.position), "avg_cost": _str(self.avg_cost),
                "realized": str(self.realized),
                "fees": {c: str(a) for c, a in self.fees.items()},
                "mark": _str(self.mark), "mark_source": self.mark_source, "fills": self.fills,
                "bought": str(self.bought), "sold": str(self.sold)}

    @classmethod
    def restore(cls, instrument: str, state: dict[str, Any]) -> InstrumentPnl:
        return cls(instrument, position=Decimal(state["position"]),
                   avg_cost=_dec(state["avg_cost"]), realized=Decimal(state["realized"]),
                   fees={str(c): Decimal(a) for c, a in state["fees"].items()},
                   mark=_dec(state["mark"]), mark_source=state["mark_source"],
                   fills=int(state["fills"]), bought=Decimal(state["bought"]),
                   sold=Decimal(state["sold"]))


class PnlLedger:
    """Per-instrument positions and PnL of one trader (module docstring)."""

    def __init__(self) -> None:
        self.instruments: dict[str, InstrumentPnl] = {}
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self.duplicates = 0
        self.last_seq = 0
        """The highest session seq among the events observed: a new run resumes after it."""

    def state(self) -> dict[str, Any]:
        """What `restore` needs, JSON-ready (decimals as strings)."""
        return {"instruments": {n: e.state() for n, e in self.instruments.items()},
                "last_seq": self.last_seq,
                "fill_ids": list(self._seen_order)[-KEPT_FILL_IDS:]}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> PnlLedger:
        """The ledger `state()` described. Raises KeyError, TypeError, ValueError or
        ArithmeticError (`decimal.InvalidOperation`) on a damaged state."""
        ledger = cls()
        ledger.instruments = {str(n): InstrumentPnl.restore(str(n), e)
                              for n, e in state["instruments"].items()}
        ledger.last_seq = int(state["last_seq"])
        for fill_id in state["fill_ids"]:
            ledger._remember(str(fill_id))
        return ledger

    def new_session(self) -> None:
        """The trader's session changed (the old one could not be resumed): seqs start again;
        the PnL goes on."""
        self.last_seq = 0

    def _of(self, instrument: str) -> InstrumentPnl:
        entry = self.instruments.get(instrument)
        if entry is None:
            entry = self.instruments[instrument] = InstrumentPnl(instrument)
        return entry

    def observe(self, event: Any) -> bool:
        """Take one SDK event. True when it changed the ledger."""
        seq = getattr(event, "seq", None)
        if isinstance(seq, int) and seq > self.last_seq:
            self.last_seq = seq
        kind = getattr(event, "type", None)
        if kind in ("order_filled", "order_partially_filled"):
            return self._fill(getattr(event, "fill", None))
        if kind == "fill":
            return self._fill(event)
        if kind == "ticker":
            price = _ticker_price(event)
            if price is None:
                return False
            return self._mark(event.instrument, price, "ticker")
        if kind == "trade":
            return self._mark(event.instrument, Decimal(event.price), "trade")
        return False

    def _fill(self, fill: Any) -> bool:
        if fill is None:
            return False
        fill_id = f"{fill.client_order_id}|{fill.fill_id}"
        if fill_id in self._seen:
            self.duplicates += 1
            return False
        self._remember(fill_id)
        side = getattr(fill.side, "value", fill.side)
        self._of(fill.instrument).apply_fill(
            str(side), Decimal(fill.qty), Decimal(fill.price), Decimal(fill.fee),
            str(fill.fee_currency))
        return True

    def _mark(self, instrument: str, price: Decimal, source: str) -> bool:
        entry = self.instruments.get(instrument)
        if entry is None:
            # Prices of instruments never traded are remembered too: the first fill's
            # unrealized PnL is then marked at the market, not at its own price.
            entry = self._of(instrument)
        entry.set_mark(price, source)
        return True

    def _remember(self, fill_id: str) -> None:
        self._seen.add(fill_id)
        self._seen_order.append(fill_id)
        if len(self._seen_order) > SEEN_FILLS:
            self._seen.discard(self._seen_order.popleft())

    # ------------------------------------------------------------ reporting

    def totals(self) -> dict[str, dict[str, Decimal | None]]:
        """Realized and unrealized PnL summed per quote currency (instruments without one
        under "?"); unrealized is None when some position has no mark yet."""
        out: dict[str, dict[str, Decimal | None]] = {}
        for entry in self.instruments.values():
            if entry.fills == 0:
                continue
            bucket = out.setdefault(entry.quote or "?", {"realized": ZERO, "unrealized": ZERO})
            bucket["realized"] = (bucket["realized"] or ZERO) + entry.realized
            unrealized = entry.unrealized
            if unrealized is None or bucket["unrealized"] is None:
                bucket["unrealized"] = None
            else:
                bucket["unrealized"] = bucket["unrealized"] + unrealized
        return out

    def fees(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for entry in self.instruments.values():
            for currency, amount in entry.fees.items():
                out[currency] = out.get(currency, ZERO) + amount
        return out

    def report(self) -> dict[str, Any]:
        """JSON-ready: `{"instruments": {...}, "totals": {ccy: {...}}, "fees": {ccy: amt}}`."""
        instruments = {}
        for name in sorted(self.instruments):
            e = self.instruments[name]
            if e.fills == 0:
                continue
            instruments[name] = {
                "position": _s(e.position), "avg_cost": _s(e.avg_cost),
                "realized_pnl": _s(e.realized), "unrealized_pnl": _s(e.unrealized),
                "mark": _s(e.mark), "mark_source": e.mark_source,
                "fees": {c: _s(a) for c, a in sorted(e.fees.items())},
                "fills": e.fills, "bought": _s(e.bought), "sold": _s(e.sold)}
        totals = {c: {k: _s(v) for k, v in t.items()} for c, t in sorted(self.totals().items())}
        return {"instruments": instruments, "totals": totals,
                "fees": {c: _s(a) for c, a in sorted(self.fees().items())},
                "fills": sum(e.fills for e in self.instruments.values())}


def _ticker_price(event: Any) -> Decimal | None:
    last = getattr(event, "last", None)
    if last is not None:
        return Decimal(last)
    bid, ask = getattr(event, "bid", None), getattr(event, "ask", None)
    if bid is not None and ask is not None:
        return (Decimal(bid) + Decimal(ask)) / 2
    return None


def _s(value: Decimal | None) -> str | None:
    """Plain notation, never an exponent; trailing zeros of a division trimmed."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)
