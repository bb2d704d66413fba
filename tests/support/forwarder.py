"""A TCP forwarder to a real server, for outages the tests make on purpose: a store whose port
opens late, or one that answers after the client stopped waiting."""

from __future__ import annotations

import asyncio

from tests.support.services import free_port


class Forwarder:
    """Listens on a port and pipes each connection to a real server: before `start()` nothing
    listens there, exactly as when Redis or PostgreSQL is not up yet."""

    def __init__(
        self, target_port: int, *, late_reply: bytes = b"", late_after: bytes = b"", late_by: float = 0.0
    ) -> None:
        self.port = free_port()
        self.target_port = target_port
        # The first reply equal to `late_reply` to a request containing `late_after` reaches
        # the client `late_by` seconds late: a server that did the work but answered after the
        # client stopped waiting.
        self.late_reply, self.late_after, self.late_by = late_reply, late_after, late_by
        self._last_request = b""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe_both, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in self._tasks:
                task.cancel()
            await self._server.wait_closed()

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if src is reader:
                        self._last_request = data
                    elif self.late_reply and data == self.late_reply and self.late_after in self._last_request:
                        self.late_reply = b""
                        await asyncio.sleep(self.late_by)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = {asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))}
        self._tasks |= tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks -= tasks
