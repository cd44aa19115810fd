"""Shape checks for a venue's decoded JSON, shared by the adapters' wire schemas.

Every check raises the calling adapter's own "malformed message" exception (`error`), so each
adapter keeps reporting bad frames in its own terms while the rules live in one place:

* numbers become `Decimal` from the exact wire text (`decode` parses JSON floats that way);
  a binary float or a bool is refused, so no price can pick up float rounding;
* a missing field or a non-object names the field and what was being read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

ErrorType = type[Exception]


def decode(text: str | bytes, error: ErrorType) -> Any:
    """Parse one frame's JSON text; JSON floats become `Decimal` from their exact text."""
    try:
        return json.loads(text, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"not JSON: {exc}") from exc


def to_decimal(value: object, what: str, error: ErrorType) -> Decimal:
    """A `Decimal` from a decoded JSON number (`Decimal` or `int`) or a numeric string;
    floats, bools, non-numbers and non-finite values are refused."""
    kind = type(value)
    if kind is Decimal:
        return value  # type: ignore[return-value]
    if kind is int:
        return Decimal(value)  # type: ignore[arg-type]
    if kind is str:
        try:
            result = Decimal(value)  # type: ignore[arg-type]
        except InvalidOperation as exc:
            raise error(f"{what} is not a number: {value!r}") from exc
        if not result.is_finite():
            raise error(f"{what} is not finite: {value!r}")
        return result
    raise error(f"{what} must be a decimal number, got {kind.__name__}: {value!r}")


def get(obj: Mapping[str, Any], key: str, what: str, error: ErrorType) -> Any:
    """`obj[key]`, or `error` naming the missing field (or the non-object)."""
    try:
        return obj[key]
    except KeyError:
        raise error(f"{what}: missing field {key!r}") from None
    except TypeError:
        raise error(f"{what}: expected an object, got {type(obj).__name__}") from None


def as_int(value: object, what: str, error: ErrorType, *, digit_strings: bool = False) -> int:
    """An `int` (never a bool); with `digit_strings`, a string of digits too."""
    if type(value) is int:
        return value
    if digit_strings and type(value) is str and value.isdigit():
        return int(value)
    raise error(f"{what} must be an integer, got {value!r}")
