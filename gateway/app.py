"""The gateway's HTTP side: authenticate, route, proxy, count."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import ipaddress
import itertools
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import aiohttp
import psycopg
from aiohttp import http_exceptions, web, web_protocol
from aiohttp.http import HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

try:
    import uvloop
except ImportError:  # optional: the gateway works on asyncio's own loop
    uvloop = None  # type: ignore[assignment]

from gateway import metrics, store
from gateway import upstream as upstream_client
from gateway.collect import CollectionConfig, Collector, ResponseSample
from gateway.config import DatabaseConfig, GatewayConfig
from gateway.keeper import TableHolder, TableKeeper
from gateway.limits import TrafficLimiter
from gateway.routing import AuthResult, RoutingTable, ServiceRoute, Upstream, VersionRoute, authorize
from gateway.stats import CallStats
from services.contract import INFER_PREFIX, ErrorCode, secret_hash, status_label

log = logging.getLogger("gateway")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip
CREDENTIAL_HEADERS = frozenset({"x-auth-token", "authorization", "x-apig-appcode"})
# Set by the gateway, never taken from the caller as they are.
GATEWAY_SET = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})
# Claims about the client that only a proxy the model trusts may make.
CLIENT_CLAIMS = frozenset({"forwarded", "x-real-ip"})
# Not sent on to the model: hop-by-hop headers, the caller's credentials, what
# the gateway sets itself, and Expect (the gateway has read the body already).
NOT_FORWARDED = HOP_BY_HOP | CREDENTIAL_HEADERS | GATEWAY_SET | CLIENT_CLAIMS | {"expect"}
# A caller's own X-Request-Id is kept when it looks like an id; otherwise the gateway makes one.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The ids the gateway makes: 32 hex digits, random per process, then a count
# (a fresh uuid4 per call cost a urandom call each time).
REQUEST_ID_PREFIX = os.urandom(10).hex()
REQUEST_ID_COUNTER = itertools.count()
INFER_ROUTE = "infer"
# The service a call was authorized for (the only service id a metric is labelled with).
AUTHORIZED_SERVICE = "rts.authorized_service"
# When the middleware took the call (time.perf_counter()).
STARTED = "rts.started"
PREFIX_LENGTH = len(INFER_PREFIX)
# Answers up to this size (with a Content-Length) are read whole and sent in
# one write; larger ones are streamed.
BUFFERED_RESPONSE_BYTES = 256 * 1024
# An instance that refused a connection is skipped for this long, unless a
# reload of the table lists it under a new port first.
SUSPECT_SECONDS = 2.0
# The first wait before a call that every instance refused goes round again;
# each further wait is twice as long (GatewayConfig.connect_retry_seconds in all).
CONNECT_RETRY_FIRST_DELAY_SECONDS = 0.05

CONFIG = web.AppKey("config", GatewayConfig)
TABLE = web.AppKey("table", TableHolder)
KEEPER = web.AppKey("keeper", TableKeeper)
STATS = web.AppKey("stats", CallStats)
POOL = web.AppKey("pool", upstream_client.Pool)
# An upstream that refused a connection -> until when (monotonic) it is tried last.
SUSPECTS = web.AppKey("suspects", dict[Upstream, float])
# aiohttp's client, for WebSocket calls only (HTTP calls use gateway.upstream).
WS_SESSION = web.AppKey("ws_session", aiohttp.ClientSession)
LIMITER = web.AppKey("limiter", TrafficLimiter)
COLLECTOR = web.AppKey("collector", Collector)
TALLY = web.AppKey("tally", metrics.CallTally)
# Set by the WebSocket handshake itself, never copied from the caller's.
WEBSOCKET_OWN_HEADERS = frozenset(
    {"host", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions"}
)


def conninfo(db: DatabaseConfig) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname=db.name, user=db.user, password=db.password or None, host=db.host, port=db.port
    )


def error(status: int, code: str, message: str) -> web.Response:
    """Every answer the gateway makes itself: JSON, with the call's request id."""
    request_id = REQUEST_ID.get()
    response = web.Response(
        status=status,
        body=json.dumps({"error_code": code, "error_msg": message, "request_id": request_id}).encode(),
        content_type="application/json",
    )
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


