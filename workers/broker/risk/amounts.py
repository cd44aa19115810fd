"""Exact decimal arithmetic for risk figures, and how amounts read in refusal messages."""

from __future__ import annotations

from decimal import Context, Decimal
from fractions import Fraction

EXACT = Context(prec=160)
"""Sums and products of wire-sized decimals never round in this context."""
_DISPLAY = Context(prec=28)  # a quotient shown to a human or sent on the wire

ZERO = Decimal(0)


def floor_to_lot(qty: Decimal, lot: Decimal) -> Decimal:
    """The largest whole multiple of `lot` not above `qty` (qty >= 0)."""
    return EXACT.multiply(EXACT.divide_int(qty, lot), lot)


def to_decimal(value: Fraction) -> Decimal:
    """`value` as a decimal: exact when it has a finite expansion, else 28 digits."""
    numerator = Decimal(value.numerator)
    denominator = Decimal(value.denominator)
    exact = EXACT.divide(numerator, denominator)
    if EXACT.multiply(exact, denominator) == numerator:
        return exact.normalize(EXACT) if exact != 0 else ZERO
    return _DISPLAY.divide(numerator, denominator)


def money(value: Decimal) -> str:
    """`12500` → `12,500.00`; more than two decimals are kept, never rounded away."""
    if value.as_tuple().exponent >= -2:  # type: ignore[operator]
        return f"{value:,.2f}"
    return f"{value:,f}"


def plain(value: Decimal) -> str:
    """A quantity, price or fraction without trailing zeros: `0.50` → `0.5`, `1E+2` → `100`."""
    if value == 0:
        return "0"
    return format(value.normalize(EXACT), "f")
