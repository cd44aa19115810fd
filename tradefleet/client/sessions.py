"""`POST {manager}/v1/sessions`: ask a MarketManager for a session (new or resumed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tradefleet.client.errors import AuthError, ConnectionLost, RequestFailed


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """Where to connect and with what: the MarketManager's answer."""

    session_id: str
    session_token: str
    ws_url: str
    account: str
    customer: str
    expires_at: float


async def request_session(http: aiohttp.ClientSession, manager_url: str, api_token: str, *,
                          account: str | None = None, session_id: str | None = None,
                          trader_tag: str | None = None,
                          timeout_s: float = 10.0) -> SessionGrant:
    """Ask for a new session, or to resume `session_id` (possibly on another Market worker).
    `trader_tag` tags a new session (the account's limits for the tag apply to its orders);
    a resume must name the tag the session was created with.

    Raises `AuthError` if the token is refused or may not trade `account` (401/403),
    `RequestFailed` for another refusal of the request itself (4xx), and `ConnectionLost`
    when the MarketManager is unreachable or has no Market worker to offer (retry later).
    """
    body: dict[str, Any] = {}
    if account is not None:
        body["account"] = account
    if session_id is not None:
        body["session_id"] = session_id
    if trader_tag is not None:
        body["trader_tag"] = trader_tag
    url = manager_url.rstrip("/") + "/v1/sessions"
    try:
        async with http.post(url, data=orjson.dumps(body),
                             headers={"Authorization": f"Bearer {api_token}",
                                      "Content-Type": "application/json"},
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConnectionLost(f"MarketManager at {manager_url} unreachable: {exc!r}") from exc
    try:
        answer = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        answer = {}
    if status == 200:
        try:
            return SessionGrant(
                session_id=answer["session_id"], session_token=answer["session_token"],
                ws_url=answer["ws_url"], account=answer["account"],
                customer=answer["customer"], expires_at=float(answer["expires_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConnectionLost(f"unexpected answer from the MarketManager: {raw[:200]!r}"
                                 ) from exc
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    code = str(error.get("code", "http_" + str(status)))
    message = str(error.get("message", f"HTTP {status}"))
    if status in (401, 403):
        raise AuthError(f"{code}: {message}")
    if 400 <= status < 500:
        raise RequestFailed(code, message, field=error.get("field"))
    raise ConnectionLost(f"MarketManager answered {status} ({code}: {message}); retry later")
