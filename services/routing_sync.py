"""Wait until every live gateway process routes by what is committed now.

A deploy calls `routing_sync` after its instances are marked healthy and
before it marks the service Running, so a status never runs ahead of the
gateway: once the API says Running, every gateway process routes the calls.

The protocol (services.contract.RoutingNotice): each gateway process names its LISTEN
connection `rts-gateway <id>` once it listens, so pg_stat_activity lists the
live ones; it applies notifications in commit order and answers a sync
notification on the ack channel once everything committed before it is in
its table. No Docker here, and no Django model: one short-lived connection.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.db import connections

from services.contract import RoutingNotice
from services.models import ServiceEvent
from services.transitions import service_event_add

log = logging.getLogger(__name__)

LIVE_GATEWAYS_SQL = """
SELECT substr(application_name, length(%(prefix)s) + 1)
FROM pg_stat_activity
WHERE datname = current_database() AND starts_with(application_name, %(prefix)s)
"""
# How often a wait re-reads which gateways are live, so one that went away
# (and will reload everything when it is back) stops being waited for.
RECHECK_SECONDS = 0.25


@dataclass(frozen=True)
class RoutingSyncResult:
    gateways: frozenset[str]
    # Gateways that were live and did not answer in time.
    missing: frozenset[str]
    seconds: float

    @property
    def is_complete(self) -> bool:
        return not self.missing


class _Cursor(Protocol):
    """Django's cursor or psycopg's: both do for one query."""

    def execute(self, query: Any, params: Any = ...) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


def _live_gateways(cursor: _Cursor) -> set[str]:
    cursor.execute(LIVE_GATEWAYS_SQL, {"prefix": RoutingNotice.APPLICATION_PREFIX})
    return {row[0] for row in cursor.fetchall()}


def _conninfo(alias: str) -> str:
    db = connections[alias].settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=str(db["PORT"]) if db["PORT"] else None,
    )


def routing_sync(
    *,
    service_id: uuid.UUID | str | None = None,
    timeout: float | None = None,
    using: str = "default",
    drain_config_ids: list[int] | None = None,
) -> RoutingSyncResult:
    """Return once every live gateway process has applied every change
    committed before this call, or after `timeout` (ROUTING_SYNC_TIMEOUT_SECONDS).

    With `drain_config_ids`, each gateway answers only once, besides, none of
    its calls in flight could still reach those configurations: a live update
    removes the old versions' containers after that.

    Side effects: one NOTIFY on the routing channel when a gateway is live
    (each gateway answers it; nothing else changes). On timeout it logs a
    warning and, given a service, adds a warning to its timeline: a wedged
    gateway delays a deploy by the timeout, never blocks it. Safe to repeat.
    """
    started = time.monotonic()
    timeout = settings.ROUTING_SYNC_TIMEOUT_SECONDS if timeout is None else timeout
    with connections[using].cursor() as cursor:
        if not _live_gateways(cursor):
            return RoutingSyncResult(frozenset(), frozenset(), time.monotonic() - started)
    sync_token = uuid.uuid4().hex
    with psycopg.connect(_conninfo(using), autocommit=True) as conn:
        # Listen first: an answer may come back before the NOTIFY call returns.
        conn.execute(f"LISTEN {RoutingNotice.ACK_CHANNEL}")
        with conn.cursor() as cursor:
            gateways = frozenset(_live_gateways(cursor))
        pending = set(gateways)
        if pending:
            if drain_config_ids:
                payload = RoutingNotice.drain_payload(sync_token, drain_config_ids)
            else:
                payload = f"{RoutingNotice.SYNC}:{sync_token}"
            conn.execute("SELECT pg_notify(%s, %s)", (RoutingNotice.CHANNEL, payload))
        deadline = started + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for notify in conn.notifies(timeout=min(remaining, RECHECK_SECONDS)):
                answered_token, gateway_id = RoutingNotice.parse_ack(notify.payload)
                if answered_token == sync_token:
                    pending.discard(gateway_id)
                if not pending:
                    break
            if pending:
                with conn.cursor() as cursor:
                    pending &= _live_gateways(cursor)
    result = RoutingSyncResult(gateways, frozenset(pending), time.monotonic() - started)
    if not result.is_complete:
        if drain_config_ids:
            message = (
                f"{len(result.missing)} of {len(gateways)} gateway process(es) still had calls in flight to the "
                f"versions being removed after {timeout:g} s; those calls are cut"
            )
        else:
            message = (
                f"{len(result.missing)} of {len(gateways)} gateway process(es) did not confirm the routing "
                f"change within {timeout:g} s; they will route the service once they catch up"
            )
        log.warning("%s (service %s; gateways %s)", message, service_id, ", ".join(sorted(result.missing)))
        if service_id is not None:
            service_event_add(service_id, message, level=ServiceEvent.Level.WARNING)
    return result
