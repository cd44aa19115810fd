"""Venue adapters: everything that knows a venue's wire format lives here."""
