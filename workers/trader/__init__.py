"""Trader workers: hosted algos, run through the public client SDK like any external algo."""
