"""Reads of usage: the intervals the triggers wrote, cut into days and added up.

Days are calendar days in the console's time zone (settings.TIME_ZONE), cut at
its midnights, so a day with a daylight-saving change has 23 or 25 hours. An
interval still open counts up to `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

# Longest range one report may cover.
MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30


class UsageKind(StrEnum):
    # Public pools: instance-seconds per service and specification.
    SERVICE = "service"
    # Dedicated pools: node-seconds per pool, nothing per service.
    DEDICATED_POOL = "dedicated_pool"


@dataclass(frozen=True)
class UsageQuery:
    """Whose usage, over which days (both included). `owner_id` None: every
    user's, which only staff may ask for (metering.forms decides)."""

    date_from: date
    date_to: date
    owner_id: int | None

    @property
    def is_all_users(self) -> bool:
        return self.owner_id is None

    @property
    def days(self) -> list[date]:
        return [self.date_from + timedelta(days=n) for n in range((self.date_to - self.date_from).days + 1)]

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The first day's midnight and the midnight after the last day, in `zone`."""
        start = datetime.combine(self.date_from, time.min, tzinfo=zone)
        end = datetime.combine(self.date_to + timedelta(days=1), time.min, tzinfo=zone)
        return start, end


@dataclass(frozen=True)
class UsageRow:
    """One day of one service's instances of one specification (public pools),
    or one day of one dedicated pool's nodes."""

    day: date
    owner_id: int
    # Empty when the user has been deleted since (their usage stays).
    owner_name: str
    kind: UsageKind
    # The service's UUID, or the pool's id.
    subject_id: str
    # The service's name, or the pool's (the latest each had in the range).
    name: str
    pool_id: str
    pool_name: str
    # How many distinct instances (or nodes) counted that day.
    units: int
    # Instance-seconds (services) or node-seconds (dedicated pools).
    seconds: float
    # The specification, for services only.
    flavor_code: str = ""
    cpus: Decimal | None = None
    memory_mib: int | None = None
    gpus: int | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == UsageKind.SERVICE

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def vcpu_seconds(self) -> float | None:
        return self.seconds * float(self.cpus) if self.cpus is not None else None

    @property
    def vcpu_hours(self) -> float | None:
        vcpu_seconds = self.vcpu_seconds
        return vcpu_seconds / 3600 if vcpu_seconds is not None else None


@dataclass
class DayTotal:
    """Seconds of one day, or of a whole range (UsageReport.total)."""

    day: date
    instance_seconds: float = 0.0
    vcpu_seconds: float = 0.0
    node_seconds: float = 0.0

    @property
    def instance_hours(self) -> float:
        return self.instance_seconds / 3600

    @property
    def node_hours(self) -> float:
        return self.node_seconds / 3600

    @property
    def vcpu_hours(self) -> float:
        return self.vcpu_seconds / 3600

    @property
    def hours(self) -> float:
        return self.instance_hours + self.node_hours


@dataclass
class UsageReport:
    query: UsageQuery
    rows: list[UsageRow]
    # Every day of the range, oldest first, those without usage too.
    days: list[DayTotal] = field(default_factory=list)

    @property
    def total(self) -> DayTotal:
        """The whole range's sums (its `day` is the first day's)."""
        return DayTotal(
            day=self.query.date_from,
            instance_seconds=sum(day.instance_seconds for day in self.days),
            vcpu_seconds=sum(day.vcpu_seconds for day in self.days),
            node_seconds=sum(day.node_seconds for day in self.days),
        )


