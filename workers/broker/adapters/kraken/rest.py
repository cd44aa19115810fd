"""Kraken spot private REST: signed calls, with every failure converted at this boundary.

Each call is ``POST {base}/0/private/<Endpoint>`` with a form body that starts with an
increasing ``nonce``, the ``API-Key`` header and the ``API-Sign`` signature of
``signing.py``. Kraken answers ``{"error": [...], "result": ...}`` with HTTP 200 even
for refusals; ``rejections.error_for_kraken`` decides what an error string means.
Transport trouble, timeouts, 5xx and non-JSON answers (Cloudflare pages) are retryable.

Calls are serialised: Kraken rejects a nonce lower than one it has already seen, and two
concurrent requests may arrive in either order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from pydantic import SecretStr

from workers.broker.adapters.base import FatalAdapterError, RetryableAdapterError
from workers.broker.adapters.kraken.errors import InvalidSecret, MalformedMessage
from workers.broker.adapters.kraken.rejections import error_for_kraken
from workers.broker.adapters.kraken.schemas import decode
from workers.broker.adapters.kraken.signing import encode_post_data, sign_request

PRIVATE_PREFIX = "/0/private/"
TRADES_PAGE = 50  # TradesHistory returns at most this many trades per call


class KrakenRestClient:
    """Signed private REST calls for one API key. The session belongs to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: SecretStr,
        api_secret: SecretStr,
        *,
        timeout_s: float,
        nonce_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._secret = api_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._nonce_clock = nonce_clock
        self._last_nonce = 0
        self._lock = asyncio.Lock()
        self.calls = 0

    def _nonce(self) -> int:
        # Microseconds since the epoch: increasing across restarts of the process too.
        self._last_nonce = max(self._last_nonce + 1, self._nonce_clock() // 1000)
        return self._last_nonce

    async def call(
        self,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        *,
        client_order_id: str | None = None,
    ) -> Any:
        """The ``result`` of one private call. Raises ``RetryableAdapterError``,
        ``FatalAdapterError`` or ``OrderRejectedError`` (see the module docstring)."""
        path = PRIVATE_PREFIX + endpoint
        what = f"REST {endpoint}"
        async with self._lock:
            nonce = self._nonce()
            body = encode_post_data({"nonce": nonce, **(params or {})})
            try:
                signature = sign_request(self._secret.get_secret_value(), path, nonce, body)
            except InvalidSecret as exc:
                raise FatalAdapterError(f"{what}: {exc}") from exc
            headers = {
                "API-Key": self._key.get_secret_value(),
                "API-Sign": signature,
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            }
            self.calls += 1
            try:
                async with self._session.post(
                    self._base + path, data=body, headers=headers, timeout=self._timeout
                ) as response:
                    raw = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError as exc:
                raise RetryableAdapterError(f"{what}: no answer within {self._timeout_s}s") from exc
            except aiohttp.ClientError as exc:
                raise RetryableAdapterError(f"{what}: {type(exc).__name__}: {exc}") from exc
        return _result(what, status, raw, retry_after, client_order_id)

    # ------------------------------------------------------------ endpoints

    async def websockets_token(self) -> str:
        """A token for the authenticated WebSocket (use it within 15 minutes)."""
        result = await self.call("GetWebSocketsToken")
        token = result.get("token") if isinstance(result, dict) else None
        if not isinstance(token, str) or not token:
            raise FatalAdapterError("REST GetWebSocketsToken: the answer holds no token")
        return token

    async def open_orders(self) -> dict[str, Any]:
        """``{txid: order}`` of every open order."""
        result = await self.call("OpenOrders")
        return _mapping(result.get("open") if isinstance(result, dict) else None, "OpenOrders")

    async def query_orders(self, txids: list[str]) -> dict[str, Any]:
        """``{txid: order}`` of the given orders (open or closed), 50 at a time."""
        orders: dict[str, Any] = {}
        for start in range(0, len(txids), 50):
            chunk = ",".join(txids[start : start + 50])
            result = await self.call("QueryOrders", {"txid": chunk, "trades": "true"})
            orders.update(_mapping(result, "QueryOrders"))
        return orders

    async def trades_history(self, start_s: float) -> dict[str, Any]:
        """``{txid: trade}`` of every trade after ``start_s`` (unix seconds), all pages."""
        trades: dict[str, Any] = {}
        offset = 0
        while True:
            result = await self.call(
                "TradesHistory", {"start": f"{start_s:.6f}", "ofs": str(offset)}
            )
            if not isinstance(result, dict):
                raise RetryableAdapterError("REST TradesHistory: unexpected answer")
            page = _mapping(result.get("trades"), "TradesHistory")
            trades.update(page)
            count = result.get("count")
            offset += len(page)
            if not page or not isinstance(count, int) or offset >= count:
                return trades

    async def balance(self) -> dict[str, Any]:
        """``{asset code: amount}`` as Kraken spells the codes."""
        return _mapping(await self.call("Balance"), "Balance")

    async def add_order(self, params: Mapping[str, str], *, client_order_id: str) -> str:
        """Place an order by REST; returns its txid."""
        result = await self.call("AddOrder", params, client_order_id=client_order_id)
        txids = result.get("txid") if isinstance(result, dict) else None
        if not isinstance(txids, list) or not txids:
            raise RetryableAdapterError("REST AddOrder: the answer holds no txid")
        return str(txids[0])

    async def cancel_order(self, params: Mapping[str, str], *, client_order_id: str) -> int:
        """Cancel by REST; returns how many orders Kraken cancelled."""
        result = await self.call("CancelOrder", params, client_order_id=client_order_id)
        count = result.get("count") if isinstance(result, dict) else None
        return count if isinstance(count, int) else 0


def _result(
    what: str, status: int, raw: bytes, retry_after: str | None, client_order_id: str | None
) -> Any:
    delay = _seconds(retry_after)
    if status >= 500 or status in (408, 429):
        raise RetryableAdapterError(f"{what}: HTTP {status}", retry_after=delay)
    try:
        body = decode(raw)
    except MalformedMessage as exc:
        raise RetryableAdapterError(f"{what}: HTTP {status} with a non-JSON body") from exc
    errors = body.get("error") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        if status >= 400:
            raise FatalAdapterError(f"{what}: HTTP {status}")
        raise FatalAdapterError(f"{what}: the answer is not a Kraken REST response")
    if errors:
        raise error_for_kraken(
            str(errors[0]), what=what, client_order_id=client_order_id, retry_after=delay
        )
    if status >= 400:
        raise FatalAdapterError(f"{what}: HTTP {status}")
    return body.get("result")


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RetryableAdapterError(f"REST {what}: the answer holds no object")
    return value


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None
