"""A small HTTP/1.1 client for calls from the gateway to model instances.

aiohttp's ClientSession spent about two thirds of the gateway's time per call
(measured with callgrind: ~450k of ~710k instructions), most of it on features
a proxy to a known instance on 127.0.0.1 never uses (cookies, redirects,
proxies, auth, tracing, content decoding). This client does only what the
gateway needs: keep-alive connections pooled per instance, the request written
in one write, the response head parsed in one pass, and the body framed by
Content-Length, chunked encoding or the end of the connection.

Failures are told apart because the gateway answers them differently:
ConnectError (no connection; another instance may be tried), Disconnected (the
connection broke before a complete answer head), BadResponse (not HTTP), and
TimeoutError (the call deadline passed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

# Reading pauses while this much of a body waits for the caller to take it.
HIGH_WATER = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024
IDLE_SECONDS = 30.0
NO_BODY_STATUSES = frozenset({204, 304})
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class UpstreamError(Exception):
    pass


class ConnectError(UpstreamError):
    """No connection could be made."""


class Disconnected(UpstreamError):
    """The connection closed before the answer's head was complete."""


class BadResponse(UpstreamError):
    """The instance answered with something that is not HTTP/1.x."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one call at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.error: BaseException | None = None
        self.is_closed = False
        self.is_paused = False
        self.idle_since = 0.0
        self.key: tuple[str, int] = ("", 0)
        # Whether any byte of an answer came on this connection during the call.
        self.received_any = False

    # -- protocol callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's is not a subclass of asyncio.Transport).
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self.is_paused:
            self.is_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.is_closed = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- used by the call --
    def fail(self, error: BaseException) -> None:
        """Stop the call with this error (e.g. its deadline passed) and drop the connection."""
        self.error = error
        self.is_closed = True
        if self.transport is not None:
            self.transport.abort()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(error)

    async def more(self) -> bool:
        """Wait for more bytes: True once some arrived, False if the connection closed first."""
        if self.is_paused:
            self.is_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        had = len(self.buffer)
        while True:
            if self.error is not None:
                raise self.error
            if len(self.buffer) > had:
                return True
            if self.is_closed:
                return False
            self.waiter = self.loop.create_future()
            await self.waiter

    def take(self, size: int = -1) -> bytes:
        if size < 0 or size >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
        if self.is_paused and len(self.buffer) < HIGH_WATER // 2:
            self.is_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.is_closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An instance's answer: status, reason and headers at once, the body on demand."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "content_length",
        "_pool",
        "_connection",
        "_framing",
        "_left",
        "_timer",
        "_reusable",
        "_done",
    )

    def __init__(self, pool: Pool, connection: _Connection, status: int, reason: str, headers: list[tuple[str, str]],
                 content_length: int | None, framing: str, reusable: bool,
                 timer: asyncio.TimerHandle | None) -> None:  # fmt: skip
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self._pool = pool
        self._connection = connection
        self._framing = framing  # "none", "length", "chunked" or "close"
        self._left = content_length or 0
        self._reusable = reusable
        self._timer = timer
        self._done = framing == "none"
        if self._done:
            self._finish()

    async def read(self) -> bytes:
        """The whole body."""
        if self._framing == "length" and len(self._connection.buffer) >= self._left:
            # The common case: the whole answer arrived with its head.
            data = self._connection.take(self._left)
            self._left = 0
            self._done = True
            self._finish()
            return data
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        connection = self._connection
        try:
            if self._framing == "length":
                while self._left:
                    if not connection.buffer and not await connection.more():
                        raise Disconnected("the connection closed before the end of the body")
                    data = connection.take(self._left)
                    self._left -= len(data)
                    yield data
            elif self._framing == "chunked":
                async for data in self._chunks():
                    yield data
            elif self._framing == "close":
                while True:
                    if connection.buffer:
                        yield connection.take()
                    elif not await connection.more():
                        break
            self._done = True
        finally:
            self._finish()

    async def _chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            line = await _read_line(connection)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadResponse(f"invalid chunk size line {line[:40]!r}") from None
            if size < 0:
                raise BadResponse("negative chunk size")
            if size == 0:
                # Trailers, then the empty line that ends the message.
                while await _read_line(connection):
                    pass
                return
            left = size
            while left:
                if not connection.buffer and not await connection.more():
                    raise Disconnected("the connection closed inside a chunk")
                data = connection.take(left)
                left -= len(data)
                yield data
            if await _read_line(connection):
                raise BadResponse("a chunk does not end with CRLF")

    def release(self) -> None:
        """Give the connection back (or close it, if the body was not read to its end)."""
        self._finish()

    def _finish(self) -> None:
        connection = self._connection
        if connection is None:
            return
        # Released: only _finish reads it after this, and checks for None.
        self._connection = None  # type: ignore[assignment]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._done and self._reusable and not connection.buffer and not connection.is_closed:
            self._pool.put_back(connection)
        else:
            connection.close()


async def _read_line(connection: _Connection) -> bytes:
    start = 0
    while True:
        end = connection.buffer.find(b"\r\n", start)
        if end != -1:
            return connection.take(end + 2)[:-2]
        if len(connection.buffer) > MAX_HEAD_BYTES:
            raise BadResponse("a line longer than 64 KiB")
        start = max(0, len(connection.buffer) - 1)
        if not await connection.more():
            raise Disconnected("the connection closed inside the chunked body")


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]], bool]:
    """(status, reason, headers, is_http_1_0) of a response head without its final CRLFCRLF."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise BadResponse(f"invalid status line {status_line[:80]!r}")
    status = int(parts[1])
    # Text is read as UTF-8 (what aiohttp writes back out), so non-ASCII values
    # pass through unchanged; invalid bytes cannot be relayed and are replaced.
    reason = parts[2].decode("utf-8", "replace") if len(parts) == 3 else ""
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise BadResponse(f"invalid header line {line[:80]!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "replace")))
    return status, reason, headers, parts[0] == b"HTTP/1.0"


class Pool:
    """Idle keep-alive connections, per instance address."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.idle: dict[tuple[str, int], list[_Connection]] = {}

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self.idle.setdefault(connection.key, []).append(connection)

    def close_idle(self, older_than: float = IDLE_SECONDS) -> None:
        """Close connections idle for longer than `older_than` seconds (0: all)."""
        limit = time.monotonic() - older_than
        for key, connections in list(self.idle.items()):
            keep = []
            for connection in connections:
                if connection.is_closed or connection.idle_since <= limit or older_than == 0:
                    connection.close()
                else:
                    keep.append(connection)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        connections = self.idle.get(key)
        while connections:
            connection = connections.pop()
            if not connection.is_closed and not connection.buffer:
                return connection
            connection.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        try:
            _, connection = await self.loop.create_connection(lambda: _Connection(self.loop), key[0], key[1])
        except OSError as exc:
            raise ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from None
        connection.key = key
        return connection

    async def request(self, key: tuple[str, int], method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, timeout: float) -> Response:  # fmt: skip
        """Send one call to the instance at `key` and return once the answer's head is in.

        The timeout covers the whole call, body included; past it the body's
        reader gets TimeoutError.
        """
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {key[0]}:{key[1]}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if body or method not in BODYLESS_METHODS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("utf-8", "surrogateescape") + body
        deadline = self.loop.time() + timeout
        connection = self._take_idle(key)
        # A pooled connection the instance closed while it sat idle fails
        # before any answer; that is worth one more try on a new connection.
        may_retry = connection is not None
        while True:
            if connection is None:
                connection = await asyncio.wait_for(self._connect(key), max(0.0, deadline - self.loop.time()))
            timer = self.loop.call_at(deadline, connection.fail, TimeoutError())
            try:
                return await self._exchange(connection, method, data, timer)
            except Disconnected:
                timer.cancel()
                connection.close()
                if not may_retry or connection.received_any:
                    raise
                may_retry = False
                connection = None
            except BaseException:
                timer.cancel()
                connection.close()
                raise

    async def _exchange(
        self, connection: _Connection, method: str, data: bytes, timer: asyncio.TimerHandle | None
    ) -> Response:
        connection.received_any = False
        transport = connection.transport
        if transport is None or transport.is_closing():
            # The instance closed it between the pool handing it out (or the
            # connect) and now: nothing was sent, so the caller may try a new
            # connection, or another instance.
            raise Disconnected("the instance closed the connection before the call was sent")
        try:
            transport.write(data)
        except RuntimeError as exc:
            # uvloop's word for a transport closed under our feet ("the handler is closed").
            raise Disconnected(f"the instance closed the connection before the call was sent ({exc})") from None
        while True:
            buffer = connection.buffer
            end = buffer.find(b"\r\n\r\n")
            while end == -1:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise BadResponse("an answer head longer than 64 KiB")
                if not await connection.more():
                    raise Disconnected("the instance closed the connection before answering")
                connection.received_any = True
                end = buffer.find(b"\r\n\r\n")
            head = connection.take(end + 4)[:-4]
            status, reason, headers, is_http_1_0 = _parse_head(head)
            if 100 <= status < 200:
                # An interim answer (e.g. 103 Early Hints): the real one follows.
                connection.received_any = True
                continue
            break
        content_length = None
        transfer_encoding = connection_header = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise BadResponse(f"invalid Content-Length {value!r}")
                length = int(value)
                if content_length is not None and length != content_length:
                    raise BadResponse(f"conflicting Content-Length {value!r}")
                content_length = length
            elif lower == "transfer-encoding":
                transfer_encoding = (
                    value.lower() if transfer_encoding is None else f"{transfer_encoding}, {value.lower()}"
                )
            elif lower == "connection":
                connection_header = value.lower()
        if method == "HEAD" or status in NO_BODY_STATUSES:
            framing = "none"
        elif transfer_encoding is not None:
            framing = "chunked" if transfer_encoding.rsplit(",", 1)[-1].strip() == "chunked" else "close"
            content_length = None
        elif content_length is not None:
            framing = "length" if content_length else "none"
        else:
            framing = "close"
        if is_http_1_0:
            reusable = connection_header is not None and "keep-alive" in connection_header
        else:
            reusable = connection_header is None or "close" not in connection_header
        reusable = reusable and framing != "close"
        return Response(self, connection, status, reason, headers, content_length, framing, reusable, timer)

    def close(self) -> None:
        self.close_idle(0)
