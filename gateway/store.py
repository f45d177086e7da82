"""The gateway's only database work: read the routing table (whole, or the
rows of what changed), flush statistics.

None of it runs per call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from gateway.collect import COPY_SIGNATURE, COPY_TRAILER
from gateway.routing import RoutingTable, TableBuilder

# Then three columns of the data collection rule (services.models.DataCollectionRule,
# whose `content` values are named here): the share of calls kept (0: off, and
# always off for a WebSocket service), whether requests, whether responses; then
# the version's label, which a collected call's record keeps; last the address of
# the instance's node when it has one (a Swarm node), else the gateway's INSTANCE_HOST.
SERVICE_COLUMNS = """
SELECT s.id::text, s.owner_id, s.status, c.id, c.weight, v.predict_path, i.host_port, s.is_websocket, s.traffic_limit,
  CASE WHEN r.is_enabled AND NOT s.is_websocket THEN r.sample_percent ELSE 0 END,
  r.content IN ('request', 'both'), r.content IN ('response', 'both'), v.version, n.address
FROM services_service s
JOIN services_serviceversionconfig c ON c.service_id = s.id
JOIN services_aiapplicationversion v ON v.id = c.app_version_id
LEFT JOIN services_instance i
  ON i.config_id = c.id AND i.is_healthy AND i.host_port IS NOT NULL
LEFT JOIN pools_node n ON n.id = i.node_id
LEFT JOIN services_datacollectionrule r ON r.service_id = s.id
"""
# Ordered by port within a configuration: the instances come in sorted.
SERVICES_SQL = SERVICE_COLUMNS + "ORDER BY c.position, i.host_port"
SERVICES_BY_ID_SQL = SERVICE_COLUMNS + "WHERE s.id = ANY(%s::uuid[]) ORDER BY c.position, i.host_port"
SERVICES_OF_VERSIONS_SQL = (
    "SELECT DISTINCT service_id::text FROM services_serviceversionconfig WHERE app_version_id = ANY(%s::bigint[])"
)
# A deactivated user's tokens stop working, as they do for the REST API.
TOKENS_SQL = """
SELECT t.token_hash, t.owner_id, extract(epoch FROM t.expires_at)::float8
FROM access_accesstoken t JOIN auth_user u ON u.id = t.owner_id
WHERE t.revoked_at IS NULL AND t.expires_at > now() AND u.is_active
"""
# The rows of some tokens whatever their state, for a patch: (hash, owner, expiry, is_valid).
TOKEN_PATCH_COLUMNS = """
SELECT t.token_hash, t.owner_id, extract(epoch FROM t.expires_at)::float8,
       t.revoked_at IS NULL AND t.expires_at > now() AND u.is_active
FROM access_accesstoken t JOIN auth_user u ON u.id = t.owner_id
"""
TOKENS_BY_HASH_SQL = TOKEN_PATCH_COLUMNS + "WHERE t.token_hash = ANY(%s::text[])"
TOKENS_BY_OWNER_SQL = TOKEN_PATCH_COLUMNS + "WHERE t.owner_id = ANY(%s::bigint[])"
APP_CODES_SQL = "SELECT code_hash, service_id::text FROM access_appcode WHERE revoked_at IS NULL"
APP_CODES_BY_HASH_SQL = (
    "SELECT code_hash, service_id::text, revoked_at IS NULL FROM access_appcode WHERE code_hash = ANY(%s::text[])"
)

STATS_UPSERT_SQL = """
INSERT INTO services_servicecallstat AS t (service_id, config_id, bucket_start, calls, failed, limited, latency_hist)
SELECT %(service_id)s, %(config_id)s, %(bucket_start)s, %(calls)s, %(failed)s, %(limited)s, %(latency_hist)s
WHERE EXISTS (SELECT 1 FROM services_serviceversionconfig WHERE id = %(config_id)s)
ON CONFLICT (service_id, config_id, bucket_start) DO UPDATE SET
  calls = t.calls + excluded.calls,
  failed = t.failed + excluded.failed,
  limited = t.limited + excluded.limited,
  latency_hist = ARRAY(
    SELECT a + b FROM unnest(t.latency_hist, excluded.latency_hist) WITH ORDINALITY AS x(a, b, n) ORDER BY n
  )
