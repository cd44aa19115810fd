"""Pre-trade risk limits of one account, and the engine that checks an order against them.

Pure: the engine reads the account's state and market prices handed to it and answers
`Accept` or `Refuse(code, message)`; it changes nothing and keeps no state but the limits,
which are swapped whole (`RiskEngine.update`) and apply from the next check on.

What the limits count — the worst case, so that no accepted order can take the account past a
limit whichever of its working orders fill:

* an instrument's position can reach anything between `filled − working sells` and
  `filled + working buys`; its **worst quantity** is the larger magnitude of the two ends;
* its **worst notional** is the larger value of the two ends. An end that working orders
  extend (longer after buys, shorter after sells) is valued at the highest of the mark and
  those orders' prices; an end they only reduce, at the mark. The mark is the reference price
  (mid, else last trade), else the position's average price; a market order is assumed to
  fill at the upper edge of the account's `price_band` around the reference price (at the
  reference price when no band is set). A take-profit sell on a long thus never inflates
  the long's value, and no fill can raise the worst case while prices stand still;
* **gross exposure** is the sum of the instruments' worst notionals;
* an instrument counts as an **open position** if it has a position or a working order.

A position limit refuses an order only if the order makes its measure worse *and* leaves it
above the limit: an order that reduces the worst case is always let through, so a position can
be closed after a limit was lowered below it. Notional limits are counted in the instruments'
quote currency and must all share the limits' `currency`: when a notional or loss limit is set,
an order on an instrument quoted in another currency is refused.

Per-trader-tag limits (`trader_tags`) apply on top of the account's: an order from a tagged
trader must pass both sets, each measured on the whole account.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Protocol

from protocol.errors import ErrorCode
from protocol.market import (
    Side,
    split_instrument,
)
from protocol.orders import ModifyOrder, NewOrder, OrderType

# The limit models are part of the wire contract (config, REST, control pipe): see protocol.risk.
from protocol.risk import Amount, BandFraction, LimitSet, OrderRate, RiskLimits, TraderTag  # noqa: F401
from workers.broker.risk.amounts import EXACT, ZERO, money, plain

# ---------------------------------------------------------------- what the engine reads


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """An order that may still trade. A modification on its way makes both its old and its
    new size and price possible until the venue answers (`alternative`)."""

    client_order_id: str
    instrument: str
    side: Side
    qty: Decimal
    filled: Decimal
    price: Decimal | None  # None: a market order
    alternative: tuple[Decimal, Decimal | None] | None = None  # (qty, price) of a modify

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled


@dataclass(frozen=True, slots=True)
class Holding:
    """A filled position: signed quantity and the average price of the open quantity."""

    qty: Decimal
    avg_price: Decimal | None


@dataclass(frozen=True, slots=True)
class AccountView:
    """What the engine needs to know about the account at the time of a check."""

    holdings: Mapping[str, Holding] = field(default_factory=dict)
    working: Sequence[WorkingOrder] = ()
    admitted_at: Sequence[int] = ()  # ns times of recently admitted orders, oldest first
    daily_loss: Decimal = ZERO  # today's realized loss net of fees (> 0 is a loss)
    # Which switch stops trading and why ("the account kill switch (ops: runaway algo)"),
    # None when trading is allowed.
    kill_switch: str | None = None


class PriceSource(Protocol):
    def reference_price(self, instrument: str) -> Decimal | None:
        """Mid when both sides are quoted, else the last trade price, else None."""


@dataclass(frozen=True, slots=True)
class Accept:
    """The order is within every limit."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """The order breaks `code`'s limit; `message` is one sentence naming it and the numbers."""

    code: ErrorCode
    message: str


ACCEPT = Accept()
Verdict = Accept | Refuse


class _NoPrice(Exception):
    """An exposure cannot be valued: no mark, average price or order price is known."""

    def __init__(self, instrument: str) -> None:
        super().__init__(instrument)
        self.instrument = instrument


# ---------------------------------------------------------------- exposure


