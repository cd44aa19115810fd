"""Cash per currency from a Kraken Futures ``GET accounts`` answer. Pure.

The answer holds several wallets keyed by name (PROTOCOL_NOTES §8 and the venue's
"get wallets" page): ``flex`` (type ``multiCollateralMarginAccount``, per-currency
``quantity``) backs the PF contracts; one ``marginAccount`` per inverse contract family
(``fi_xbtusd``…, per-currency ``balances``) backs the PI/FI contracts; ``cash``
(``cashAccount``) holds funds not yet transferred for trading.

What this session can trade with is the margin wallets, so the result adds up the flex and
margin wallets per currency and leaves the cash wallet out.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.products import canonical_currency
from workers.broker.adapters.kraken_futures.schemas import to_decimal


def cash_from_accounts(answer: Any) -> dict[str, Decimal]:
    """Currency -> amount over the trading wallets. Raises `MalformedMessage`."""
    accounts = answer.get("accounts") if isinstance(answer, Mapping) else None
    if not isinstance(accounts, Mapping):
        raise MalformedMessage("accounts answer without an accounts object")
    cash: dict[str, Decimal] = {}

    def add(code: object, amount: object) -> None:
        if not isinstance(code, str):
            raise MalformedMessage(f"currency code must be a string, got {code!r}")
        currency = canonical_currency(code)
        cash[currency] = cash.get(currency, Decimal(0)) + to_decimal(amount, currency)

    for wallet in accounts.values():
        if not isinstance(wallet, Mapping):
            continue
        kind = wallet.get("type")
        if kind == "multiCollateralMarginAccount":
            for code, entry in (wallet.get("currencies") or {}).items():
                add(code, entry.get("quantity") if isinstance(entry, Mapping) else None)
        elif kind == "marginAccount":
            for code, amount in (wallet.get("balances") or {}).items():
                add(code, amount)
    return cash
