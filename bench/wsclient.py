"""Raw WebSocket algo connections for the fan-out and sessions benchmarks, many per process.

Not the SDK and not aiohttp: a blocking handshake per connection (upgrade, then `hello` and the
subscriptions when talking to a Market worker), then one `epoll` loop over every socket with
plain `recvmsg`, so that one process can hold hundreds of connections and read a million
events per second without being what is measured. Two modes:

* `count`: complete frames are counted and the events in them are counted by their marker
  (`"type":"trade"` occurs once per trade event and nowhere else), with no JSON parsing;
* `latency`: each frame is parsed and, for every event of the counted type, the latency is the
  kernel's receive timestamp of the bytes (`SO_TIMESTAMPNS`, CLOCK_REALTIME) minus the event's
  `ts` (stamped with `time.time_ns()` by the source when it emitted the event). Taking the
  kernel's timestamp, not the time this loop got round to the socket, keeps the client's own
  queueing (and the pause below) out of the figure: with 500 sockets in one process the last
  one read would otherwise carry the reading time of the 499 before it. A `recvmsg` that
  takes several segments reports the last one's time, so frames of one connection must be
  further apart than the pause (the sessions benchmark sends tens of events per second).

The loop pauses 2 ms after each pass over the ready sockets so that every read takes many
frames at once: a delay, not a limit on the rate (the kernel buffers meanwhile). Pings are
answered (the Market's heartbeat would close a silent connection).

`python -m bench.wsclient` reads one JSON spec line on stdin:
`{"url": "ws://h:p/path", "sessions": [[session_id, token, instrument?], ...], "hello": bool,
  "subscribe": [message, ...], "mode": "count" | "latency", "marker": "\\"type\\":\\"trade\\""}`,
(a session's `instrument` replaces the one of its subscribe messages), connects everything,
prints `ready N`, then answers stdin commands with one JSON line each:
`snap` (totals: events, frames, bytes, closed connections, CPU seconds of this process),
`lat` (latency samples in µs since the previous `lat`, then reset), `quit`.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
RECV_BYTES = 1 << 18
ANC_BYTES = socket.CMSG_SPACE(16)
PASS_PAUSE_S = 0.002

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return header + mask + masked


class Conn:
    """One connection: a socket and the unparsed tail of its byte stream."""

    __slots__ = ("buf", "closed", "events", "frames", "nbytes", "sock")

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(leftover)
        self.events = 0
        self.frames = 0
        self.nbytes = 0
        self.closed = False


def handshake(url: str, headers: dict[str, str], timeout: float = 30.0) -> tuple[socket.socket,
                                                                                  bytes]:
    """Open the socket and upgrade it; returns the socket and bytes read past the response."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:200]!r}")
    return sock, rest


