"""The gateway's listening side.

A plain prediction call (HTTP/1.1, `/v1/infers/<service_id>…`, a body framed
by Content-Length, no Upgrade or Expect) is parsed here with llhttp
(httptools) and answered on this module's own connection protocol: aiohttp's
server machinery cost about 27 µs of CPU per call, a quarter of the gateway's
whole cost per call (bench/gateway.py). Every other request, and every later
request on its connection, is handed with the connection to aiohttp as it
arrived: WebSocket handshakes, chunked bodies, HTTP/1.0, the health and metrics
pages, oversized or malformed requests. So both paths answer alike; the call
logic itself (gateway.app.answer_call) is shared.
"""

from __future__ import annotations

import asyncio
import ctypes
import email.utils
import http
import logging
import os
import re
import signal
import time

import httptools
from aiohttp import web
from aiohttp.web_server import Server
from multidict import CIMultiDict

from gateway import metrics
from gateway.app import (
    CONFIG,
    TALLY,
    Call,
    Refusal,
    answer_call,
    create_app,
    new_event_loop,
    refusal_body,
    refusal_headers,
    request_id_for,
)
from gateway.config import GatewayConfig
from services.contract import INFER_PREFIX, ErrorCode

log = logging.getLogger("gateway")

INFER_PREFIX_BYTES = INFER_PREFIX.encode()
# A service id as the routing table keys them; any other path goes to aiohttp,
# which answers it as before (and never echoes it).
SERVICE_ID_RE = re.compile(r"[0-9A-Za-z-]{1,64}")
# aiohttp's own limits (gateway.app.create_app's handler_args): a request
# beyond them is handed over, so that its answer is aiohttp's 431.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 100
# A connection with no request for this long is closed (aiohttp's keep-alive default).
IDLE_SECONDS = 75.0
SWEEP_SECONDS = 5.0
# Reading pauses while this much of a pipelined next request waits.
PIPELINE_BUFFER_BYTES = 256 * 1024
# Requests with these methods or headers are aiohttp's to answer.
HANDED_OVER_METHODS = frozenset({b"HEAD", b"CONNECT"})
HANDED_OVER_HEADERS = frozenset({b"upgrade", b"transfer-encoding", b"expect"})
NO_BODY_STATUSES = frozenset({204, 304})
REASONS = {status.value: status.phrase for status in http.HTTPStatus}
# What the connection stops with when the caller went away during an answer.
GONE = ConnectionResetError("the caller closed the connection")


class _Head:
    """What llhttp reports of one request head (httptools' callbacks)."""

    __slots__ = ("url", "headers")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


