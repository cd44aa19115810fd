"""Kraken Futures request signing: REST ``Authent`` and the WebSocket challenge.

Recipes (Kraken "Futures REST" guide, and its WebSocket private-feed guide)::

    Authent          = base64( HMAC-SHA512( base64decode(secret),
                                            SHA256(post_data + nonce + endpoint_path) ) )
    signed_challenge = base64( HMAC-SHA512( base64decode(secret), SHA256(challenge) ) )

``endpoint_path`` is the URL path after ``/derivatives`` (``/api/v3/sendorder``).
``post_data`` is the query/body string exactly as sent on the wire (URL-encoded; since
February 2024 Kraken hashes the encoded form). ``nonce`` is optional on the wire; when
it is not sent, sign with an empty string.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from workers.broker.adapters.kraken_futures.errors import InvalidSecret

_DERIVATIVES_PREFIX = "/derivatives"


def decode_secret(secret: str) -> bytes:
    """Base64-decode an API secret; raise :class:`InvalidSecret` (without echoing it)."""
    try:
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("API secret is not valid base64") from None


def _hmac_b64(secret: str, digest: bytes) -> str:
    mac = hmac.new(decode_secret(secret), digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")


def endpoint_path(url_path: str) -> str:
    """The part of a request path that is signed: ``/derivatives/api/v3/x`` -> ``/api/v3/x``."""
    if url_path.startswith(_DERIVATIVES_PREFIX + "/"):
        return url_path[len(_DERIVATIVES_PREFIX) :]
    return url_path


def sign_request(secret: str, path: str, nonce: int | str, post_data: str) -> str:
    """The ``Authent`` header for one REST call.

    ``path`` may be given with or without the ``/derivatives`` prefix; it is signed
    without it. Pass ``nonce=""`` when the request carries no ``Nonce`` header.
    """
    message = f"{post_data}{nonce}{endpoint_path(path)}".encode()
    return _hmac_b64(secret, hashlib.sha256(message).digest())


def sign_challenge(secret: str, challenge: str) -> str:
    """The ``signed_challenge`` for a private WebSocket subscription."""
    return _hmac_b64(secret, hashlib.sha256(challenge.encode()).digest())
