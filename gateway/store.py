"""The gateway's only database work: load the routing table, flush statistics.

Both run on a timer, never per call.
"""

from __future__ import annotations

import datetime as dt

import psycopg

from gateway.routing import RoutingTable, build_table

SERVICES_SQL = """
SELECT s.id, s.owner_id, s.status, c.id, c.weight, v.predict_path, i.host_port
FROM services_service s
JOIN services_serviceversionconfig c ON c.service_id = s.id
JOIN services_aiapplicationversion v ON v.id = c.app_version_id
LEFT JOIN services_instance i
  ON i.config_id = c.id AND i.is_healthy AND i.host_port IS NOT NULL
ORDER BY c.position
"""
# A deactivated user's tokens stop working, as they do for the REST API.
TOKENS_SQL = """
SELECT t.token_hash, t.owner_id, extract(epoch FROM t.expires_at)::float8
FROM access_accesstoken t JOIN auth_user u ON u.id = t.owner_id
WHERE t.revoked_at IS NULL AND t.expires_at > now() AND u.is_active
"""
APP_CODES_SQL = "SELECT code_hash, service_id FROM access_appcode WHERE revoked_at IS NULL"

STATS_UPSERT_SQL = """
INSERT INTO services_servicecallstat AS t (service_id, config_id, bucket_start, calls, failed, latency_hist)
SELECT %(service_id)s, %(config_id)s, %(bucket_start)s, %(calls)s, %(failed)s, %(latency_hist)s
WHERE EXISTS (SELECT 1 FROM services_serviceversionconfig WHERE id = %(config_id)s)
ON CONFLICT (service_id, config_id, bucket_start) DO UPDATE SET
  calls = t.calls + excluded.calls,
  failed = t.failed + excluded.failed,
  latency_hist = ARRAY(
    SELECT a + b FROM unnest(t.latency_hist, excluded.latency_hist) WITH ORDINALITY AS x(a, b, n) ORDER BY n
  )
"""
SERVICE_TOTALS_SQL = """
UPDATE services_service SET invocation_times = invocation_times + %s, failed_times = failed_times + %s
WHERE id = %s
"""


async def connect(conninfo: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)


async def load_table(conn: psycopg.AsyncConnection, instance_host: str, previous: RoutingTable | None) -> RoutingTable:
    async with conn.cursor() as cursor:
        await cursor.execute(SERVICES_SQL)
        service_rows = await cursor.fetchall()
        await cursor.execute(TOKENS_SQL)
        token_rows = await cursor.fetchall()
        await cursor.execute(APP_CODES_SQL)
        app_code_rows = await cursor.fetchall()
    return build_table(service_rows, token_rows, app_code_rows, instance_host, previous)


async def flush_stats(conn: psycopg.AsyncConnection, batch: dict, bucket_start: dt.datetime) -> None:
    """Add one interval's counts: batch maps (service_id, config_id) -> (calls, failed, histogram)."""
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
                        "latency_hist": histogram,
                    }
                    for (service_id, config_id), (calls, failed, histogram) in batch.items()
                ],
            )
            for (service_id, _), (calls, failed, _) in batch.items():
                total = totals.setdefault(service_id, [0, 0])
                total[0] += calls
                total[1] += failed
            await cursor.executemany(
                SERVICE_TOTALS_SQL, [(calls, failed, service_id) for service_id, (calls, failed) in totals.items()]
            )


async def touch_tokens(conn: psycopg.AsyncConnection, token_hashes: set[str], used_at: dt.datetime) -> None:
    """Record when tokens were last used: one statement a second, not one a call."""
    if token_hashes:
        await conn.execute(
            "UPDATE access_accesstoken SET last_used_at = %s WHERE token_hash = ANY(%s)",
            (used_at, list(token_hashes)),
        )
