"""Exceptions raised by the Kraken Futures adapter.

Every exception derives from :class:`KrakenFuturesError`; each subclass names what the
caller should do. Normal-operation outcomes (sequence gaps, crossed books, rate-limit
refusals) are returned as values, never raised.
"""

from __future__ import annotations


class KrakenFuturesError(Exception):
    """Root of every error raised by the Kraken Futures adapter."""


class MalformedMessage(KrakenFuturesError, ValueError):
    """A frame or REST response does not have the documented shape.

    Drop it and log it; if it keeps happening the venue changed its protocol.
    """


class UnsupportedSymbol(KrakenFuturesError, ValueError):
    """A symbol or product id cannot be mapped; fix the input, retrying will not help."""


class InvalidSecret(KrakenFuturesError, ValueError):
    """An API secret is not valid base64; fix the account configuration."""


class UnknownEndpoint(KrakenFuturesError, KeyError):
    """The rate limiter has no documented cost for an endpoint; add it before calling it."""
