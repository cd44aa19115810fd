"""The venue-neutral JSON shape checks both Kraken adapters build on."""

from __future__ import annotations

from decimal import Decimal

import pytest

from workers.broker.adapters import wirecheck


class Bad(ValueError):
    """Stands for an adapter's own malformed-message error."""


def test_numbers_keep_their_exact_text_and_floats_are_refused() -> None:
    assert wirecheck.decode('{"p": 0.00100000}', Bad)["p"].as_tuple().exponent == -8
    assert wirecheck.to_decimal(Decimal("1.50"), "price", Bad) == Decimal("1.50")
    assert wirecheck.to_decimal(7, "qty", Bad) == 7
    assert wirecheck.to_decimal("2.5", "qty", Bad) == Decimal("2.5")
    for value in (1.5, True, None, "abc", "NaN", "inf"):
        with pytest.raises(Bad, match="price"):
            wirecheck.to_decimal(value, "price", Bad)
    with pytest.raises(Bad, match="not JSON"):
        wirecheck.decode("{oops", Bad)


def test_fields_and_integers_name_what_is_wrong() -> None:
    assert wirecheck.get({"a": 1}, "a", "frame", Bad) == 1
    with pytest.raises(Bad, match="frame: missing field 'b'"):
        wirecheck.get({"a": 1}, "b", "frame", Bad)
    with pytest.raises(Bad, match="expected an object, got list"):
        wirecheck.get([], "a", "frame", Bad)  # type: ignore[arg-type]
    assert wirecheck.as_int(3, "seq", Bad) == 3
    assert wirecheck.as_int("42", "seq", Bad, digit_strings=True) == 42
    for value in ("42", True, 1.0):
        with pytest.raises(Bad, match="seq must be an integer"):
            wirecheck.as_int(value, "seq", Bad)
