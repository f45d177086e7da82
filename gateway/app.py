"""The gateway's HTTP side: authenticate, route, proxy, count."""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import json
import logging
import os
import random
import signal
import time

import psycopg
from aiohttp import web
from multidict import CIMultiDict

try:
    import uvloop
except ImportError:  # optional: the gateway works on asyncio's own loop
    uvloop = None

from console import settings
from gateway import store
from gateway import upstream as upstream_client
from gateway.routing import SERVING_STATUSES, AuthResult, RoutingTable, authorize, secret_hash
from gateway.stats import CallStats

log = logging.getLogger("gateway")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip
CREDENTIAL_HEADERS = frozenset({"x-auth-token", "authorization", "x-apig-appcode"})
# Not sent on to the model: hop-by-hop headers, the caller's credentials,
# X-Forwarded-For (rewritten), and Expect (the gateway has read the body already).
NOT_FORWARDED = HOP_BY_HOP | CREDENTIAL_HEADERS | {"x-forwarded-for", "expect"}
PREFIX_LENGTH = len("/v1/infers/")
CALL_TIMEOUT_SECONDS = settings.GATEWAY_CALL_TIMEOUT_SECONDS
# Answers up to this size (with a Content-Length) are read whole and sent in
# one write; larger ones are streamed.
BUFFERED_RESPONSE_BYTES = 256 * 1024
STATUS_LABELS = {
    "deploying": "Deploying", "running": "Running", "alarm": "Alarm", "abnormal": "Abnormal",
    "failed": "Failed", "stopping": "Stopping", "stopped": "Stopped", "deleting": "Deleting",
}  # fmt: skip
# An instance that refused a connection is skipped for this long, unless a
# reload of the table lists it under a new port first.
SUSPECT_SECONDS = 2.0

TABLE = web.AppKey("table", dict)
STATS = web.AppKey("stats", CallStats)
POOL = web.AppKey("pool", upstream_client.Pool)
SUSPECTS = web.AppKey("suspects", dict)


def conninfo() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None, host=db["HOST"], port=db["PORT"]
    )


def error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error_code": code, "error_msg": message}).encode(),
        content_type="application/json",
    )


def _credentials(request: web.Request) -> tuple[str | None, str | None]:
    token = request.headers.get("X-Auth-Token")
    if not token:
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
    return token or None, request.headers.get("X-Apig-AppCode") or None


async def _read_body(request: web.Request) -> bytes | None:
    """The request body, or None when it is larger than the limit."""
    if not request.body_exists:
        return b""
    limit = settings.GATEWAY_MAX_BODY_BYTES
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


