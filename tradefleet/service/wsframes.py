"""WebSocket frames written straight to a server connection's transport (RFC 6455 §5.2).

aiohttp's `send_*` are coroutines: a caller in plain code has to hand its data to a task, which
costs a pass of the event loop before the bytes leave. On the hot paths (an algo's order
answer, a fan-out round) the server writes a complete frame to the transport itself when
nothing stands in the way: no compression negotiated, the connection not closing, and little
already queued in the transport (past `DIRECT_WRITE_LIMIT` the caller goes through aiohttp,
which waits for the socket to drain). A frame is written whole, so it never interleaves with aiohttp's own
frames (pings, closes) on the same transport.
"""

from __future__ import annotations

import asyncio
import struct
from typing import cast

from aiohttp import web

TEXT = 0x1
BINARY = 0x2
DIRECT_WRITE_LIMIT = 256 * 1024
"""Bytes already queued in a transport above which output waits for the socket instead."""


def server_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """A final, unmasked, uncompressed frame (server to client)."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def direct_transport(ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None
                     ) -> asyncio.Transport | None:
    """The transport `ws` runs on, if frames may be written there now (see the module)."""
    if transport is None or ws.compress or ws.closed or transport.is_closing():
        return None
    writable = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
    if writable.get_write_buffer_size() >= DIRECT_WRITE_LIMIT:
        return None
    return writable