ERROR_CODES_BY_STATUS = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
    431: ErrorCode.HEADERS_TOO_LARGE,
}


@web.middleware
async def hygiene(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Around every request: a request id, HTTP/1.x only, a cap on the headers'
    total size, and JSON for the errors aiohttp itself raises (404, 405, …)."""
    REQUEST_ID.set(request_id_for(request.headers))
    if request.version not in (HttpVersion10, HttpVersion11):
        _answer_in_http11(request)
        return error(505, ErrorCode.VERSION_NOT_SUPPORTED, "Only HTTP/1.0 and HTTP/1.1 are spoken here.")
    limit = request.app[CONFIG].max_header_bytes
    if sum(len(name) + len(value) + 4 for name, value in request.raw_headers) > limit:
        return error(431, ErrorCode.HEADERS_TOO_LARGE, f"The request's headers are larger than {limit} bytes.")
    started = request[STARTED] = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        code = ERROR_CODES_BY_STATUS.get(exc.status, ErrorCode.BAD_REQUEST)
        response = error(exc.status, code, exc.reason)
    if (request.match_info.route.name or "").startswith(INFER_ROUTE):
        request.app[TALLY].count(
            request.get(AUTHORIZED_SERVICE, metrics.UNKNOWN_SERVICE), response.status, time.perf_counter() - started
        )
    return response


def _answer_in_http11(request: web.BaseRequest) -> None:
    """aiohttp writes a response's status line in the request's HTTP version; a
    request line that claims HTTP/2.0 (or 0.9) must still get an HTTP/1.1 answer."""
    # aiohttp keeps the version in `_version` and caches the `version` property.
    request._version = HttpVersion11
    request._cache.pop("version", None)


def _protocol_error(
    self: web_protocol.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's answer to a request it could not parse, as JSON, and without
    echoing the bad line back (its own answer is text that quotes it)."""
    log.debug("unparsable request from %s: %s", request.remote, exc)
    if request.writer.output_size > 0:
        raise ConnectionError("the answer was started already; the connection is cut")
    _answer_in_http11(request)
    if isinstance(exc, http_exceptions.LineTooLong) or (message and "too many headers" in message.lower()):
        response = error(431, ErrorCode.HEADERS_TOO_LARGE, "The request's request line or headers are too large.")
    elif status == 400:
        response = error(400, ErrorCode.BAD_REQUEST, "The request is not valid HTTP/1.1.")
    else:
        response = error(500, ErrorCode.INTERNAL, "The gateway could not handle this request.")
    response.force_close()
    return response


# Every process of the gateway answers unparsable requests in JSON.
web_protocol.RequestHandler.handle_error = _protocol_error  # type: ignore[method-assign]


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the gateway makes itself instead of a model's."""

    status: int
    code: str
    message: str
    retry_after: str = ""


def refusal_body(refusal: Refusal, request_id: str) -> bytes:
    return json.dumps({"error_code": refusal.code, "error_msg": refusal.message, "request_id": request_id}).encode()


def refusal_headers(refusal: Refusal, request_id: str) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json"), ("X-Request-Id", request_id)]
    if refusal.retry_after:
        headers.append(("Retry-After", refusal.retry_after))
    return headers


class Call:
    """One prediction call, however it reached the gateway (gateway.server's
    own connections or aiohttp's): what routing, proxying and counting need."""

    __slots__ = (
        "app", "method", "service_id", "raw_path", "query", "headers", "remote", "request_id", "body",
        "started", "authorized_service", "held",
    )  # fmt: skip

    def __init__(
        self,
        app: web.Application,
        method: str,
        service_id: str,
        raw_path: str,
        query: str,
        headers: CIMultiDict[str] | CIMultiDictProxy[str],
        remote: str,
        request_id: str,
        started: float,
    ) -> None:
        self.app = app
        self.method = method
        self.service_id = service_id
        # The path and query exactly as the caller encoded them.
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.remote = remote
        self.request_id = request_id
        self.body = b""
        self.started = started
        # The service the call was authorized for (the only service id a metric is labelled with).
        self.authorized_service = metrics.UNKNOWN_SERVICE
        # The routes the call holds in flight (routing.InFlight), released when it ends.
        self.held: list[tuple[int, ...]] = []


def request_id_for(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> str:
    """The caller's X-Request-Id when it looks like an id, else a new one."""
    request_id = headers.get("X-Request-Id", "")
    if REQUEST_ID_RE.fullmatch(request_id):
        return request_id
    return f"{REQUEST_ID_PREFIX}{next(REQUEST_ID_COUNTER):012x}"


class Responder(Protocol):
    """Where a call's answer goes: whole, or as a head and then pieces."""

    async def send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None: ...

    async def start(
        self, status: int, reason: str, headers: list[tuple[str, str]], content_length: int | None
    ) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self) -> None: ...


class AiohttpResponder:
    """A call's answer as the aiohttp response its handler returns."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.response = web.Response(status=status, reason=reason or None, body=body, headers=CIMultiDict(headers))

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]], content_length: int | None) -> None:
        response = self.response = web.StreamResponse(
            status=status, reason=reason or None, headers=CIMultiDict(headers)
        )
        if content_length is not None:
            response.content_length = content_length
        await response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def end(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


async def send_refusal(call: Call, out: Responder, refusal: Refusal) -> int:
    await out.send(
        refusal.status, "", refusal_headers(refusal, call.request_id), refusal_body(refusal, call.request_id)
    )
    return refusal.status


def _credentials(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> tuple[str | None, str | None]:
    token = headers.get("X-Auth-Token")
    if not token:
        authorization = headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
    return token or None, headers.get("X-Apig-AppCode") or None


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than the limit."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None:
        # Within the limit, and client_max_size is the limit: read() suffices.
        return None if length > limit else await request.read()
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _callable_service(call: Call) -> ServiceRoute | Refusal:
    """The service the caller may call now, or the refusal to answer with."""
    app = call.app
    table: RoutingTable = app[TABLE].current
    service_id = call.service_id
    token, app_code = _credentials(call.headers)
    if token is None and app_code is None:
        return Refusal(
            401,
            ErrorCode.NO_CREDENTIALS,
            "No credentials: send X-Auth-Token, Authorization: Bearer, or X-Apig-AppCode.",
        )
    token_hash = secret_hash(token) if token is not None else None
    result, service = authorize(table, service_id, token, app_code, time.time(), token_hash)
    if result == AuthResult.UNAUTHENTICATED:
        return Refusal(401, ErrorCode.BAD_CREDENTIALS, "The credentials are invalid, expired or revoked.")
    if result == AuthResult.NOT_FOUND or service is None:
        return Refusal(404, ErrorCode.NOT_FOUND, f"Service {service_id} does not exist.")
    if token_hash is not None and token_hash in table.tokens:
        app[STATS].token_used(token_hash)
    call.authorized_service = service.service_id
    if not service.is_routable:
        label = status_label(service.status)
        return Refusal(503, ErrorCode.NOT_CALLABLE, f"Service {service_id} is {label}, not Running.")
    return service


def _forwarded_headers(call: Call) -> list[tuple[str, str]]:
    """The caller's headers as the model sees them: no hop-by-hop headers (nor
    those the caller names in Connection), no credentials, no claims about the
    client; X-Forwarded-For, X-Forwarded-Proto and X-Request-Id set by the gateway."""
    dropped = NOT_FORWARDED
    caller_headers = call.headers
    connection = caller_headers.get("Connection")
    if connection:
        dropped = dropped | {name.strip().lower() for name in connection.split(",")}
    headers = [(k, v) for k, v in caller_headers.items() if k.lower() not in dropped]
    forwarded_for = caller_headers.get("X-Forwarded-For")
    remote = call.remote
    headers.append(("X-Forwarded-For", f"{forwarded_for}, {remote}" if forwarded_for else remote))
    headers.append(("X-Forwarded-Proto", "http"))
    headers.append(("X-Request-Id", call.request_id))
    return headers


def _suspected_upstreams(app: web.Application) -> set[Upstream]:
    """Instances that refused a connection a moment ago."""
    suspects = app[SUSPECTS]
    if not suspects:
        return set()
    now = time.monotonic()
    return {upstream for upstream, until in suspects.items() if until > now}


async def answer_call(call: Call, out: Responder, request: web.Request | None = None) -> int:
    """Authorize, route and proxy one prediction call; returns the status sent.

    `request` is aiohttp's, for a call that came through it: its body is read
    here (after the credentials are checked), and only it can be a WebSocket
    handshake. A call from gateway.server comes with its body read."""
    service = _callable_service(call)
    if isinstance(service, Refusal):
        return await send_refusal(call, out, service)
    # Counted before the first await: a drain that finds no call held against a
    # version knows no call can still reach it.
    inflight = call.app[TABLE].inflight
    call.held.append(inflight.hold(service))
    try:
        return await _call(call, service, out, request)
    finally:
        for config_ids in call.held:
            inflight.release(config_ids)


async def _call(call: Call, service: ServiceRoute, out: Responder, request: web.Request | None) -> int:
    is_upgrade = call.headers.get("Upgrade", "").lower() == "websocket"
    if is_upgrade or service.is_websocket:
        if not service.is_websocket:
            return await send_refusal(
                call,
                out,
                Refusal(
                    400,
                    ErrorCode.NOT_WEBSOCKET,
                    f"Service {service.service_id} is not a WebSocket service: call it over HTTP.",
                ),
            )
        if not is_upgrade or request is None:
            return await send_refusal(
                call,
                out,
                Refusal(
                    426,
                    ErrorCode.WEBSOCKET_REQUIRED,
                    f"Service {service.service_id} is a WebSocket service: connect with WebSocket (ws:// or wss://).",
                ),
            )
        return await _proxy_websocket(request, call, service, out)
    if service.traffic_limit:
        wait = await call.app[LIMITER].wait_seconds(service.service_id, service.traffic_limit)
        if wait:
            return await send_refusal(call, out, _refuse_over_limit(call, service))
    if request is not None:
        limit = call.app[CONFIG].max_body_bytes
        body = await _read_body(request, limit)
        if body is None:
            return await send_refusal(
                call, out, Refusal(413, ErrorCode.BODY_TOO_LARGE, f"The request body is larger than {limit} bytes.")
            )
        call.body = body
    is_sampled = bool(service.collect_percent) and Collector.is_sampled(service.collect_percent, call.app[TABLE].rng)
    return await _proxy(call, service, out, _forwarded_headers(call), is_sampled)


def _collection_done(
    call: Call,
    service: ServiceRoute,
    version: VersionRoute,
    status: int,
    response_body: bytes = b"",
    response_size: int = 0,
    response_headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Queue a sampled call's record for the next flush; a full queue drops it.
    Never raises: collection must not fail a call."""
    try:
        now = time.perf_counter()
        response_content_type = ""
        for name, value in response_headers:
            if len(name) == 12 and name.lower() == "content-type":
                response_content_type = value
                break
        is_added = call.app[COLLECTOR].add(
            service_id=service.service_id,
            config_id=version.config_id,
            version_label=version.label,
            created_at=time.time() - (now - call.started),
            request_id=call.request_id,
            method=call.method,
            request_body=call.body if service.collect_request else None,
            request_size=len(call.body),
            request_content_type=call.headers.get("Content-Type", ""),
            status=status,
            latency_ms=(now - call.started) * 1000,
            response_body=response_body if service.collect_response else None,
            response_size=response_size,
            response_content_type=response_content_type,
        )
        if not is_added:
            metrics.COLLECTION_DROPPED.inc()
    except Exception:  # a bug here must cost a record, not the call
        log.exception("data collection of a call failed; the call itself is not affected")
        metrics.COLLECTION_DROPPED.inc()


