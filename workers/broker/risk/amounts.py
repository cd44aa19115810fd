"""Exact decimal arithmetic for risk figures, and how amounts read in refusal messages."""

from __future__ import annotations

from decimal import Context, Decimal, Inexact
from fractions import Fraction

EXACT = Context(prec=160)
"""Sums and products of wire-sized decimals never round in this context."""
_DISPLAY = Context(prec=28)  # a quotient shown to a human or sent on the wire
_EXACT_OR_RAISE = Context(prec=160, traps=[Inexact])

ZERO = Decimal(0)


def floor_to_lot(qty: Decimal, lot: Decimal) -> Decimal:
    """The largest whole multiple of `lot` not above `qty` (qty >= 0)."""
    return EXACT.multiply(EXACT.divide_int(qty, lot), lot)


def to_decimal(value: Fraction) -> Decimal:
    """`value` as a decimal: exact when it has a finite expansion (its reduced denominator
    has no prime factor but 2 and 5), else rounded to 28 significant digits.

    Whether the expansion is finite is read off the denominator, not off a division: a
    quotient rounded to the context's 160 digits and multiplied back rounds to the numerator
    again often enough (59999.896581… = 70199879/1170 does) to pass for exact, and such a
    160-digit price is longer than the wire accepts (`protocol.market.MAX_DECIMAL_CHARS`)."""
    numerator = Decimal(value.numerator)
    denominator = Decimal(value.denominator)
    if not _finite_expansion(value.denominator):
        return _DISPLAY.divide(numerator, denominator)
    try:
        exact = _EXACT_OR_RAISE.divide(numerator, denominator)
    except Inexact:  # finite, but longer than 160 digits: no wire value is
        return _DISPLAY.divide(numerator, denominator)
    return exact.normalize(EXACT) if exact != 0 else ZERO


def _finite_expansion(denominator: int) -> bool:
    """True when 1/denominator is a finite decimal."""
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    return denominator == 1


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
