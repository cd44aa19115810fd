"""One codec for every frame: orjson, with exact decimals carried as strings."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel


class CodecError(ValueError):
    """The bytes are not a JSON object. The sender must fix its input; retrying will not help."""


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(value: BaseModel | dict[str, Any] | list[Any]) -> bytes:
    """Serialise a model, dict or list to compact JSON bytes. Decimals become strings."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(value, default=_default)


def decode(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """Parse one JSON object. Raises `CodecError` for anything that is not a JSON object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CodecError("expected a JSON object")
    return value