"""
# Collected calls go in by COPY in binary, with the version's label from the
# routing table: no join, no foreign key check (the record's service has no
# database constraint), a third of the database's time per record of an INSERT
# that joined and checked. A record of a service deleted meanwhile is removed
# by the retention purge (services/collection.py).
COLLECTED_COLUMNS = (
    ("service_id", "uuid"),
    ("config_id", "int8"),
    ("version", "text"),
    ("created_at", "timestamptz"),
    ("request_id", "text"),
    ("method", "text"),
    ("status_code", "int2"),
    ("latency_ms", "float8"),
    ("request_body", "bytea"),
    ("request_size", "int8"),
    ("request_content_type", "text"),
    ("request_truncated", "bool"),
    ("response_body", "bytea"),
    ("response_size", "int8"),
    ("response_content_type", "text"),
    ("response_truncated", "bool"),
)
COLLECTED_COPY_SQL = (
    f"COPY services_datacollectionrecord ({', '.join(name for name, _ in COLLECTED_COLUMNS)}) "
    "FROM STDIN (FORMAT BINARY)"
)
SERVICE_TOTALS_SQL = """
UPDATE services_service SET invocation_times = invocation_times + %s, failed_times = failed_times + %s
WHERE id = %s
"""


async def connect(conninfo: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **kwargs)


async def load_table(
    conn: psycopg.AsyncConnection[Any],
    instance_host: str,
    previous: RoutingTable | None,
    loaded_at: float,
    chunk_rows: int = 120,
) -> RoutingTable:
    """The whole table, `chunk_rows` rows at a time with a yield to the event
    loop between chunks, so calls keep flowing while a large table loads.

    The rows come through a server-side cursor: libpq then parses one chunk
    per FETCH instead of the whole result at once, which held the loop for
    over 10 ms at 100,000 tokens."""
    builder = TableBuilder(instance_host, previous)
    steps: tuple[tuple[str, Callable[[Iterable[Sequence[Any]]], None]], ...] = (
        (SERVICES_SQL, builder.add_service_rows),
        (TOKENS_SQL, builder.add_token_rows),
        (APP_CODES_SQL, builder.add_app_code_rows),
    )
    async with conn.transaction():
        for sql, add in steps:
            async with conn.cursor(name="rts_table_load", binary=True) as cursor:
                await cursor.execute(sql)
                while rows := await cursor.fetchmany(chunk_rows):
                    add(rows)
                    await asyncio.sleep(0)
    return builder.table(loaded_at)


async def service_rows(conn: psycopg.AsyncConnection[Any], service_ids: list[str]) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cursor:
        await cursor.execute(SERVICES_BY_ID_SQL, (service_ids,))
        return await cursor.fetchall()


async def services_of_versions(conn: psycopg.AsyncConnection[Any], version_ids: list[int]) -> list[str]:
    async with conn.cursor() as cursor:
        await cursor.execute(SERVICES_OF_VERSIONS_SQL, (version_ids,))
        return [row[0] for row in await cursor.fetchall()]


async def token_rows(
    conn: psycopg.AsyncConnection[Any], *, token_hashes: list[str] | None = None, owner_ids: list[int] | None = None
) -> list[tuple[Any, ...]]:
    """(hash, owner, expiry, is_valid) of the named tokens, or of every token of the named owners."""
    sql, values = (TOKENS_BY_HASH_SQL, token_hashes) if token_hashes is not None else (TOKENS_BY_OWNER_SQL, owner_ids)
    async with conn.cursor() as cursor:
        await cursor.execute(sql, (values,))
        return await cursor.fetchall()


async def app_code_rows(conn: psycopg.AsyncConnection[Any], code_hashes: list[str]) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cursor:
        await cursor.execute(APP_CODES_BY_HASH_SQL, (code_hashes,))
        return await cursor.fetchall()


async def flush_stats(
    conn: psycopg.AsyncConnection[Any], batch: dict[tuple[str, int], list[Any]], bucket_start: dt.datetime
) -> None:
    """Add one interval's counts: batch maps (service_id, config_id) -> (calls, failed, histogram, limited)."""
    if not batch:
        return
    totals: dict[str, list[int]] = {}
    async with conn.transaction():
        async with conn.cursor() as cursor:
            await cursor.executemany(
                STATS_UPSERT_SQL,
                [
                    {
                        "service_id": service_id,
                        "config_id": config_id,
                        "bucket_start": bucket_start,
                        "calls": calls,
                        "failed": failed,
                        "limited": limited,
                        "latency_hist": histogram,
                    }
                    for (service_id, config_id), (calls, failed, histogram, limited) in batch.items()
                ],
            )
            for (service_id, _), (calls, failed, _, _) in batch.items():
                total = totals.setdefault(service_id, [0, 0])
                total[0] += calls
                total[1] += failed
            await cursor.executemany(
                SERVICE_TOTALS_SQL, [(calls, failed, service_id) for service_id, (calls, failed) in totals.items()]
            )


async def touch_tokens(conn: psycopg.AsyncConnection[Any], token_hashes: set[str], used_at: dt.datetime) -> None:
    """Record when tokens were last used: one statement a second, not one a call."""
    if token_hashes:
        await conn.execute(
            "UPDATE access_accesstoken SET last_used_at = %s WHERE token_hash = ANY(%s)",
            (used_at, list(token_hashes)),
        )


async def insert_collected_records(conn: psycopg.AsyncConnection[Any], rows: Sequence[bytes]) -> None:
    """Store collected calls in one COPY (one transaction): rows encoded by
    gateway.collect (encode_row), sent as they are."""
    if rows:
        async with conn.cursor().copy(COLLECTED_COPY_SQL) as copy:
            await copy.write(COPY_SIGNATURE + b"".join(rows) + COPY_TRAILER)
