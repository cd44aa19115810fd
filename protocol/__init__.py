"""The tradefleet wire contract.

Pydantic models, the codec and the error codes shared by every process. This package performs no
I/O and imports nothing else of ours: every other package may import it, it imports none of them.
"""

PROTOCOL_VERSION = "1.0"

__all__ = ["PROTOCOL_VERSION"]