def _refuse_over_limit(call: Call, service: ServiceRoute) -> Refusal:
    """A 429 for a call beyond the service's traffic limit, counted as a
    limited (and failed) call of the service."""
    counted = service.counted_version
    if counted is not None:
        call.app[STATS].record(
            service.service_id, counted.config_id, (time.perf_counter() - call.started) * 1000, True, is_limited=True
        )
    metrics.LIMITED_CALLS.inc()
    return Refusal(
        429,
        ErrorCode.TRAFFIC_LIMITED,
        f"Service {service.service_id} takes at most {service.traffic_limit} calls per second; try again shortly.",
        retry_after="1",
    )


async def _proxy(
    call: Call,
    service: ServiceRoute,
    out: Responder,
    headers: list[tuple[str, str]],
    is_sampled: bool = False,
) -> int:
    """Send the call to an instance picked by traffic weight and round robin, and relay its answer."""
    app = call.app
    started = call.started
    service_id = service.service_id
    timeout = app[CONFIG].call_timeout_seconds
    raw_path = call.raw_path
    rest_at = raw_path.find("/", PREFIX_LENGTH)
    target_query = "?" + call.query if call.query else ""
    suspects = app[SUSPECTS]
    avoid = _suspected_upstreams(app)
    tried: set[Upstream] = set()
    rng = app[TABLE].rng
    pool: upstream_client.Pool = app[POOL]
    stats: CallStats = app[STATS]

    version: VersionRoute | None = None
    upstream: Upstream | None = None
    last_error = ""
    retry_until = 0.0
    retry_delay = CONNECT_RETRY_FIRST_DELAY_SECONDS
    # Only connection failures are retried (the call never reached a model),
    # on another instance, at most once per instance. Instances that refused a
    # connection a moment ago are tried last, not never: the table, not this
    # process's hunch, says which instances are healthy. When every instance
    # refused, the call waits a moment and goes round again, for at most
    # connect_retry_seconds.
    while True:
        exclude = tried | avoid if tried else avoid
        version = service.pick_version(rng, exclude)
        if version is None and avoid:
            avoid = set()
            continue
        if version is not None:
            upstream = version.pick_upstream(exclude)
        if version is None or upstream is None:
            if not last_error:
                break
            now = time.monotonic()
            retry_until = retry_until or now + app[CONFIG].connect_retry_seconds
            if now + retry_delay > retry_until:
                break
            await asyncio.sleep(retry_delay)
            retry_delay *= 2
            again = _callable_service(call)  # the table may have moved on meanwhile
            if isinstance(again, Refusal):
                return await send_refusal(call, out, again)
            # The call now holds the fresh route as well (answer_call releases both).
            call.held.append(app[TABLE].inflight.hold(again))
            service, tried, avoid, last_error = again, set(), set(), ""
            continue
        target = (raw_path[rest_at:] if rest_at != -1 else version.predict_path) + target_query
        try:
            answer = await pool.request(upstream, call.method, target, headers, call.body, timeout)
        except (upstream_client.ConnectError, upstream_client.Disconnected) as exc:
            metrics.UPSTREAM_ERRORS.labels("connect").inc()
            suspects[upstream] = time.monotonic() + SUSPECT_SECONDS
            tried.add(upstream)
            last_error = str(exc)
            continue
        except upstream_client.BadResponse as exc:
            metrics.UPSTREAM_ERRORS.labels("bad_response").inc()
            stats.record(service_id, version.config_id, (time.perf_counter() - started) * 1000, True)
            if is_sampled:
                _collection_done(call, service, version, 502)
            return await send_refusal(
                call, out, Refusal(502, ErrorCode.BAD_UPSTREAM_ANSWER, f"The instance did not answer in HTTP: {exc}")
            )
        except TimeoutError:
            metrics.UPSTREAM_ERRORS.labels("timeout").inc()
            stats.record(service_id, version.config_id, (time.perf_counter() - started) * 1000, True)
            if is_sampled:
                _collection_done(call, service, version, 504)
            return await send_refusal(
                call, out, Refusal(504, ErrorCode.UPSTREAM_TIMEOUT, f"The model did not answer within {timeout:g} s.")
            )
        return await _relay(call, answer, out, service, version, is_sampled)

    # A call that reached no model is still a failed call of the service.
    counted = service.counted_version
    if counted is not None:
        stats.record(service_id, counted.config_id, (time.perf_counter() - started) * 1000, True)
    if last_error:
        refusal = Refusal(
            502, ErrorCode.CONNECT_FAILED, f"Could not connect to an instance of the service: {last_error}"
        )
    else:
        refusal = Refusal(503, ErrorCode.NO_HEALTHY_INSTANCE, f"Service {service_id} has no healthy instance.")
    return await send_refusal(call, out, refusal)