class PlainCall:
    """A parsed plain call, waiting for its body."""

    __slots__ = ("method", "raw_path", "query", "service_id", "headers", "body_start", "end", "keep_alive")

    def __init__(
        self,
        method: str,
        raw_path: str,
        query: str,
        service_id: str,
        headers: CIMultiDict[str],
        body_start: int,
        end: int,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.service_id = service_id
        self.headers = headers
        self.body_start = body_start
        self.end = end
        self.keep_alive = keep_alive


def plain_call(raw: bytearray, head_end: int, max_header_bytes: int, max_body_bytes: int) -> PlainCall | None:
    """The request whose head ends at raw[head_end] (its CRLFCRLF) if it is a
    plain call this module answers, else None (aiohttp's to answer)."""
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(bytes(raw[: head_end + 4]))
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if parser.get_http_version() != "1.1":
        return None
    method = parser.get_method()
    url = head.url
    if method in HANDED_OVER_METHODS or not url.startswith(INFER_PREFIX_BYTES):
        return None
    if len(head.headers) > MAX_HEADERS or len(url) > MAX_LINE_BYTES:
        return None
    path, _, query = url.partition(b"?")
    service_id = path[len(INFER_PREFIX_BYTES) :].split(b"/", 1)[0].decode("latin-1")
    if not SERVICE_ID_RE.fullmatch(service_id):
        return None
    content_length = 0
    keep_alive = True
    header_bytes = 0
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in head.headers:
        lower = name.lower()
        header_bytes += len(name) + len(value) + 4
        if lower in HANDED_OVER_HEADERS or len(name) + len(value) + 2 > MAX_LINE_BYTES:
            return None
        if lower == b"content-length":
            if content_length or not value.isdigit():
                return None  # two lengths, or one llhttp let through: aiohttp decides
            content_length = int(value)
        elif lower == b"connection" and b"close" in (token.strip().lower() for token in value.split(b",")):
            # Read here: llhttp's own verdict is reset once a bodiless request is complete.
            keep_alive = False
        # As aiohttp reads them: UTF-8, undecodable bytes kept as they came.
        headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
    if header_bytes > max_header_bytes or content_length > max_body_bytes:
        return None
    body_start = head_end + 4
    return PlainCall(
        method.decode("ascii"),
        path.decode("utf-8", "surrogateescape"),
        query.decode("utf-8", "surrogateescape"),
        service_id,
        headers,
        body_start,
        body_start + content_length,
        keep_alive,
    )


class HttpDate:
    """The Date header's value, made once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = email.utils.formatdate(second, usegmt=True)
        return self.value


HTTP_DATE = HttpDate()


def response_head(
    status: int, reason: str, headers: list[tuple[str, str]], content_length: int | None, keep_alive: bool
) -> bytes:
    """An HTTP/1.1 answer's head. No length means a chunked body; answers
    that have no body by definition get neither."""
    lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}\r\n"]
    has_date = False
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
        if not has_date and len(name) == 4 and name.lower() == "date":
            has_date = True
    if not has_date:
        lines.append(f"Date: {HTTP_DATE.now()}\r\n")
    if status in NO_BODY_STATUSES or status < 200:
        pass
    elif content_length is None:
        lines.append("Transfer-Encoding: chunked\r\n")
    else:
        lines.append(f"Content-Length: {content_length}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class PlainResponder:
    """Writes a call's answer onto the caller's connection."""

    __slots__ = ("connection", "keep_alive", "is_started", "is_chunked")

    def __init__(self, connection: PlainConnection, keep_alive: bool) -> None:
        self.connection = connection
        self.keep_alive = keep_alive
        self.is_started = False
        self.is_chunked = False

    async def send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.is_started = True
        if status in NO_BODY_STATUSES:
            body = b""
        self.connection.write(response_head(status, reason, headers, len(body), self.keep_alive) + body)

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]], content_length: int | None) -> None:
        self.is_started = True
        self.is_chunked = content_length is None and status not in NO_BODY_STATUSES and status >= 200
        self.connection.write(response_head(status, reason, headers, content_length, self.keep_alive))

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.is_chunked:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        await self.connection.write_and_drain(chunk)

    async def end(self) -> None:
        if self.is_chunked:
            self.connection.write(b"0\r\n\r\n")


class PlainConnection(asyncio.Protocol):
    """One caller's connection while it sends plain calls; handed to aiohttp
    at its first other request."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.remote = ""
        self.pending: PlainCall | None = None
        self.task: asyncio.Task[None] | None = None
        self.is_closed = False
        self.is_eof = False
        self.is_reading_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.is_writing_paused = False
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if peer else ""
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        self.last_active = time.monotonic()
        if self.task is None:
            self._next()
        elif len(self.raw) > PIPELINE_BUFFER_BYTES and not self.is_reading_paused:
            self.is_reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.is_eof = True
        # Keep the connection open for the answer of a call under way.
        return self.task is not None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.is_closed = True
        self.listener.connections.discard(self)
        self._wake_writer()

    def pause_writing(self) -> None:
        self.is_writing_paused = True

    def resume_writing(self) -> None:
        self.is_writing_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if not self.is_closed and transport is not None and not transport.is_closing():
            transport.write(data)

    async def write_and_drain(self, data: bytes) -> None:
        if self.is_closed:
            raise GONE
        self.write(data)
        while self.is_writing_paused and not self.is_closed:
            self.drain_waiter = self.listener.loop.create_future()
            await self.drain_waiter
        if self.is_closed:
            raise GONE

    def _next(self) -> None:
        """Start the call whose bytes are in, hand the connection over, or wait for more."""
        raw = self.raw
        listener = self.listener
        pending = self.pending
        if pending is None:
            head_end = raw.find(b"\r\n\r\n")
            if head_end == -1:
                if len(raw) > listener.max_head_bytes:
                    self._hand_over()
                return
            pending = plain_call(raw, head_end, listener.max_header_bytes, listener.max_body_bytes)
            if pending is None:
                self._hand_over()
                return
        if len(raw) < pending.end:
            self.pending = pending
            return
        self.pending = None
        call = Call(
            listener.app,
            pending.method,
            pending.service_id,
            pending.raw_path,
            pending.query,
            pending.headers,
            self.remote,
            request_id_for(pending.headers),
            time.perf_counter(),
        )
        call.body = bytes(raw[pending.body_start : pending.end])
        del raw[: pending.end]
        self.task = listener.loop.create_task(self._answer(call, pending.keep_alive))

    async def _answer(self, call: Call, keep_alive: bool) -> None:
        out = PlainResponder(self, keep_alive and not self.is_eof)
        status = 500
        try:
            status = await answer_call(call, out)
        except (ConnectionError, TimeoutError, OSError) as exc:
            # The model's answer broke off after its head went out, or the caller left.
            log.debug("call %s cut off: %s", call.request_id, exc)
            out.keep_alive = False
        except Exception:
            log.exception("call %s failed in the gateway", call.request_id)
            out.keep_alive = False
            if not out.is_started:
                refusal = Refusal(500, ErrorCode.INTERNAL, "The gateway could not handle this request.")
                status = 500
                await out.send(
                    500, "", refusal_headers(refusal, call.request_id), refusal_body(refusal, call.request_id)
                )
        finally:
            self.task = None
        self.listener.tally.count(call.authorized_service, status, time.perf_counter() - call.started)
        self.last_active = time.monotonic()
        transport = self.transport
        if transport is None or self.is_closed:
            return
        if not out.keep_alive or not out.is_started or self.is_eof:
            if out.is_started:
                transport.close()
            else:
                transport.abort()
            return
        if self.is_reading_paused:
            self.is_reading_paused = False
            transport.resume_reading()
        if self.raw:
            self._next()

    def _hand_over(self) -> None:
        """Give the connection, and what it sent from the current request on, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self.listener.connections.discard(self)
        handler = self.listener.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data = bytes(self.raw)
        self.raw.clear()
        if data:
            handler.data_received(data)
        if self.is_eof:
            handler.eof_received()
        if self.is_reading_paused:
            self.is_reading_paused = False
            transport.resume_reading()

    def close_if_idle(self, idle_before: float) -> None:
        if self.task is None and self.last_active < idle_before and self.transport is not None:
            self.transport.close()


class Listener:
    """The protocol factory of one gateway process's listening socket."""

    def __init__(self, app: web.Application, aiohttp_server: Server, loop: asyncio.AbstractEventLoop) -> None:
        config: GatewayConfig = app[CONFIG]
        self.app = app
        self.aiohttp_server = aiohttp_server
        self.loop = loop
        self.tally: metrics.CallTally = app[TALLY]
        self.max_header_bytes = config.max_header_bytes
        self.max_body_bytes = config.max_body_bytes
        self.max_head_bytes = config.max_header_bytes + MAX_LINE_BYTES + 4
        self.connections: set[PlainConnection] = set()

    def __call__(self) -> PlainConnection:
        return PlainConnection(self)

    def close_idle(self) -> None:
        idle_before = time.monotonic() - IDLE_SECONDS
        for connection in list(self.connections):
            connection.close_if_idle(idle_before)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, and the others once their call is answered (at most `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            for connection in list(self.connections):
                connection.is_eof = True  # no further call on it
                connection.close_if_idle(float("inf"))
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()


async def _sweep(listener: Listener) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        listener.close_idle()


SHUTDOWN_SECONDS = 60.0


async def run(config: GatewayConfig) -> None:
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    listener = Listener(runner.app, runner.server, loop)
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    server = await loop.create_server(listener, config.host, config.port, reuse_port=True, backlog=1024)
    sweep = asyncio.create_task(_sweep(listener))
    try:
        await stopping.wait()
    finally:
        sweep.cancel()
        server.close()
        await listener.shutdown(SHUTDOWN_SECONDS)
        await runner.cleanup()


def serve(config: GatewayConfig) -> None:
    """Run one gateway process; several share the port through SO_REUSEPORT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway[%(process)d]: %(message)s")
    loop = new_event_loop()
    log.info("event loop: %s", type(loop).__module__)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(config))
    finally:
        loop.close()


def serve_child(config: GatewayConfig, parent_pid: int) -> None:
    """One process of a multi-process gateway: it ends with its parent, even a killed one."""
    try:
        # PR_SET_PDEATHSIG (Linux): the kernel sends SIGTERM when the parent dies.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        return
    serve(config)
