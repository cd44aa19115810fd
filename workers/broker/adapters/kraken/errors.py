"""Exceptions raised by the Kraken spot adapter.

Every exception derives from :class:`KrakenError`, so the async shell can catch the
whole family in one place. Each subclass names what the caller should do about it.
Results that are part of normal operation (a checksum mismatch, a sequence gap, a
rate-limit refusal) are *returned* as values, never raised.
"""

from __future__ import annotations


class KrakenError(Exception):
    """Root of every error raised by the Kraken spot adapter."""


class MalformedMessage(KrakenError, ValueError):
    """A frame does not have the documented shape.

    Drop the frame and log it. If it keeps happening the venue changed its protocol
    and the adapter needs updating; retrying the same frame will not help.
    """


class UnsupportedSymbol(KrakenError, ValueError):
    """A symbol cannot be spelled for the requested venue API.

    Fix the input (configuration or the algo's request); retrying will not help.
    """


class InvalidSecret(KrakenError, ValueError):
    """An API secret is not valid base64.

    Fix the account configuration; no request can be signed with this secret.
    """
