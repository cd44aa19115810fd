"""Fake venues for functional tests: local servers that speak a venue's real protocol."""
