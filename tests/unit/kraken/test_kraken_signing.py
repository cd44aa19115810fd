"""Request signing against Kraken's published test vectors."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from workers.broker.adapters.kraken import signing as spot_signing
from workers.broker.adapters.kraken.errors import InvalidSecret
from workers.broker.adapters.kraken_futures import signing as futures_signing
from workers.broker.adapters.kraken_futures.errors import InvalidSecret as FuturesInvalidSecret

# Kraken "Spot REST Authentication" guide: the documented AddOrder example.
SPOT_SECRET = (
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
)
SPOT_NONCE = 1616492376594
SPOT_PATH = "/0/private/AddOrder"
SPOT_SIGNATURE = (
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
)

# Kraken "Futures WebSocket" guide: the documented sign-challenge example.
FUTURES_SECRET = (
    "7zxMEF5p/Z8l2p2U7Ghv6x14Af+Fx+92tPgUdVQ748FOIrEoT9bgT+bTRfXc5pz8na+hL/QdrCVG7bh9KpT0eMTm"
)
FUTURES_CHALLENGE = "c100b894-1729-464d-ace1-52dbce11db42"
FUTURES_SIGNED = (
    "4JEpF3ix66GA2B+ooK128Ift4XQVtc137N9yeg4Kqsn9PI0Kpzbysl9M1IeCEdjg0zl00wkVqcsnG4bmnlMb3A=="
)


def test_spot_api_sign_matches_published_vector() -> None:
    post_data = spot_signing.encode_post_data(
        {
            "nonce": SPOT_NONCE,
            "ordertype": "limit",
            "pair": "XBTUSD",
            "price": 37500,
            "type": "buy",
            "volume": "1.25",
        }
    )
    assert (
        post_data
        == "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    )
    assert (
        spot_signing.sign_request(SPOT_SECRET, SPOT_PATH, SPOT_NONCE, post_data) == SPOT_SIGNATURE
    )


def test_spot_signature_depends_on_every_input() -> None:
    base = spot_signing.sign_request(SPOT_SECRET, SPOT_PATH, 1, "nonce=1")
    assert spot_signing.sign_request(SPOT_SECRET, SPOT_PATH, 2, "nonce=1") != base
    assert spot_signing.sign_request(SPOT_SECRET, "/0/private/Balance", 1, "nonce=1") != base
    assert spot_signing.sign_request(SPOT_SECRET, SPOT_PATH, 1, "nonce=1&x=1") != base


def test_futures_challenge_matches_published_vector() -> None:
    assert futures_signing.sign_challenge(FUTURES_SECRET, FUTURES_CHALLENGE) == FUTURES_SIGNED


def test_futures_authent_follows_the_documented_recipe() -> None:
    """No published Authent vector exists; check the recipe step by step and its inputs."""
    post_data = "orderType=lmt&symbol=PI_XBTUSD&side=buy&size=1&limitPrice=9400"
    nonce = "1415957147987"
    authent = futures_signing.sign_request(FUTURES_SECRET, "/api/v3/sendorder", nonce, post_data)
    digest = hashlib.sha256((post_data + nonce + "/api/v3/sendorder").encode()).digest()
    expected = hmac.new(base64.b64decode(FUTURES_SECRET), digest, hashlib.sha512).digest()
    assert base64.b64decode(authent) == expected and len(expected) == 64
    # the /derivatives prefix of the URL is not part of what is signed
    assert (
        futures_signing.sign_request(
            FUTURES_SECRET, "/derivatives/api/v3/sendorder", nonce, post_data
        )
        == authent
    )
    assert (
        futures_signing.sign_request(FUTURES_SECRET, "/api/v3/sendorder", "", post_data) != authent
    )
    assert (
        futures_signing.sign_request(FUTURES_SECRET, "/api/v3/cancelorder", nonce, post_data)
        != authent
    )


@pytest.mark.parametrize("bad", ["not base64!", "abc", "=="])
def test_invalid_secret_is_rejected_without_echoing_it(bad: str) -> None:
    with pytest.raises(InvalidSecret) as spot_error:
        spot_signing.sign_request(bad, SPOT_PATH, 1, "nonce=1")
    assert bad not in str(spot_error.value)
    with pytest.raises(FuturesInvalidSecret):
        futures_signing.sign_challenge(bad, FUTURES_CHALLENGE)
