"""The Kraken Futures REST client: rate limit, sign, send, and convert every failure.

`admit` consults the `DerivativesRateLimiter` and refuses locally, with the numbers, before
the venue would answer ``apiLimitExceeded``; cancels may use the reserve that other calls
leave free. After the venue does answer ``apiLimitExceeded`` (another client may share the
key), non-cancel calls are refused locally for one budget window.

`send` signs the call (``APIKey``, ``Nonce``, ``Authent`` over the exact URL-encoded
parameters), sends it and returns the decoded JSON body (prices as `Decimal`). Every
aiohttp error, timeout, HTTP failure and ``{"result": "error"}`` answer leaves this module
as an `AdapterError` (see `rejections`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from yarl import URL

from workers.broker.adapters.base import FatalAdapterError, RetryableAdapterError
from workers.broker.adapters.kraken_futures.errors import InvalidSecret, MalformedMessage
from workers.broker.adapters.kraken_futures.ratelimit import DerivativesRateLimiter
from workers.broker.adapters.kraken_futures.rejections import (
    CANCELS,
    error_for_http,
    error_for_result,
    local_refusal,
)
from workers.broker.adapters.kraken_futures.requests import (
    NonceSource,
    RestCall,
    signed_headers,
)
from workers.broker.adapters.kraken_futures.schemas import decode

log = structlog.get_logger(__name__)


class FuturesRestClient:
    """Signed REST calls for one API key. One instance per adapter; not thread-safe."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        api_secret: str,
        limiter: DerivativesRateLimiter,
        monotonic: Callable[[], float],
        clock: Callable[[], int],
        timeout_s: float,
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._api_key = api_key
        self._api_secret = api_secret
        self._limiter = limiter
        self._monotonic = monotonic
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._nonces = NonceSource(clock() // 1_000_000)
        self._venue_cooldown_until = 0.0

    def admit(self, call: RestCall, *, client_order_id: str | None = None) -> None:
        """Spend `call`'s cost units, or raise the local refusal. Public calls are free."""
        if not call.signed:
            return
        now = self._monotonic()
        if call.endpoint not in CANCELS and now < self._venue_cooldown_until:
            raise local_refusal(
                call,
                cost=0,
                spent=self._limiter.budget,
                limit=self._limiter.budget,
                reserve=self._limiter.reserve,
                window=self._limiter.window,
                retry_after=self._venue_cooldown_until - now,
                client_order_id=client_order_id,
            )
        admission = self._limiter.request(call.endpoint, now, last_fill_time=call.last_fill_time)
        if not admission.admitted:
            raise local_refusal(
                call,
                cost=admission.cost,
                spent=admission.spent,
                limit=admission.limit,
                reserve=self._limiter.reserve,
                window=self._limiter.window,
                retry_after=admission.retry_after,
                client_order_id=client_order_id,
            )

    async def call(self, call: RestCall, *, client_order_id: str | None = None) -> Any:
        """`admit` then `send`."""
        self.admit(call, client_order_id=client_order_id)
        return await self.send(call, client_order_id=client_order_id)

    async def send(self, call: RestCall, *, client_order_id: str | None = None) -> Any:
        """Send an admitted call; the decoded body of a successful answer.

        Raises `OrderRejectedError` (a refused order call), `RetryableAdapterError`
        (transport, timeout, 5xx, transient venue errors) or `FatalAdapterError`."""
        post_data = call.post_data
        headers: dict[str, str] = {}
        if call.signed:
            try:
                headers = signed_headers(
                    call,
                    self._api_key,
                    self._api_secret,
                    self._nonces.next(self._clock() // 1_000_000),
                )
            except InvalidSecret as exc:
                raise FatalAdapterError(f"{exc}; fix the account's API secret") from exc
        url = self._base_url + call.path
        data: str | None = None
        if call.method == "GET":
            if post_data:
                url += "?" + post_data
        else:
            data = post_data
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        what = f"{call.method} {call.endpoint}"
        try:
            async with self._session.request(
                call.method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise RetryableAdapterError(
                f"{what}: Kraken Futures did not answer within {self._timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise RetryableAdapterError(f"{what}: {type(exc).__name__}: {exc}") from exc
        try:
            answer = decode(body)
        except MalformedMessage:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(answer, dict) and answer.get("result") == "error":
            failure = error_for_result(call.endpoint, str(error), client_order_id=client_order_id)
            if error == "apiLimitExceeded":
                self._venue_cooldown_until = self._monotonic() + self._limiter.window
                log.warning("kraken_futures_venue_rate_limited", endpoint=call.endpoint)
            raise failure
        http_failure = error_for_http(call.endpoint, status, str(error) if error else None)
        if http_failure is not None:
            raise http_failure
        if not isinstance(answer, dict):
            raise FatalAdapterError(f"{what}: Kraken Futures answered something not JSON")
        return answer
