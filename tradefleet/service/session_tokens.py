"""Session tokens: what a MarketManager hands an algo so that any Market worker can admit it.

A token binds one session id to one customer and one account until an expiry time, signed with
HMAC-SHA256 under the deployment service token. Market workers verify it statelessly: no
look-up, no shared store. The token is URL-safe text:

    base64url("session_id|customer|account|expires_at|issued_ms[|trader_tag]") "." base64url(hmac)

`expires_at` is whole seconds since the Unix epoch, `issued_ms` the time the token was minted
in milliseconds: the session's *grant*. Each connection of a session comes with the grant it
was admitted with, and the Broker sends the session's events to the Market of the latest one
(a Market still holding an older connection it has not seen die cannot take them back). The
payload is readable by whoever holds the token (it carries no secret); only the signature
makes it trustworthy.

A session may carry a trader tag (the per-tag risk limits of the account apply to its orders).
The tag is in the signed payload, so the algo cannot change it on a connection; and a tagged
session's id is itself derived from the tag (`tagged_session_id`), so a resume through the
MarketManager cannot change it either (`session_tag_matches`) — all without any stored state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

_SEPARATOR = "|"
TRADER_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TAGGED_PREFIX = "t"  # a tagged session id's random part: "t" + nonce + signature (hex)
_NONCE_HEX = 8
_TAG_SIG_HEX = 16
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
    trader_tag: str | None = None
    issued_ms: int = 0
    """When the token was minted (ms since the epoch): later grants of a session, larger."""


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
    trader_tag: str | None = None,
) -> tuple[str, int]:
    """Sign a token for `session_id` of `customer` on `account`, valid for `ttl_s` seconds,
    with the session's `trader_tag` if it has one.

    Returns `(token, expires_at)`. Raises `ValueError` if the secret is empty, `ttl_s` is not
    positive, a field is empty or contains the `|` separator (ids never do; refusing keeps
    the signed text unambiguous), or the tag is not 1-64 of `[A-Za-z0-9._-]`.
    """
    if not secret:
        raise ValueError("a session token needs a non-empty secret")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    for name, value in (("session_id", session_id), ("customer", customer), ("account", account)):
        if not value or _SEPARATOR in value:
            raise ValueError(f"{name} must be non-empty and must not contain {_SEPARATOR!r}")
    if trader_tag is not None and not TRADER_TAG.fullmatch(trader_tag):
        raise ValueError("trader_tag must be 1 to 64 letters, digits or ._-")
    issued = time.time() if now is None else now
    expires_at = int(issued + ttl_s)
    fields = [session_id, customer, account, str(expires_at), str(int(issued * 1000))]
    if trader_tag is not None:
        fields.append(trader_tag)
    payload = _SEPARATOR.join(fields).encode()
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
        session_id, customer, account, expires_text, issued_text, *tag = \
            payload.decode().split(_SEPARATOR)
        expires_at, issued_ms = int(expires_text), int(issued_text)
        if len(tag) > 1 or (tag and not TRADER_TAG.fullmatch(tag[0])):
            raise ValueError("bad trader tag")
    except ValueError as exc:  # a correctly signed token is well formed; kept as a guard
        raise InvalidSessionToken("malformed session token") from exc
    current = time.time() if now is None else now
    if expires_at <= current:
        raise InvalidSessionToken("session token expired; ask the MarketManager for a new one")
    return SessionClaims(session_id, customer, account, expires_at, tag[0] if tag else None,
                         issued_ms)


def _tag_signature(secret: str, customer: str, nonce: str, trader_tag: str) -> str:
    payload = _SEPARATOR.join((customer, nonce, trader_tag)).encode()
    return hmac.new(secret.encode(), b"trader-tag|" + payload,
                    hashlib.sha256).hexdigest()[:_TAG_SIG_HEX]


def tagged_session_id(secret: str, customer: str, trader_tag: str) -> str:
    """A new session id for `customer` bound to `trader_tag`: `customer.t<nonce><sig>`."""
    nonce = secrets.token_hex(_NONCE_HEX // 2)
    return f"{customer}.{_TAGGED_PREFIX}{nonce}{_tag_signature(secret, customer, nonce, trader_tag)}"


def session_tag_matches(secret: str, session_id: str, trader_tag: str | None) -> bool:
    """Whether resuming `session_id` with `trader_tag` keeps the tag it was created with:
    an id from `tagged_session_id` needs the same tag, any other id needs none."""
    customer, _, part = session_id.rpartition(".")
    tagged = len(part) == 1 + _NONCE_HEX + _TAG_SIG_HEX and part.startswith(_TAGGED_PREFIX)
    if not tagged:
        return trader_tag is None
    if trader_tag is None:
        return False
    nonce, signature = part[1:1 + _NONCE_HEX], part[1 + _NONCE_HEX:]
    return hmac.compare_digest(signature, _tag_signature(secret, customer, nonce, trader_tag))


__all__ = [
    "TRADER_TAG",
    "InvalidSessionToken",
    "SessionClaims",
    "mint",
    "session_tag_matches",
    "tagged_session_id",
    "verify",
]
