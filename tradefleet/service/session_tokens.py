"""Session tokens: what a MarketManager hands an algo so that any Market worker can admit it.

A token binds one session id to one customer and one account until an expiry time, signed with
HMAC-SHA256 under the deployment service token. Market workers verify it statelessly: no
look-up, no shared store. The token is URL-safe text:

    base64url("session_id|customer|account|expires_at") "." base64url(hmac)

`expires_at` is whole seconds since the Unix epoch. The payload is readable by whoever holds
the token (it carries no secret); only the signature makes it trustworthy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

_SEPARATOR = "|"
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Tokens travel in an HTTP header; anything much longer than a real one is not worth decoding.
MAX_TOKEN_CHARS = 1024


class InvalidSessionToken(ValueError):
    """The token is malformed, forged, or expired. The client must ask for a new session
    (`POST /v1/sessions`); presenting the same token again will not help."""


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a valid session token asserts."""

    session_id: str
    customer: str
    account: str
    expires_at: int


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def _signature(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def mint(
    secret: str,
    session_id: str,
    customer: str,
    account: str,
    ttl_s: float,
    *,
    now: float | None = None,
) -> tuple[str, int]:
    """Sign a token for `session_id` of `customer` on `account`, valid for `ttl_s` seconds.

    Returns `(token, expires_at)`. Raises `ValueError` if the secret is empty, `ttl_s` is not
    positive, or a field is empty or contains the `|` separator (ids never do; refusing keeps
    the signed text unambiguous).
    """
    if not secret:
        raise ValueError("a session token needs a non-empty secret")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    for name, value in (("session_id", session_id), ("customer", customer), ("account", account)):
        if not value or _SEPARATOR in value:
            raise ValueError(f"{name} must be non-empty and must not contain {_SEPARATOR!r}")
    issued = time.time() if now is None else now
    expires_at = int(issued + ttl_s)
    payload = _SEPARATOR.join((session_id, customer, account, str(expires_at))).encode()
    token = f"{_b64encode(payload)}.{_b64encode(_signature(secret, payload))}"
    return token, expires_at


def verify(secret: str, token: str, *, now: float | None = None) -> SessionClaims:
    """Check a token's signature and expiry and return its claims.

    Raises `InvalidSessionToken` if the token is malformed, was not signed with `secret`, or
    has expired (`expires_at <= now`). The signature is compared in constant time.
    """
    if not secret:
        raise InvalidSessionToken("no secret to verify session tokens with")
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(token):
        raise InvalidSessionToken("malformed session token")
    payload_text, signature_text = token.split(".")
    try:
        payload = _b64decode(payload_text)
        signature = _b64decode(signature_text)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSessionToken("malformed session token") from exc
    # base64 decoding ignores unused trailing bits, so several spellings decode alike; accept
    # only the one `mint` writes.
    if _b64encode(payload) != payload_text or _b64encode(signature) != signature_text:
        raise InvalidSessionToken("malformed session token")
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        raise InvalidSessionToken("session token signature does not match")
    try:
        session_id, customer, account, expires_text = payload.decode().split(_SEPARATOR)
        expires_at = int(expires_text)
    except ValueError as exc:  # a correctly signed token is well formed; kept as a guard
        raise InvalidSessionToken("malformed session token") from exc
    current = time.time() if now is None else now
    if expires_at <= current:
        raise InvalidSessionToken("session token expired; ask the MarketManager for a new one")
    return SessionClaims(session_id, customer, account, expires_at)


__all__ = ["InvalidSessionToken", "SessionClaims", "mint", "verify"]
