"""Session tokens: minted by the MarketManager, verified statelessly by any Market worker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradefleet.service.session_tokens import (
    InvalidSessionToken,
    SessionClaims,
    mint,
    session_tag_matches,
    tagged_session_id,
    verify,
)

SECRET = "service-token-0123456789"
NOW = 1_700_000_000.0


def test_round_trip_returns_the_claims() -> None:
    token, expires_at = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    assert expires_at == int(NOW + 60)
    assert verify(SECRET, token, now=NOW + 1) == SessionClaims(
        "s-1", "acme", "paper-1", expires_at, issued_ms=int(NOW * 1000))


def test_a_later_grant_of_a_session_is_larger_to_the_millisecond() -> None:
    # The Broker sends a session's events to the Market of its latest grant.
    first, _ = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    again, _ = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW + 0.002)
    assert verify(SECRET, again, now=NOW).issued_ms - verify(SECRET, first, now=NOW).issued_ms == 2


def test_token_is_url_safe() -> None:
    token, _ = mint(SECRET, "s.1_x-y", "acme", "paper-1", 60, now=NOW)
    assert all(c.isalnum() or c in "-_." for c in token)


def test_expired_token_is_refused() -> None:
    token, expires_at = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    with pytest.raises(InvalidSessionToken, match="expired"):
        verify(SECRET, token, now=expires_at)


def test_other_secret_is_refused() -> None:
    token, _ = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    with pytest.raises(InvalidSessionToken, match="signature"):
        verify("another-secret", token, now=NOW)


def test_changed_claims_are_refused() -> None:
    token, _ = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    forged, _ = mint("attacker", "s-1", "acme", "paper-2", 60, now=NOW)
    # The payload of one token with the signature of another.
    spliced = forged.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(InvalidSessionToken):
        verify(SECRET, spliced, now=NOW)


@pytest.mark.parametrize("token", ["", ".", "abc", "a.b.c", "a b.c", "a.b=", "é.x", "a" * 5000])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidSessionToken):
        verify(SECRET, token, now=NOW)


def test_extra_characters_do_not_make_a_second_valid_spelling() -> None:
    token, _ = mint(SECRET, "s-1", "acme", "paper-1", 60, now=NOW)
    payload, signature = token.split(".")
    with pytest.raises(InvalidSessionToken):
        verify(SECRET, f"{payload}!.{signature}", now=NOW)


@pytest.mark.parametrize(
    ("session_id", "customer", "account", "ttl"),
    [("", "c", "a", 1), ("s|1", "c", "a", 1), ("s", "", "a", 1), ("s", "c", "a|b", 1),
     ("s", "c", "a", 0)],
)
def test_mint_refuses_ambiguous_or_empty_input(
    session_id: str, customer: str, account: str, ttl: float
) -> None:
    with pytest.raises(ValueError):
        mint(SECRET, session_id, customer, account, ttl, now=NOW)


def test_empty_secret_can_neither_mint_nor_verify() -> None:
    with pytest.raises(ValueError):
        mint("", "s", "c", "a", 1)
    token, _ = mint(SECRET, "s", "c", "a", 60, now=NOW)
    with pytest.raises(InvalidSessionToken):
        verify("", token, now=NOW)


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
                min_size=1, max_size=64)


@given(session_id=_NAME, customer=_NAME, account=_NAME, flip=st.integers(min_value=0))
def test_any_single_character_change_is_refused(
    session_id: str, customer: str, account: str, flip: int
) -> None:
    token, _ = mint(SECRET, session_id, customer, account, 60, now=NOW)
    assert verify(SECRET, token, now=NOW).session_id == session_id
    index = flip % len(token)
    replacement = "A" if token[index] != "A" else "B"
    tampered = token[:index] + replacement + token[index + 1:]
    with pytest.raises(InvalidSessionToken):
        verify(SECRET, tampered, now=NOW)


# ---------------------------------------------------------------- trader tags


def test_a_trader_tag_is_signed_into_the_token_and_read_back() -> None:
    token, _ = mint(SECRET, "s", "c", "a", 60, now=NOW, trader_tag="desk-1.fast_a")
    claims = verify(SECRET, token, now=NOW)
    assert claims.trader_tag == "desk-1.fast_a"
    untagged, _ = mint(SECRET, "s", "c", "a", 60, now=NOW)
    assert verify(SECRET, untagged, now=NOW).trader_tag is None


@pytest.mark.parametrize("tag", ["", "a b", "x|y", "é", "t" * 65])
def test_a_malformed_trader_tag_cannot_be_minted(tag: str) -> None:
    with pytest.raises(ValueError, match="trader_tag"):
        mint(SECRET, "s", "c", "a", 60, now=NOW, trader_tag=tag)


def test_a_tagged_session_id_binds_its_tag_for_resumes() -> None:
    session_id = tagged_session_id(SECRET, "acme", "scalper")
    assert session_id.startswith("acme.t") and len(session_id) <= 128
    assert session_tag_matches(SECRET, session_id, "scalper")
    assert not session_tag_matches(SECRET, session_id, None)
    assert not session_tag_matches(SECRET, session_id, "other")
    assert not session_tag_matches("another-secret", session_id, "scalper")
    assert session_id != tagged_session_id(SECRET, "acme", "scalper")  # fresh each time
    # Untagged ids (the ordinary ones) resume only without a tag.
    assert session_tag_matches(SECRET, "acme.0123456789abcdef0123", None)
    assert not session_tag_matches(SECRET, "acme.0123456789abcdef0123", "scalper")
