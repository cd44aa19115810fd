"""The paper exchange's books of account: cash per currency and positions per instrument.

This ledger is the ground truth end-to-end tests compare the platform against, so its rules
are simple and exact:

* a buy of `qty` at `price` adds `qty` to the instrument position and takes
  `price * qty + fee` from the quote currency; a sell does the opposite and also pays the fee;
* fees are charged in the quote currency (a negative fee is a rebate);
* positions may go negative (short) and cash may go negative: the paper venue extends
  unlimited credit, pre-trade limits belong to the Broker's position manager.

Cash and position quantities are exact. The average entry price and realised PnL of a partly
reduced position involve a division and are rounded to 28 significant digits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

from protocol.market import Side

ZERO = Decimal(0)
# Wide enough that products and sums of wire-sized decimals (<= 64 chars) never round.
EXACT = Context(prec=160)
# For the quotients only (average prices, the cost basis of a partial close).
ROUNDED = Context(prec=28)


@dataclass(slots=True)
class PositionState:
    """Net position in one instrument. `cost` is the signed cost basis of the open qty
    (qty * average entry price)."""

    qty: Decimal = ZERO
    cost: Decimal = ZERO
    realized_pnl: Decimal = ZERO

    @property
    def avg_price(self) -> Decimal | None:
        if self.qty == 0:
            return None
        return ROUNDED.divide(self.cost, self.qty)

    def apply(self, side: Side, qty: Decimal, price: Decimal) -> None:
        """Book one execution (fees are the ledger's business, not the position's)."""
        delta = qty if side is Side.BUY else -qty
        notional = EXACT.multiply(price, delta)
        if self.qty == 0 or (self.qty > 0) == (delta > 0):
            self.qty = EXACT.add(self.qty, delta)
            self.cost = EXACT.add(self.cost, notional)
            return
        closing = min(abs(delta), abs(self.qty))
        if closing == abs(self.qty):
            closed_cost = self.cost  # exact when the whole position closes
        else:
            closed_cost = ROUNDED.divide(EXACT.multiply(self.cost, closing), abs(self.qty))
        direction = 1 if self.qty > 0 else -1
        # Long: sold `closing` at price, bought it at closed_cost. Short: the mirror image.
        self.realized_pnl = EXACT.add(
            self.realized_pnl,
            EXACT.subtract(EXACT.multiply(price, closing * direction), closed_cost),
        )
        self.cost = EXACT.subtract(self.cost, closed_cost)
        self.qty = EXACT.add(self.qty, delta)
        if self.qty == 0:
            self.cost = ZERO
        elif abs(delta) > closing:  # flipped through zero: the rest opens at this price
            self.cost = EXACT.multiply(price, self.qty)


class Ledger:
    """Cash and positions of every account on the paper venue, including the house ones."""

    def __init__(self) -> None:
        self._cash: dict[str, dict[str, Decimal]] = {}
        self._positions: dict[str, dict[str, PositionState]] = {}
        self._fees: dict[str, dict[str, Decimal]] = {}

    def open_account(self, account: str, cash: Mapping[str, Decimal]) -> None:
        """Create `account` with starting `cash`. Opening an existing account is an error."""
        if account in self._cash:
            raise ValueError(f"account {account!r} already exists")
        self._cash[account] = dict(cash)
        self._positions[account] = {}
        self._fees[account] = {}

    def has_account(self, account: str) -> bool:
        return account in self._cash

    def accounts(self) -> list[str]:
        return list(self._cash)

    def apply_fill(
        self,
        account: str,
        instrument: str,
        quote: str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> None:
        """Book one execution of `account` with its fee (in `quote`)."""
        notional = EXACT.multiply(price, qty)
        cash = self._cash[account]
        change = -notional if side is Side.BUY else notional
        cash[quote] = EXACT.subtract(EXACT.add(cash.get(quote, ZERO), change), fee)
        fees = self._fees[account]
        fees[quote] = EXACT.add(fees.get(quote, ZERO), fee)
        self._positions[account].setdefault(instrument, PositionState()).apply(side, qty, price)

    def cash(self, account: str) -> dict[str, Decimal]:
        """Balance per currency (a copy)."""
        return dict(self._cash[account])

    def fees_paid(self, account: str) -> dict[str, Decimal]:
        """Total fees per currency since the account opened (a copy)."""
        return dict(self._fees[account])

    def positions(self, account: str) -> dict[str, PositionState]:
        """Position per instrument ever traded (copies)."""
        return {
            name: PositionState(p.qty, p.cost, p.realized_pnl)
            for name, p in self._positions[account].items()
        }

    def state(self, account: str) -> dict[str, Any]:
        """The account's books as JSON-ready data (decimals as strings): `restore` takes it."""
        return {
            "cash": {ccy: str(v) for ccy, v in self._cash[account].items()},
            "fees": {ccy: str(v) for ccy, v in self._fees[account].items()},
            "positions": {name: [str(p.qty), str(p.cost), str(p.realized_pnl)]
                          for name, p in self._positions[account].items()},
        }

    def restore(self, account: str, state: Mapping[str, Any]) -> None:
        """Put back an account `state()` described, replacing what it held."""
        self._cash[account] = {ccy: Decimal(v) for ccy, v in state["cash"].items()}
        self._fees[account] = {ccy: Decimal(v) for ccy, v in state["fees"].items()}
        self._positions[account] = {
            name: PositionState(Decimal(qty), Decimal(cost), Decimal(realized))
            for name, (qty, cost, realized) in state["positions"].items()}

    def position_qty(self, account: str, instrument: str) -> Decimal:
        state = self._positions[account].get(instrument)
        return state.qty if state is not None else ZERO