async def infer(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    table: RoutingTable = app[TABLE]["current"]
    service_id = request.match_info["service_id"]
    token, app_code = _credentials(request)
    if token is None and app_code is None:
        return error(401, "RTS.4010", "No credentials: send X-Auth-Token, Authorization: Bearer, or X-Apig-AppCode.")
    token_hash = secret_hash(token) if token is not None else None
    result, service = authorize(table, service_id, token, app_code, time.time(), token_hash)
    if result == AuthResult.UNAUTHENTICATED:
        return error(401, "RTS.4011", "The credentials are invalid, expired or revoked.")
    if result == AuthResult.NOT_FOUND:
        return error(404, "RTS.4040", f"Service {service_id} does not exist.")
    if token_hash in table.tokens:
        app[STATS].token_used(token_hash)
    if service.status not in SERVING_STATUSES:
        label = STATUS_LABELS.get(service.status, service.status)
        return error(503, "RTS.5031", f"Service {service_id} is {label}, not Running.")

    body = await _read_body(request)
    if body is None:
        return error(413, "RTS.4130", f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.")

    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED]
    forwarded_for = request.headers.get("X-Forwarded-For")
    remote = request.remote or ""
    headers.append(("X-Forwarded-For", f"{forwarded_for}, {remote}" if forwarded_for else remote))
    # The path and query go through exactly as the caller encoded them.
    rel_url = request.rel_url
    raw_path = rel_url.raw_path
    rest_at = raw_path.find("/", PREFIX_LENGTH)
    query = rel_url.raw_query_string
    target_query = "?" + query if query else ""
    suspects: dict = app[SUSPECTS]
    if suspects:
        now = time.monotonic()
        avoid = {upstream for upstream, until in suspects.items() if until > now}
    else:
        avoid = set()
    tried: set[tuple[str, int]] = set()
    rng = app[TABLE]["rng"]
    pool: upstream_client.Pool = app[POOL]
    method = request.method

    version = None
    last_error = ""
    # Only connection failures are retried (the call never reached a model),
    # on another instance, at most once per instance. Instances that refused a
    # connection a moment ago are tried last, not never: the table, not this
    # process's hunch, says which instances are healthy.
    while True:
        exclude = tried | avoid if tried else avoid
        version = service.pick_version(rng, exclude)
        if version is None and avoid:
            avoid = set()
            continue
        if version is None:
            break
        upstream = version.pick_upstream(exclude)
        target = (raw_path[rest_at:] if rest_at != -1 else version.predict_path) + target_query
        try:
            answer = await pool.request(upstream, method, target, headers, body, CALL_TIMEOUT_SECONDS)
        except (upstream_client.ConnectError, upstream_client.Disconnected) as exc:
            suspects[upstream] = time.monotonic() + SUSPECT_SECONDS
            tried.add(upstream)
            last_error = str(exc)
            continue
        except upstream_client.BadResponse as exc:
            app[STATS].record(service_id, version.config_id, (time.perf_counter() - started) * 1000, True)
            return error(502, "RTS.5021", f"The instance did not answer in HTTP: {exc}")
        except TimeoutError:
            app[STATS].record(service_id, version.config_id, (time.perf_counter() - started) * 1000, True)
            return error(504, "RTS.5040", f"The model did not answer within {CALL_TIMEOUT_SECONDS:g} s.")
        return await _relay(request, answer, app[STATS], service_id, version.config_id, started)

    # A call that reached no model is still a failed call of the service.
    counted = next((v for v in service.versions if v.weight > 0), None)
    if counted is not None:
        app[STATS].record(service_id, counted.config_id, (time.perf_counter() - started) * 1000, True)
    if last_error:
        return error(502, "RTS.5020", f"Could not connect to an instance of the service: {last_error}")
    return error(503, "RTS.5032", f"Service {service_id} has no healthy instance.")


async def _relay(request, answer, stats: CallStats, service_id: str, config_id: int, started: float):
    """Send the model's answer back with its status, headers and body unchanged.

    A small answer of known length is read whole and sent in one write; any
    other is streamed as it arrives (and an answer to HEAD keeps its length).
    """
    status = answer.status
    is_failed = status >= 400
    headers = CIMultiDict((key, value) for key, value in answer.headers if key.lower() not in HOP_BY_HOP)
    length = answer.content_length
    try:
        if length is not None and length <= BUFFERED_RESPONSE_BYTES and request.method != "HEAD":
            try:
                body = await answer.read()
            except TimeoutError:
                is_failed = True
                return error(504, "RTS.5040", f"The model did not answer within {CALL_TIMEOUT_SECONDS:g} s.")
            except upstream_client.UpstreamError as exc:
                is_failed = True
                return error(502, "RTS.5021", f"The connection to the instance broke during the answer: {exc}")
            return web.Response(status=status, reason=answer.reason, body=body, headers=headers)
        response = web.StreamResponse(status=status, reason=answer.reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in answer.iter_chunks():
            await response.write(chunk)
        await response.write_eof()
        return response
    except (upstream_client.UpstreamError, TimeoutError, ConnectionResetError):
        # The headers are out already: all that is left is to cut the connection.
        is_failed = True
        raise
    finally:
        answer.release()
        stats.record(service_id, config_id, (time.perf_counter() - started) * 1000, is_failed)


async def health(request: web.Request) -> web.Response:
    table: RoutingTable = request.app[TABLE]["current"]
    return web.json_response({"status": "ok", "services": len(table.services), "loaded_at": table.loaded_at})


async def _refresh_loop(app: web.Application) -> None:
    conn = None
    while True:
        try:
            if conn is None or conn.closed:
                conn = await store.connect(conninfo())
            holder = app[TABLE]
            holder["current"] = await store.load_table(conn, settings.INSTANCE_HOST, holder["current"])
            holder["ready"].set()
        except (psycopg.Error, OSError) as exc:
            log.warning("routing table reload failed, keeping the last one: %s", exc)
            conn = None
        _forget_stale(app)
        await asyncio.sleep(settings.GATEWAY_REFRESH_SECONDS)


def _forget_stale(app: web.Application) -> None:
    """Drop lapsed suspicions and long-idle upstream connections, so neither piles up."""
    suspects: dict = app[SUSPECTS]
    if suspects:
        now = time.monotonic()
        for upstream in [u for u, until in suspects.items() if until <= now]:
            del suspects[upstream]
    app[POOL].close_idle()


async def _flush_loop(app: web.Application) -> None:
    conn = None
    while True:
        await asyncio.sleep(1.0)
        await _flush_once(app, conn_holder := {"conn": conn})
        conn = conn_holder["conn"]


async def _flush_once(app: web.Application, conn_holder: dict) -> None:
    stats: CallStats = app[STATS]
    batch = stats.take()
    used_tokens = stats.take_used_tokens()
    if not batch and not used_tokens:
        return
    now = dt.datetime.now(dt.UTC)
    bucket_start = now.replace(second=0, microsecond=0)
    try:
        if conn_holder["conn"] is None or conn_holder["conn"].closed:
            conn_holder["conn"] = await store.connect(conninfo())
        await store.flush_stats(conn_holder["conn"], batch, bucket_start)
        await store.touch_tokens(conn_holder["conn"], used_tokens, now)
    except (psycopg.Error, OSError) as exc:
        log.warning("statistics flush failed, keeping the counts for the next one: %s", exc)
        stats.put_back(batch)
        conn_holder["conn"] = None


async def _start_background(app: web.Application):
    app[POOL] = upstream_client.Pool()
    refresh = asyncio.create_task(_refresh_loop(app))
    flush = asyncio.create_task(_flush_loop(app))
    try:
        await asyncio.wait_for(app[TABLE]["ready"].wait(), timeout=10)
    except TimeoutError:
        log.warning("no routing table after 10 s; answering with an empty one until the database answers")
    yield
    refresh.cancel()
    flush.cancel()
    await _flush_once(app, {"conn": None})
    app[POOL].close()


def create_app() -> web.Application:
    app = web.Application(client_max_size=settings.GATEWAY_MAX_BODY_BYTES + 1)
    app[TABLE] = {"current": RoutingTable(), "ready": asyncio.Event(), "rng": random.Random()}
    app[STATS] = CallStats()
    app[SUSPECTS] = {}
    app.router.add_route("*", "/v1/infers/{service_id}", infer)
    app.router.add_route("*", "/v1/infers/{service_id}/{rest:.*}", infer)
    app.router.add_get("/healthz", health)
    app.cleanup_ctx.append(_start_background)
    return app


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (less time per call), else asyncio's."""
    if uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(host: str, port: int) -> None:
    """Run one gateway process; several share the port through SO_REUSEPORT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway[%(process)d]: %(message)s")
    loop = new_event_loop()
    log.info("event loop: %s", type(loop).__module__)
    web.run_app(create_app(), host=host, port=port, reuse_port=True, access_log=None, print=None, loop=loop)


def serve_child(host: str, port: int, parent_pid: int) -> None:
    """One process of a multi-process gateway: it ends with its parent, even a killed one."""
    try:
        # PR_SET_PDEATHSIG (Linux): the kernel sends SIGTERM when the parent dies.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        return
    serve(host, port)