@dataclass(slots=True)
class _Exposure:
    """The range a position can reach if any of its working orders fill, and its prices."""

    low: Decimal = ZERO  # filled − working sells
    high: Decimal = ZERO  # filled + working buys
    mark: Decimal | None = None  # reference price, else the position's average price
    buy_price: Decimal | None = None  # highest price a working buy may fill at
    sell_price: Decimal | None = None  # highest price a working sell may fill at

    @property
    def worst_qty(self) -> Decimal:
        return max(abs(self.low), abs(self.high))

    @property
    def is_open(self) -> bool:
        return self.low != 0 or self.high != 0

    def notional(self, instrument: str) -> Decimal:
        """Value of the worst end of the range. An end on the position's own side of zero
        that orders extend (long after buys, short after sells) is valued at the highest of
        the mark and those orders' prices; an end the orders only reduce, at the mark."""
        long_end = self._value(instrument, self.high, self.buy_price if self.high > 0 else None)
        short_end = self._value(instrument, self.low, self.sell_price if self.low < 0 else None)
        return max(long_end, short_end)

    def _value(self, instrument: str, qty: Decimal, order_price: Decimal | None) -> Decimal:
        if qty == 0:
            return ZERO
        prices = [p for p in (self.mark, order_price) if p is not None]
        if not prices:
            raise _NoPrice(instrument)
        return EXACT.multiply(abs(qty), max(prices))


def _highest(current: Decimal | None, price: Decimal | None) -> Decimal | None:
    if price is None:
        return current
    return price if current is None or price > current else current


def _exposures(
    view: AccountView,
    orders: Sequence[WorkingOrder],
    market: PriceSource,
    band: Decimal | None,
) -> dict[str, _Exposure]:
    out: dict[str, _Exposure] = {}

    def of(instrument: str) -> _Exposure:
        exposure = out.get(instrument)
        if exposure is None:
            exposure = out[instrument] = _Exposure(mark=market.reference_price(instrument))
            holding = view.holdings.get(instrument)
            if holding is not None and holding.qty != 0:
                exposure.low = exposure.high = holding.qty
                if exposure.mark is None:
                    exposure.mark = holding.avg_price
        return exposure

    for instrument, holding in view.holdings.items():
        if holding.qty != 0:
            of(instrument)
    for order in orders:
        exposure = of(order.instrument)
        remaining = order.remaining
        prices = [order.price]
        if order.alternative is not None:
            remaining = max(remaining, order.alternative[0] - order.filled)
            prices.append(order.alternative[1])
        for price in prices:
            fill_price = (
                price if price is not None else _market_fill_price(market, order.instrument, band)
            )
            if order.side is Side.BUY:
                exposure.buy_price = _highest(exposure.buy_price, fill_price)
            else:
                exposure.sell_price = _highest(exposure.sell_price, fill_price)
        if order.side is Side.BUY:
            exposure.high = EXACT.add(exposure.high, remaining)
        else:
            exposure.low = EXACT.subtract(exposure.low, remaining)
    return out


def _market_fill_price(
    market: PriceSource, instrument: str, band: Decimal | None
) -> Decimal | None:
    reference = market.reference_price(instrument)
    if reference is None or band is None:
        return reference
    return EXACT.multiply(reference, EXACT.add(Decimal(1), band))


@dataclass(frozen=True, slots=True)
class _Totals:
    exposures: dict[str, _Exposure]

    @property
    def open_count(self) -> int:
        return sum(1 for e in self.exposures.values() if e.is_open)

    def get(self, instrument: str) -> _Exposure:
        return self.exposures.get(instrument) or _Exposure()

    def gross(self) -> Decimal:
        total = ZERO
        for instrument, exposure in self.exposures.items():
            total = EXACT.add(total, exposure.notional(instrument))
        return total


# ---------------------------------------------------------------- the engine


@dataclass(frozen=True, slots=True)
class _Proposal:
    """What one check is about, with the figures every rule reads."""

    instrument: str
    qty: Decimal  # the order's total quantity
    band_price: Decimal | None  # a new limit price to hold against the band, if any
    value_price: Decimal | None  # the price the order is valued at; None: unknown
    is_new: bool  # a new order, which counts against the order rate
    reference: Decimal | None
    before: _Totals
    after: _Totals


