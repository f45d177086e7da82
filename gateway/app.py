"""The gateway's HTTP side: authenticate, route, proxy, count."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import time

import aiohttp
import psycopg
from aiohttp import web

from console import settings
from gateway import store
from gateway.routing import SERVING_STATUSES, AuthResult, RoutingTable, authorize
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
STATUS_LABELS = {
    "deploying": "Deploying", "running": "Running", "alarm": "Alarm", "abnormal": "Abnormal",
    "failed": "Failed", "stopping": "Stopping", "stopped": "Stopped", "deleting": "Deleting",
}  # fmt: skip
# An instance that refused a connection is skipped for this long, unless a
# reload of the table lists it under a new port first.
SUSPECT_SECONDS = 2.0

TABLE = web.AppKey("table", dict)
STATS = web.AppKey("stats", CallStats)
SESSION = web.AppKey("session", aiohttp.ClientSession)
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
    limit = settings.GATEWAY_MAX_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        return None
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
    result, service = authorize(table, service_id, token, app_code, time.time())
    if result == AuthResult.UNAUTHENTICATED:
        return error(401, "RTS.4011", "The credentials are invalid, expired or revoked.")
    if result == AuthResult.NOT_FOUND:
        return error(404, "RTS.4040", f"Service {service_id} does not exist.")
    if service.status not in SERVING_STATUSES:
        label = STATUS_LABELS.get(service.status, service.status)
        return error(503, "RTS.5031", f"Service {service_id} is {label}, not Running.")

    body = await _read_body(request)
    if body is None:
        return error(413, "RTS.4130", f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.")

    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | CREDENTIAL_HEADERS}
    headers["X-Forwarded-For"] = request.remote or ""
    rest = request.match_info.get("rest")
    suspects: dict = app[SUSPECTS]
    now = time.monotonic()
    exclude = {upstream for upstream, until in suspects.items() if until > now}
    rng = app[TABLE]["rng"]
    stats: CallStats = app[STATS]
    session: aiohttp.ClientSession = app[SESSION]

    version = None
    last_error = ""
    # Only connection failures are retried (the call never reached a model),
    # on another instance, at most once per instance.
    while True:
        version = service.pick_version(rng, exclude)
        if version is None:
            break
        upstream = version.pick_upstream(exclude)
        if upstream is None:
            break
        path = "/" + rest if rest is not None else version.predict_path
        url = f"http://{upstream[0]}:{upstream[1]}{path}"
        try:
            upstream_response = await session.request(
                request.method, url, params=request.query, data=body or None, headers=headers,
                allow_redirects=False, timeout=aiohttp.ClientTimeout(total=settings.GATEWAY_CALL_TIMEOUT_SECONDS),
            )  # fmt: skip
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            suspects[upstream] = time.monotonic() + SUSPECT_SECONDS
            exclude.add(upstream)
            last_error = str(exc)
            continue
        except TimeoutError:
            stats.record(service_id, version.config_id, (time.perf_counter() - started) * 1000, True)
            return error(504, "RTS.5040", f"The model did not answer within {settings.GATEWAY_CALL_TIMEOUT_SECONDS:g} s.")
        return await _relay(request, upstream_response, stats, service_id, version.config_id, started)

    if last_error:
        return error(502, "RTS.5020", f"Could not connect to an instance of the service: {last_error}")
    return error(503, "RTS.5032", f"Service {service_id} has no healthy instance.")


async def _relay(request, upstream_response, stats: CallStats, service_id: str, config_id: int, started: float):
    """Stream the model's answer back with its status, headers and body unchanged."""
    is_failed = upstream_response.status >= 400
    try:
        response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason)
        for key, value in upstream_response.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        if upstream_response.content_length is not None:
            response.content_length = upstream_response.content_length
        await response.prepare(request)
        async for chunk in upstream_response.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
    except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
        is_failed = True
        raise
    finally:
        upstream_response.release()
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
        await asyncio.sleep(settings.GATEWAY_REFRESH_SECONDS)


async def _flush_loop(app: web.Application) -> None:
    conn = None
    while True:
        await asyncio.sleep(1.0)
        await _flush_once(app, conn_holder := {"conn": conn})
        conn = conn_holder["conn"]


async def _flush_once(app: web.Application, conn_holder: dict) -> None:
    stats: CallStats = app[STATS]
    batch = stats.take()
    if not batch:
        return
    now = dt.datetime.now(dt.UTC)
    bucket_start = now.replace(second=0, microsecond=0)
    try:
        if conn_holder["conn"] is None or conn_holder["conn"].closed:
            conn_holder["conn"] = await store.connect(conninfo())
        await store.flush_stats(conn_holder["conn"], batch, bucket_start)
    except (psycopg.Error, OSError) as exc:
        log.warning("statistics flush failed, keeping the counts for the next one: %s", exc)
        stats.put_back(batch)
        conn_holder["conn"] = None


async def _start_background(app: web.Application):
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=None),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
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
    await app[SESSION].close()


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


def serve(host: str, port: int) -> None:
    """Run one gateway process; several share the port through SO_REUSEPORT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gateway[%(process)d]: %(message)s")
    web.run_app(create_app(), host=host, port=port, reuse_port=True, access_log=None, print=None)