# Each interval overlapping the range is clipped to it (an open one ends at
# `now`), then cut at every local midnight it crosses: generate_series walks
# local calendar days (timestamps without a zone), and AT TIME ZONE turns each
# local midnight back into an instant, so daylight-saving days come out right.
# A day the clipped interval only touches at its end yields 0 s and is dropped.
# Names are the latest the service or pool had in the range.
_DAILY_SQL = """
WITH spans AS (
    SELECT *, GREATEST(started_at, %(start)s) AS span_start, LEAST(COALESCE(ended_at, %(now)s), %(end)s) AS span_end
    FROM {table}
    WHERE started_at < %(end)s AND (ended_at IS NULL OR ended_at > %(start)s) {owner_filter}
), pieces AS (
    SELECT spans.*, local_day::date AS day, EXTRACT(EPOCH FROM
        LEAST(span_end, (local_day + interval '1 day') AT TIME ZONE %(zone)s)
        - GREATEST(span_start, local_day AT TIME ZONE %(zone)s)
    ) AS seconds
    FROM spans CROSS JOIN LATERAL generate_series(
        date_trunc('day', span_start AT TIME ZONE %(zone)s), span_end AT TIME ZONE %(zone)s, interval '1 day'
    ) AS local_day
    WHERE span_end > span_start
)
SELECT pieces.day, pieces.owner_id, COALESCE(users.username, ''), pieces.{key}::text,
       (array_agg(pieces.{name} ORDER BY pieces.started_at DESC))[1],
       (array_agg(pieces.pool_id ORDER BY pieces.started_at DESC))[1]::text,
       (array_agg(pieces.pool_name ORDER BY pieces.started_at DESC))[1],
       count(DISTINCT pieces.{unit}), sum(pieces.seconds)::float8 {extra}
FROM pieces LEFT JOIN {users} users ON users.id = pieces.owner_id
WHERE pieces.seconds > 0
GROUP BY pieces.day, pieces.owner_id, users.username, pieces.{key} {extra}
"""
_SPECIFICATION = ", pieces.flavor_code, pieces.cpus, pieces.memory_mib, pieces.gpus"


def _daily(query: UsageQuery, now: datetime, **parts: str) -> list[tuple[Any, ...]]:
    zone = ZoneInfo(settings.TIME_ZONE)
    start, end = query.bounds(zone)
    params: dict[str, Any] = {"zone": settings.TIME_ZONE, "start": start, "end": end, "now": now}
    owner_filter = ""
    if query.owner_id is not None:
        owner_filter = "AND owner_id = %(owner)s"
        params["owner"] = query.owner_id
    sql = _DAILY_SQL.format(owner_filter=owner_filter, users=get_user_model()._meta.db_table, **parts)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def usage_rows(query: UsageQuery, *, now: datetime) -> list[UsageRow]:
    """The usage the query asks for, one row per day and service and
    specification (public pools) or per day and dedicated pool; by day, user,
    then services before pools, then name. Two queries, however many rows."""
    rows = [
        UsageRow(
            day=day,
            owner_id=owner_id,
            owner_name=owner_name,
            kind=UsageKind.SERVICE,
            subject_id=service_id,
            name=service_name,
            pool_id=pool_id,
            pool_name=pool_name,
            units=units,
            seconds=seconds,
            flavor_code=flavor_code,
            cpus=cpus,
            memory_mib=memory_mib,
            gpus=gpus,
        )
        for (
            day,
            owner_id,
            owner_name,
            service_id,
            service_name,
            pool_id,
            pool_name,
            units,
            seconds,
            flavor_code,
            cpus,
            memory_mib,
            gpus,
        ) in _daily(
            query,
            now,
            table="metering_instanceusage",
            key="service_id",
            name="service_name",
            unit="instance_id",
            extra=_SPECIFICATION,
        )
    ]
    rows += [
        UsageRow(
            day=day,
            owner_id=owner_id,
            owner_name=owner_name,
            kind=UsageKind.DEDICATED_POOL,
            subject_id=pool_id,
            name=pool_name,
            pool_id=pool_id,
            pool_name=pool_name,
            units=units,
            seconds=seconds,
        )
        for day, owner_id, owner_name, _, pool_name, pool_id, _, units, seconds in _daily(
            query, now, table="metering_nodeusage", key="pool_id", name="pool_name", unit="node_id", extra=""
        )
    ]
    rows.sort(
        key=lambda row: (
            row.day,
            row.owner_name,
            row.owner_id,
            row.kind != UsageKind.SERVICE,
            row.name,
            row.flavor_code,
        )
    )
    return rows


def usage_report(query: UsageQuery, *, now: datetime) -> UsageReport:
    """usage_rows with the totals of every day of the range (for the chart)."""
    rows = usage_rows(query, now=now)
    totals = {day: DayTotal(day) for day in query.days}
    for row in rows:
        total = totals.get(row.day)
        if total is None:
            # Only if PostgreSQL's and Python's zone data disagree about a midnight.
            continue
        if row.is_service:
            total.instance_seconds += row.seconds
            total.vcpu_seconds += row.vcpu_seconds or 0.0
        else:
            total.node_seconds += row.seconds
    return UsageReport(query=query, rows=rows, days=list(totals.values()))


def usage_users() -> list[tuple[int, str]]:
    """(id, username) of every user, for the staff's user filter."""
    return list(get_user_model().objects.order_by("username").values_list("id", "username"))