class RiskEngine:
    """Checks one order at a time against the current limits. Holds no account state."""

    def __init__(self, limits: RiskLimits) -> None:
        self.update(limits)

    def update(self, limits: RiskLimits) -> None:
        """Use `limits` from the next check on."""
        self.limits = limits
        sets = (limits, *limits.trader_tags.values())
        self.restricts = any(_restricts(s) for s in sets)
        """False when no limit is set anywhere: only a kill switch can refuse, and the
        account's state need not be gathered for a check."""
        self.longest_rate_window_ns = max(
            (s.max_order_rate.window_ns for s in sets if s.max_order_rate is not None), default=0)
        """How far back the order-rate limits look (0 without any)."""

    def check(
        self,
        order: NewOrder,
        state: AccountView,
        market: PriceSource,
        now: int,
        *,
        trader_tag: str | None = None,
    ) -> Verdict:
        """Would `order`, added to the account's working orders, stay within every limit?
        `now` is ns since the epoch (the order-rate window ends there)."""
        price = order.price if order.order_type is OrderType.LIMIT else None
        candidate = WorkingOrder(
            order.client_order_id, order.instrument, order.side, order.qty, ZERO, price
        )
        return self._check(
            state,
            market,
            now,
            trader_tag,
            instrument=order.instrument,
            qty=order.qty,
            band_price=price,
            price=price,
            is_new=True,
            working_after=[*state.working, candidate],
        )

    def check_modify(
        self,
        modify: ModifyOrder,
        state: AccountView,
        market: PriceSource,
        now: int,
        *,
        trader_tag: str | None = None,
    ) -> Verdict:
        """Would the account stay within its limits whether the venue applies `modify` to the
        working order or not? An unknown order passes: the order tracker refuses it."""
        current = next(
            (w for w in state.working if w.client_order_id == modify.client_order_id), None
        )
        if current is None:
            return ACCEPT
        qty = modify.qty if modify.qty is not None else current.qty
        price = modify.price if modify.price is not None else current.price
        changed = replace(current, alternative=(qty, price))
        return self._check(
            state,
            market,
            now,
            trader_tag,
            instrument=current.instrument,
            qty=qty,
            band_price=modify.price,
            price=price,
            is_new=False,
            working_after=[changed if w is current else w for w in state.working],
        )

    # ------------------------------------------------------------ the rules, in order

    def _check(
        self,
        state: AccountView,
        market: PriceSource,
        now: int,
        trader_tag: str | None,
        *,
        instrument: str,
        qty: Decimal,
        band_price: Decimal | None,
        price: Decimal | None,
        is_new: bool,
        working_after: Sequence[WorkingOrder],
    ) -> Verdict:
        if state.kill_switch is not None:
            return Refuse(
                ErrorCode.KILL_SWITCH,
                f"trading is stopped by {state.kill_switch}; new orders are refused until an "
                "operator clears it",
            )
        if not self.restricts:
            return ACCEPT
        limits = self.limits
        sets: list[tuple[LimitSet, str]] = [(limits, "")]
        tag_limits = limits.trader_tags.get(trader_tag) if trader_tag is not None else None
        if tag_limits is not None:
            sets.append((tag_limits, f" of trader tag {trader_tag}"))
        band = limits.price_band
        try:
            proposal = _Proposal(
                instrument=instrument,
                qty=qty,
                band_price=band_price,
                value_price=price
                if price is not None
                else _market_fill_price(market, instrument, band),
                is_new=is_new,
                reference=market.reference_price(instrument),
                before=_Totals(_exposures(state, state.working, market, band)),
                after=_Totals(_exposures(state, working_after, market, band)),
            )
            for limit_set, label in sets:
                refusal = self._check_set(limit_set, label, proposal, state, now)
                if refusal is not None:
                    return refusal
        except _NoPrice as exc:
            return Refuse(
                ErrorCode.RISK_NO_PRICE,
                f"no trade or quote of {exc.instrument} has been seen yet, so its exposure "
                "cannot be valued against the limits",
            )
        return ACCEPT

    def _check_set(
        self, limits: LimitSet, label: str, p: _Proposal, state: AccountView, now: int
    ) -> Refuse | None:
        instrument = p.instrument
        currency = self.limits.currency
        allowed = limits.allowed_instruments
        if allowed is not None and instrument not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            return Refuse(
                ErrorCode.RISK_INSTRUMENT_NOT_ALLOWED,
                f"{instrument} is not in allowed_instruments{label} ({listed})",
            )
        counts_value = any(
            v is not None
            for v in (
                limits.max_position_notional,
                limits.max_gross_exposure,
                limits.max_order_notional,
                limits.daily_loss_limit,
            )
        )
        quote = split_instrument(instrument)[1]
        if counts_value and quote != currency:
            return Refuse(
                ErrorCode.RISK_INSTRUMENT_NOT_ALLOWED,
                f"{instrument} is quoted in {quote}, but the notional limits{label} are counted "
                f"in {currency}",
            )

        if limits.price_band is not None and p.band_price is not None:
            if p.reference is None:
                return Refuse(
                    ErrorCode.RISK_NO_PRICE,
                    f"no trade or quote of {instrument} has been seen yet to check price_band"
                    f"{label} against",
                )
            distance = EXACT.divide(abs(EXACT.subtract(p.band_price, p.reference)), p.reference)
            if distance > limits.price_band:
                return Refuse(
                    ErrorCode.RISK_PRICE_BAND,
                    f"price {plain(p.band_price)} is {_percent(distance)} away from the "
                    f"{instrument} reference price {plain(p.reference)}, beyond price_band"
                    f"{label} {_percent(limits.price_band)}",
                )

        if limits.max_order_notional is not None:
            if p.value_price is None:
                raise _NoPrice(instrument)
            notional = EXACT.multiply(p.qty, p.value_price)
            if notional > limits.max_order_notional:
                return Refuse(
                    ErrorCode.RISK_ORDER_NOTIONAL,
                    f"order notional {money(notional)} {currency} exceeds max_order_notional"
                    f"{label} {money(limits.max_order_notional)}",
                )

        rate = limits.max_order_rate
        if rate is not None and p.is_new:
            recent = _admitted_since(state.admitted_at, now - rate.window_ns, rate.max_orders)
            if recent >= rate.max_orders:
                return Refuse(
                    ErrorCode.RISK_ORDER_RATE,
                    f"{recent} orders were accepted in the last {plain(rate.window_seconds)} s, "
                    f"the most max_order_rate{label} allows "
                    f"({rate.max_orders} per {plain(rate.window_seconds)} s)",
                )

        before, after = p.before, p.after
        was, will = before.get(instrument), after.get(instrument)
        if limits.daily_loss_limit is not None and state.daily_loss >= limits.daily_loss_limit:
            adds_risk = will.worst_qty > was.worst_qty or after.open_count > before.open_count
            if adds_risk:
                return Refuse(
                    ErrorCode.RISK_DAILY_LOSS,
                    f"today's loss {money(state.daily_loss)} {currency} has reached "
                    f"daily_loss_limit{label} {money(limits.daily_loss_limit)}; only orders "
                    "that reduce a position are accepted",
                )

        if limits.max_open_positions is not None:
            count, was_count = after.open_count, before.open_count
            if count > limits.max_open_positions and count > was_count:
                return Refuse(
                    ErrorCode.RISK_MAX_POSITIONS,
                    f"instruments with a position or working order would number {count}, "
                    f"above max_open_positions{label} {limits.max_open_positions}",
                )

        max_qty = limits.max_position_qty.get(instrument)
        if max_qty is not None and will.worst_qty > max_qty and will.worst_qty > was.worst_qty:
            return Refuse(
                ErrorCode.RISK_POSITION_SIZE,
                f"{instrument} position could reach {plain(_signed_worst(will))} if working orders "
                f"fill, beyond max_position_qty{label} {plain(max_qty)}",
            )

        if limits.max_position_notional is not None:
            value, was_value = will.notional(instrument), was.notional(instrument)
            if value > limits.max_position_notional and value > was_value:
                return Refuse(
                    ErrorCode.RISK_POSITION_NOTIONAL,
                    f"{instrument} position could reach {money(value)} {currency} if working "
                    f"orders fill, above max_position_notional{label} "
                    f"{money(limits.max_position_notional)}",
                )

        if limits.max_gross_exposure is not None:
            gross, was_gross = after.gross(), before.gross()
            if gross > limits.max_gross_exposure and gross > was_gross:
                return Refuse(
                    ErrorCode.RISK_GROSS_EXPOSURE,
                    f"gross exposure could reach {money(gross)} {currency} if working orders "
                    f"fill, above max_gross_exposure{label} {money(limits.max_gross_exposure)}",
                )
        return None


