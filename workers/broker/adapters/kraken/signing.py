"""Kraken spot REST request signing (``API-Sign`` header).

Recipe (Kraken "Spot REST Authentication" guide)::

    API-Sign = base64( HMAC-SHA512( key = base64decode(secret),
                                    msg = uri_path + SHA256(nonce + post_data) ) )

``uri_path`` is the path starting at ``/0/private/`` and ``post_data`` is the request
body exactly as sent (form-encoded, and it includes ``nonce=...``). The same signature
signs the REST ``GetWebSocketsToken`` call that private WebSocket v2 sessions need.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlencode

from workers.broker.adapters.kraken.errors import InvalidSecret


def decode_secret(secret: str) -> bytes:
    """Base64-decode an API secret; raise :class:`InvalidSecret` if it is not base64.

    The error message never contains the secret.
    """
    try:
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("API secret is not valid base64") from None


def encode_post_data(params: Mapping[str, object]) -> str:
    """Form-encode request parameters in the given order (``nonce`` included by the caller)."""
    return urlencode({key: str(value) for key, value in params.items()})


def sign_request(secret: str, uri_path: str, nonce: int | str, post_data: str) -> str:
    """The ``API-Sign`` header value for one private REST call.

    ``nonce`` must be the same value that appears inside ``post_data``; it has to
    increase on every call made with the key.
    """
    digest = hashlib.sha256(f"{nonce}{post_data}".encode()).digest()
    mac = hmac.new(decode_secret(secret), uri_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")