async def _proxy_websocket(
    request: web.Request, call: Call, service: ServiceRoute, out: AiohttpResponder | Responder
) -> int:
    """Connect to an instance picked as for an HTTP call, then relay messages
    both ways until either side closes. The caller's subprotocols are offered to
    the model, and the one it picks is the caller's answer."""
    app = call.app
    config = app[CONFIG]
    session: aiohttp.ClientSession = app[WS_SESSION]
    raw_path = call.raw_path
    rest_at = raw_path.find("/", PREFIX_LENGTH)
    query = call.query
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers = [(k, v) for k, v in _forwarded_headers(call) if k.lower() not in WEBSOCKET_OWN_HEADERS]
    tried: set[Upstream] = set()
    last_error = ""
    while True:
        version = service.pick_version(app[TABLE].rng, tried)
        upstream = version.pick_upstream(tried) if version is not None else None
        if version is None or upstream is None:
            break
        target = (raw_path[rest_at:] if rest_at != -1 else version.predict_path) + ("?" + query if query else "")
        host, port = upstream
        try:
            model = await session.ws_connect(
                f"ws://{host}:{port}{target}",
                protocols=protocols,
                headers=headers,
                max_msg_size=config.max_body_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except (aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError, TimeoutError) as exc:
            metrics.UPSTREAM_ERRORS.labels("connect").inc()
            tried.add(upstream)
            last_error = str(exc) or type(exc).__name__
            continue
        break
    if version is None or upstream is None:
        if last_error:
            refusal = Refusal(502, ErrorCode.CONNECT_FAILED, f"Could not open a WebSocket to an instance: {last_error}")
        else:
            refusal = Refusal(
                503, ErrorCode.NO_HEALTHY_INSTANCE, f"Service {service.service_id} has no healthy instance."
            )
        return await send_refusal(call, out, refusal)

    caller = web.WebSocketResponse(
        protocols=(model.protocol,) if model.protocol else (), max_msg_size=config.max_body_bytes
    )
    if isinstance(out, AiohttpResponder):
        out.response = caller
    is_failed = False
    try:
        await caller.prepare(request)
        to_model = asyncio.create_task(_relay_messages(caller, model))
        to_caller = asyncio.create_task(_relay_messages(model, caller))
        done, pending = await asyncio.wait({to_model, to_caller}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        is_failed = any(task.exception() is not None for task in done if not task.cancelled())
    finally:
        await model.close()
        await caller.close()
        app[STATS].record(service.service_id, version.config_id, (time.perf_counter() - call.started) * 1000, is_failed)
    return 101


async def _relay_messages(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Forward text and binary messages until the source closes; its close code goes on."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.ERROR:
            raise ConnectionError(f"WebSocket error: {source.exception()}")
    code = source.close_code or aiohttp.WSCloseCode.OK
    await sink.close(code=code)


async def _relay(
    call: Call,
    answer: upstream_client.Response,
    out: Responder,
    service: ServiceRoute,
    version: VersionRoute,
    is_sampled: bool = False,
) -> int:
    """Send the model's answer back with its status, headers and body unchanged.

    A small answer of known length is read whole and sent in one write; any
    other is streamed as it arrives (and an answer to HEAD keeps its length).
    A sampled call's record keeps the answer's first bytes as they pass.
    """
    started = call.started
    status = sent_status = answer.status
    is_failed = status >= 400
    headers = [(key, value) for key, value in answer.headers if key.lower() not in HOP_BY_HOP]
    headers.append(("X-Request-Id", call.request_id))
    length = answer.content_length
    body = b""
    sample: ResponseSample | None = None
    try:
        if length is not None and length <= BUFFERED_RESPONSE_BYTES and call.method != "HEAD":
            try:
                body = await answer.read()
            except TimeoutError:
                is_failed = True
                sent_status = 504
                timeout = call.app[CONFIG].call_timeout_seconds
                return await send_refusal(
                    call,
                    out,
                    Refusal(504, ErrorCode.UPSTREAM_TIMEOUT, f"The model did not answer within {timeout:g} s."),
                )
            except upstream_client.UpstreamError as exc:
                is_failed = True
                sent_status = 502
                return await send_refusal(
                    call,
                    out,
                    Refusal(
                        502,
                        ErrorCode.BAD_UPSTREAM_ANSWER,
                        f"The connection to the instance broke during the answer: {exc}",
                    ),
                )
            await out.send(status, answer.reason, headers, body)
            return status
        if is_sampled:
            sample = ResponseSample(call.app[COLLECTOR].config.body_max_bytes)
        await out.start(status, answer.reason, headers, length)
        async for chunk in answer.iter_chunks():
            if sample is not None:
                sample.add(chunk)
            await out.write(chunk)
        await out.end()
        return status
    except (upstream_client.UpstreamError, TimeoutError, ConnectionResetError):
        # The headers are out already: all that is left is to cut the connection.
        is_failed = True
        raise
    finally:
        answer.release()
        call.app[STATS].record(
            call.authorized_service, version.config_id, (time.perf_counter() - started) * 1000, is_failed
        )
        if is_sampled:
            if sample is not None:
                body = sample.body()
            size = sample.size if sample is not None else len(body)
            _collection_done(call, service, version, sent_status, body, size, answer.headers)


async def infer(request: web.Request) -> web.StreamResponse:
    """A prediction call that came through aiohttp (gateway.server takes the
    plain ones itself): chunked or oversized bodies, HTTP/1.0, WebSocket."""
    raw_path = request.rel_url.raw_path
    call = Call(
        request.app,
        request.method,
        request.match_info["service_id"],
        raw_path,
        request.rel_url.raw_query_string,
        request.headers,
        request.remote or "",
        REQUEST_ID.get(),
        request.get(STARTED, time.perf_counter()),
    )
    out = AiohttpResponder(request)
    try:
        await answer_call(call, out, request)
    finally:
        request[AUTHORIZED_SERVICE] = call.authorized_service
    assert out.response is not None
    return out.response


async def health(request: web.Request) -> web.Response:
    """That the gateway is up: nothing more, to anyone."""
    return web.json_response({"status": "ok"})


async def table_health(request: web.Request) -> web.Response:
    """For the operator on the gateway's own machine only: the table's size and
    freshness. Every change committed before `loaded_at` (a UNIX time) is in it;
    each request also asks the keeper to move `loaded_at` up to now, so polling
    this tells when a change is in."""
    if not _is_local_caller(request):
        return error(404, ErrorCode.NOT_FOUND, "Not found.")
    table: RoutingTable = request.app[TABLE].current
    keeper = request.app[KEEPER]
    keeper.request_probe()
    return web.json_response(
        {"status": "ok", "services": len(table.services), "loaded_at": table.loaded_at, **keeper.health()}
    )


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus metrics, for a scraper on the gateway's own machine."""
    if not _is_local_caller(request):
        return error(404, ErrorCode.NOT_FOUND, "Not found.")
    _table_metrics_set(request.app)
    request.app[TALLY].flush()
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _table_metrics_set(app: web.Application) -> None:
    table: RoutingTable = app[TABLE].current
    metrics.TABLE_SERVICES.set(len(table.services))
    metrics.TABLE_TOKENS.set(len(table.tokens))
    if table.loaded_at:
        metrics.TABLE_LOADED_AT.set(table.loaded_at)


def _is_local_caller(request: web.Request) -> bool:
    """A caller on this machine that came through no proxy."""
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _forget_stale(app: web.Application) -> None:
    """Drop lapsed suspicions and long-idle upstream connections, so neither piles up."""
    suspects = app[SUSPECTS]
    if suspects:
        now = time.monotonic()
        for upstream in [u for u, until in suspects.items() if until <= now]:
            del suspects[upstream]
    app[POOL].close_idle()


async def _flush_loop(app: web.Application) -> None:
    conn_holder: dict[str, psycopg.AsyncConnection[Any] | None] = {"conn": None}
    while True:
        await asyncio.sleep(1.0)
        await _flush_once(app, conn_holder)
        _forget_stale(app)
        _table_metrics_set(app)
        app[TALLY].flush()


async def _flush_once(app: web.Application, conn_holder: dict[str, psycopg.AsyncConnection[Any] | None]) -> None:
    stats: CallStats = app[STATS]
    batch = stats.take()
    used_tokens = stats.take_used_tokens()
    records = app[COLLECTOR].take()
    if not batch and not used_tokens and not records:
        return
    now = dt.datetime.now(dt.UTC)
    bucket_start = now.replace(second=0, microsecond=0)
    try:
        conn = conn_holder["conn"]
        if conn is None or conn.closed:
            conn = conn_holder["conn"] = await store.connect(conninfo(app[CONFIG].database))
        await store.flush_stats(conn, batch, bucket_start)
        await store.touch_tokens(conn, used_tokens, now)
    except (psycopg.Error, OSError) as exc:
        log.warning("statistics flush failed, keeping the counts for the next one: %s", exc)
        stats.put_back(batch)
        conn_holder["conn"] = None
        _collected_put_back(app, records)
        return
    if records:
        await _flush_collected(app, conn, records, conn_holder)


async def _flush_collected(
    app: web.Application,
    conn: psycopg.AsyncConnection[Any],
    rows: list[bytes],
    conn_holder: dict[str, psycopg.AsyncConnection[Any] | None],
) -> None:
    """Store collected calls after the counts, in a statement of their own (a
    failure here never sends the counts twice). The rows were encoded as their
    calls ended, so this only sends them."""
    try:
        await store.insert_collected_records(conn, rows)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        # Trying the same rows again would fail the same way, every second.
        log.warning("could not store %d collected calls; they are dropped: %s", len(rows), exc)
        metrics.COLLECTION_DROPPED.inc(len(rows))
    except (psycopg.Error, OSError) as exc:
        log.warning("collected calls not stored, keeping them for the next flush: %s", exc)
        conn_holder["conn"] = None
        _collected_put_back(app, rows)


def _collected_put_back(app: web.Application, rows: list[bytes]) -> None:
    dropped = app[COLLECTOR].put_back(rows)
    if dropped:
        metrics.COLLECTION_DROPPED.inc(dropped)


async def _start_background(app: web.Application) -> AsyncIterator[None]:
    app[POOL] = upstream_client.Pool()
    app[WS_SESSION] = aiohttp.ClientSession(auto_decompress=False)
    app[LIMITER] = TrafficLimiter(app[CONFIG].redis_url)
    refresh = asyncio.create_task(app[KEEPER].run())
    flush = asyncio.create_task(_flush_loop(app))
    try:
        await asyncio.wait_for(app[TABLE].ready.wait(), timeout=10)
    except TimeoutError:
        log.warning("no routing table after 10 s; answering with an empty one until the database answers")
    yield
    refresh.cancel()
    flush.cancel()
    await _flush_once(app, {"conn": None})
    app[TALLY].flush()
    app[POOL].close()
    await app[WS_SESSION].close()
    await app[LIMITER].close()


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes + 1,
        middlewares=[hygiene],
        # aiohttp's own limits per line and per header; the total is checked in `hygiene`.
        handler_args={"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100},
    )
    app[CONFIG] = config
    app[TABLE] = TableHolder()
    app[KEEPER] = TableKeeper(config, conninfo(config.database), app[TABLE])
    app[STATS] = CallStats()
    app[COLLECTOR] = Collector(CollectionConfig.from_env())
    app[TALLY] = metrics.CallTally()
    app[SUSPECTS] = {}
    app.router.add_route("*", "/v1/infers/{service_id}", infer, name=INFER_ROUTE)
    app.router.add_route("*", "/v1/infers/{service_id}/{rest:.*}", infer, name=INFER_ROUTE + "_path")
    app.router.add_get("/healthz", health)
    app.router.add_get("/healthz/table", table_health)
    app.router.add_get("/metrics", metrics_view)
    app.cleanup_ctx.append(_start_background)
    return app


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (less time per call), else asyncio's."""
    if uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
