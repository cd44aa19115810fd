"""Helpers to locate and read the shared recordings from tests.

The recordings sit beside the repository in ``../shared/data/exchanges`` (CI clones the
repo with ``shared/`` next to it); ``TRADEFLEET_EXCHANGE_DATA`` overrides the location.
They are read in place and never modified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from workers.broker.adapters.kraken.schemas import decode, parse_frame

T = TypeVar("T")


def exchange_data_dir() -> Path:
    """The shared exchange-data directory."""
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "exchanges"


def load(path: Path) -> Any:
    """Decode a JSON data file the way the adapter decodes frames (floats -> Decimal)."""
    return decode(path.read_text(encoding="utf-8"))


_RECEIVED = re.compile(r"^\d+(?:\.\d+)?: (.*)$")


def received_frames(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded frame)`` for every received line of a cryptofeed recording."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            match = _RECEIVED.match(line.rstrip("\n"))
            if match:
                yield number, decode(match.group(1))


def parsed_as(kind: type[T], raw: Any) -> T:
    """Parse a decoded spot frame and check it is of the expected kind."""
    frame = parse_frame(raw)
    assert isinstance(frame, kind), frame
    return frame
