"""Kraken's JSON conventions that ``schemas.py`` does not cover: outgoing frames and times.

* :func:`encode_frame` writes a request as JSON with every :class:`~decimal.Decimal` as a
  JSON *number* spelled exactly as the decimal is (``0.00100000``, never ``0.001`` or
  ``1e-3``) -- Kraken's v2 requests take numbers, and a float would round them.
* :func:`rfc3339_ns` / :func:`ns_to_rfc3339` convert Kraken's RFC 3339 timestamps
  (up to 9 fractional digits) to and from integer nanoseconds without a float.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workers.broker.adapters.kraken.errors import MalformedMessage


def encode_frame(value: Mapping[str, Any]) -> str:
    """Compact JSON text of one outgoing frame. Raises ``TypeError`` for floats (inexact)
    and for values JSON cannot carry."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"cannot send a non-finite number: {value}")
        out.append(format(value, "f"))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} in a Kraken frame")


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (``2023-09-22T10:33:05.709950Z``).

    Raises :class:`MalformedMessage` for anything else.
    """
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise MalformedMessage(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(group) for group in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        datetime(year, month, day, hour, minute, min(second, 59))  # validates the calendar date
    except ValueError as exc:
        raise MalformedMessage(f"not a valid date: {text!r}") from exc
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0") or 0)


def ns_to_rfc3339(ns: int) -> str:
    """RFC 3339 UTC text with microseconds, as Kraken writes execution timestamps."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def unix_seconds_ns(value: object) -> int:
    """Nanoseconds of a REST time field (``"1705259439.563000"`` or a number of seconds).

    Raises :class:`MalformedMessage` when the value is not a non-negative decimal.
    """
    try:
        seconds = Decimal(str(value))
    except ArithmeticError as exc:
        raise MalformedMessage(f"not a unix time: {value!r}") from exc
    if not seconds.is_finite() or seconds < 0:
        raise MalformedMessage(f"not a unix time: {value!r}")
    return int(seconds * 1_000_000_000)