def parse_frames(conn: Conn) -> list[tuple[int, int, int]]:
    """Complete frames at the head of `conn.buf` as (opcode, start, end); the caller deletes
    the consumed prefix (`end` of the last one)."""
    buf = conn.buf
    out = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        b1 = buf[pos + 1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if size - pos < 4:
                break
            n, off = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif n == 127:
            if size - pos < 10:
                break
            n, off = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if size - pos < off + n:
            break
        out.append((buf[pos] & 0x0F, pos + off, pos + off + n))
        pos += off + n
    return out


def read_frame_blocking(conn: Conn) -> tuple[int, bytes]:
    """The next frame, reading from the (blocking) socket as needed."""
    while True:
        frames = parse_frames(conn)
        if frames:
            opcode, start, end = frames[0]
            payload = bytes(conn.buf[start:end])
            del conn.buf[:end]
            return opcode, payload
        chunk = conn.sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError("closed before the subscriptions were confirmed")
        conn.buf += chunk


def open_conn(spec: dict[str, Any], session_id: str, token: str,
              instrument: str | None = None) -> Conn:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sock, leftover = handshake(spec["url"], headers)
    conn = Conn(sock, leftover)
    if spec.get("hello", True):
        sock.sendall(client_frame(OP_TEXT, orjson.dumps({"type": "hello",
                                                         "session_id": session_id})))
        for message in spec.get("subscribe", []):
            if instrument is not None:  # this session follows a stream of its own
                message = {**message, "instrument": instrument}
            sock.sendall(client_frame(OP_TEXT, orjson.dumps(message)))
        wanted = len(spec.get("subscribe", []))
        while wanted:  # welcome, then one `subscribed` per subscription (maybe in a batch)
            opcode, payload = read_frame_blocking(conn)
            if opcode == OP_PING:
                sock.sendall(client_frame(OP_PONG, payload))
            elif opcode in (OP_TEXT, OP_BINARY):
                if b'"type":"error"' in payload:
                    raise ConnectionError(f"refused: {payload[:300]!r}")
                wanted -= payload.count(b'"type":"subscribed"')
            elif opcode == OP_CLOSE:
                raise ConnectionError(f"closed: {payload[:200]!r}")
    if spec.get("mode") == "latency":
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    return conn


class Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.latency = spec.get("mode") == "latency"
        self.marker = spec.get("marker", '"type":"trade"').encode()
        self.kind = self.marker.split(b":")[-1].strip(b'"').decode()
        self.conns: dict[int, Conn] = {}
        self.samples: list[int] = []
        self.untimed = 0
        self.poll = select.epoll()

    def connect(self) -> None:
        for session_id, token, *own in self.spec["sessions"]:
            conn = open_conn(self.spec, session_id, token, own[0] if own else None)
            fd = conn.sock.fileno()
            self.conns[fd] = conn
            self.poll.register(fd, select.EPOLLIN)

    def on_readable(self, conn: Conn) -> None:
        if not self.latency:
            self.on_readable_count(conn)
            return
        sock = conn.sock
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(RECV_BYTES, ANC_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not self._took(conn, data):
                return
            rx = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    rx = sec * 1_000_000_000 + nsec
            if not rx:  # no kernel timestamp: our own clock, later than the arrival
                self.untimed += 1
                rx = time.time_ns()
            self.consume(conn, rx)
            if len(data) < RECV_BYTES:
                return

    def _took(self, conn: Conn, data: bytes) -> bool:
        """Add what a read returned to the connection's buffer; False (and the connection
        closed) when the read found the socket closed."""
        if not data:
            self.close(conn)
            return False
        conn.nbytes += len(data)
        conn.buf += data
        return True

    def on_readable_count(self, conn: Conn) -> None:
        """Count mode: plain `recv`, frames walked in place, events counted by marker."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not self._took(conn, data):
            return
        buf = conn.buf
        marker = self.marker
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b1 = buf[pos + 1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, off = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, off = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            end = pos + off + n
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode in (OP_TEXT, OP_BINARY, 0):
                conn.frames += 1
                conn.events += buf.count(marker, pos + off, end)
            elif opcode == OP_PING:
                try:
                    conn.sock.send(client_frame(OP_PONG, bytes(buf[pos + off:end])))
                except OSError:
                    pass
            elif opcode == OP_CLOSE:
                self.close(conn)
                return
            pos = end
        if pos == size:
            buf.clear()
        elif pos:
            del buf[:pos]

    def consume(self, conn: Conn, rx: int) -> None:
        frames = parse_frames(conn)
        if not frames:
            return
        buf, marker = conn.buf, self.marker
        for opcode, start, end in frames:
            if opcode in (OP_TEXT, OP_BINARY, 0):
                conn.frames += 1
                if self.latency:
                    data = orjson.loads(bytes(buf[start:end]))
                    events = data["events"] if data.get("type") in ("batch", "market") \
                        else [data]
                    for event in events:
                        if event.get("type") == self.kind:
                            conn.events += 1
                            self.samples.append((rx - event["ts"]) // 1000)
                else:
                    conn.events += buf.count(marker, start, end)
            elif opcode == OP_PING:
                try:
                    conn.sock.send(client_frame(OP_PONG, bytes(buf[start:end])))
                except OSError:
                    pass
            elif opcode == OP_CLOSE:
                self.close(conn)
                return
        del buf[:frames[-1][2]]

    def close(self, conn: Conn) -> None:
        if not conn.closed:
            conn.closed = True
            fd = conn.sock.fileno()
            if fd >= 0:
                self.poll.unregister(fd)
            conn.sock.close()

    def snapshot(self) -> dict[str, Any]:
        cpu = os.times()
        return {"events": sum(c.events for c in self.conns.values()),
                "frames": sum(c.frames for c in self.conns.values()),
                "bytes": sum(c.nbytes for c in self.conns.values()),
                "closed": sum(1 for c in self.conns.values() if c.closed),
                "cpu": cpu.user + cpu.system, "t": time.monotonic()}

    def command(self, line: str) -> bool:
        word = line.strip()
        if word == "snap":
            out: dict[str, Any] = self.snapshot()
        elif word == "lat":
            out = {"samples": self.samples, "untimed": self.untimed}
            self.samples, self.untimed = [], 0
        else:
            return False
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        sys.stdout.flush()
        return True

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.poll.register(stdin, select.EPOLLIN)
        pending = b""
        conns = self.conns
        while True:
            for fd, _mask in self.poll.poll(1.0):
                if fd == stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, _, pending = pending.partition(b"\n")
                        if not self.command(line.decode()):
                            return
                    continue
                conn = conns.get(fd)
                if conn is not None and not conn.closed:
                    self.on_readable(conn)
            # Let frames pile up in the kernel between passes: each recv then takes many, so
            # reading costs little CPU per frame and leaves the cores to the server.
            time.sleep(PASS_PAUSE_S)


def main() -> int:
    spec = orjson.loads(sys.stdin.readline())
    client = Client(spec)
    client.connect()
    sys.stdout.write(f"ready {len(client.conns)}\n")
    sys.stdout.flush()
    client.run()
    for conn in client.conns.values():
        conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
