"""aiohttp building blocks: coded JSON errors, bearer-token checks, validated request bodies.

Every error a client sees is `{"error": {"code", "message", "field"}}` with the right status;
no traceback ever reaches a client.
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.errors import ErrorCode

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1 << 20


class ApiError(web.HTTPException):
    """An HTTP error carrying a coded JSON body. Raise it from handlers."""

    def __init__(self, status: int, code: ErrorCode, message: str, field: str | None = None):
        self.status_code = status
        body: dict[str, Any] = {"code": code.value, "message": message}
        if field is not None:
            body["field"] = field
        super().__init__(text=encode({"error": body}).decode(), content_type="application/json")


def json_response(data: BaseModel | dict[str, Any] | list[Any], status: int = 200) -> web.Response:
    return web.Response(body=encode(data), status=status, content_type="application/json")


def field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",))


def validation_problem(exc: ValidationError) -> tuple[ErrorCode, str, str]:
    """Code, sentence and field of the first pydantic error (for any transport)."""
    err = exc.errors()[0]
    path = field_path(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return ErrorCode.UNKNOWN_FIELD, f"unknown field '{path}'", path
    if kind == "missing":
        return ErrorCode.MISSING_FIELD, f"missing field '{path}'", path
    return ErrorCode.INVALID_FIELD, f"invalid field '{path}': {err.get('msg')}", path


def validation_error(exc: ValidationError) -> ApiError:
    """Translate the first pydantic error into a coded 400 naming the field."""
    return ApiError(400, *validation_problem(exc))


async def read_model(request: web.Request, model: type[M]) -> M:
    """Parse and validate the JSON body, raising coded 400s for anything wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, ErrorCode.OVERSIZE, f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    try:
        data = decode(raw) if raw else {}
    except CodecError as exc:
        raise ApiError(400, ErrorCode.BAD_JSON, str(exc)) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return None


def tokens_equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_token(request: web.Request, *expected: str) -> None:
    """Raise 401 unless the request's bearer token equals one of `expected`."""
    given = bearer(request)
    if given is None:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing bearer token")
    if not any(tokens_equal(given, token) for token in expected if token):
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "invalid token")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn every failure into a coded JSON error; log unexpected ones, never leak a traceback."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.INVALID_FIELD,
                413: ErrorCode.OVERSIZE}.get(exc.status_code, ErrorCode.INVALID_FIELD)
        raise ApiError(exc.status_code, code, exc.reason or "request refused") from exc
    except Exception:
        log.exception("unhandled error", path=request.path, method=request.method)
        raise ApiError(500, ErrorCode.INTERNAL, "internal error; see the server log") from None


async def listen(runner: web.AppRunner, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve `runner` (already set up) on `host:port`; return the port bound (the OS picks
    one for port 0)."""
    site = web.TCPSite(runner, host, port)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def make_app(**kwargs: Any) -> web.Application:
    """An aiohttp application with the coded-error middleware installed."""
    return web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES,
                           **kwargs)
