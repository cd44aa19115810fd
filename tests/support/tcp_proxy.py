"""A TCP relay on 127.0.0.1 that can cut its connections on purpose: a network blip between
two live processes, neither of which dies."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Relays every connection made to `port` (chosen by the OS) to `target_port`;
    `cut()` drops the connections open now (both sides see a reset) and keeps listening; while
    `refuse` is set, new connections are closed at once (an outage until it is cleared).
    `half_cut()` drops only the side of the connecting client: the target keeps a connection
    that looks open but leads nowhere (half-open, as after a partition)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections relayed so far
        self.refuse = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._kept: set[asyncio.StreamWriter] = set()  # half-open: never closed by a pipe
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.accepted += 1
        self._writers |= {writer, up_writer}
        self._pairs.append((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        self._writers.discard(dst)
        if dst not in self._kept:
            dst.close()

    def cut(self) -> int:
        """Drop every open connection; returns how many sockets were closed."""
        writers, self._writers = self._writers, set()
        self._pairs.clear()
        for writer in writers:
            writer.transport.abort()
        return len(writers)

    def half_cut(self) -> int:
        """Drop the client's side of every open connection and leave the target's open and
        silent; returns how many connections were cut so."""
        pairs, self._pairs = self._pairs, []
        for client_side, target_side in pairs:
            self._kept.add(target_side)
            self._writers.discard(target_side)
            client_side.transport.abort()
        return len(pairs)

    async def stop(self) -> None:
        self.cut()
        for writer in self._kept:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