def _signed_worst(exposure: _Exposure) -> Decimal:
    return exposure.high if abs(exposure.high) >= abs(exposure.low) else exposure.low


def _percent(fraction: Decimal) -> str:
    return f"{EXACT.multiply(fraction, Decimal(100)):.2f}%"


def worst_case(
    state: AccountView, market: PriceSource, band: Decimal | None
) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """Per instrument: the lowest and highest position reachable if working orders fill,
    and the worst notional — the figures the limits are checked on (for status pages)."""
    return {
        instrument: (e.low, e.high, e.notional(instrument))
        for instrument, e in _exposures(state, state.working, market, band).items()
    }


def _admitted_since(admitted_at: Sequence[int], since: int, enough: int) -> int:
    """How many admissions (oldest first) came after `since`, counted from the newest and no
    further than `enough`: the check costs the limit, not the account's whole history (at a
    few hundred orders a second the rate memory holds tens of thousands of times)."""
    count = 0
    for at in reversed(admitted_at):
        if at <= since or count >= enough:
            break
        count += 1
    return count


def _restricts(limits: LimitSet) -> bool:
    """Does this set hold any limit? (An empty `allowed_instruments` allows nothing: a limit.)"""
    return any(getattr(limits, name) not in (None, {}) for name in LimitSet.model_fields)
