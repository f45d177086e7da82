"""Reads: every query the views make, scoped to the user who asks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Count, Prefetch, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404
from django.utils import timezone

from services.choices import TRANSITIONAL_STATUSES, VersionStatus
from services.contract import LATENCY_BUCKET_COUNT, percentile_ms
from services.models import (
    AIApplication,
    AIApplicationVersion,
    Instance,
    Service,
    ServiceCallStat,
    ServiceEvent,
    ServiceVersionConfig,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def service_list_for(user: User) -> QuerySet[Service]:
    """The user's services with what the list shows, in a fixed number of queries."""
    return (
        Service.objects.filter(owner=user)
        .select_related("pool")
        .annotate(
            instance_total=Count("instances", distinct=True),
            instance_ready=Count("instances", filter=Q(instances__is_healthy=True), distinct=True),
        )
        .prefetch_related(
            Prefetch(
                "configs",
                queryset=ServiceVersionConfig.objects.select_related("app_version__application", "flavor"),
            )
        )
        .order_by("-created_at")
    )


def service_list_has_transitional(services: Iterable[Service]) -> bool:
    return any(service.status in TRANSITIONAL_STATUSES for service in services)


def service_get_for(user: User, service_id: uuid.UUID | str) -> Service:
    """One of the user's services, or 404 (also for another user's service)."""
    return get_object_or_404(service_list_for(user), id=service_id)


def service_detail_for(user: User, service_id: uuid.UUID | str) -> Service:
    """One of the user's services with its instances (`instance_rows`) and its
    newest 200 events (`event_rows`), or 404."""
    # Service declares both attributes for the code that reads them; django-stubs
    # would declare them here too, and calls that a redefinition.
    services = service_list_for(
        user
    ).prefetch_related(  # type: ignore[no-redef]
        Prefetch(
            "instances",
            queryset=Instance.objects.select_related("node", "config__app_version__application"),
            to_attr="instance_rows",
        ),
        Prefetch("events", queryset=ServiceEvent.objects.order_by("-created_at", "-id")[:200], to_attr="event_rows"),
    )
    return get_object_or_404(services, id=service_id)


def ai_application_list_for(user: User) -> QuerySet[AIApplication]:
    return AIApplication.objects.filter(owner=user).prefetch_related(
        Prefetch("versions", queryset=AIApplicationVersion.objects.order_by("-created_at"))
    )


def ai_application_get_for(user: User, application_id: int) -> AIApplication:
    return get_object_or_404(AIApplication, owner=user, id=application_id)


def ai_version_get_for(user: User, version_id: int) -> AIApplicationVersion:
    return get_object_or_404(
        AIApplicationVersion.objects.select_related("application"), application__owner=user, id=version_id
    )


def deployable_versions_for(user: User) -> QuerySet[AIApplicationVersion]:
    return (
        AIApplicationVersion.objects.filter(application__owner=user, status=VersionStatus.NORMAL)
        .select_related("application")
        .order_by("application__name", "-created_at")
    )


# --- Call statistics ------------------------------------------------------------


@dataclass(frozen=True)
class VersionCallSummary:
    config: ServiceVersionConfig
    calls: int
    failed: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class ServiceCallSummary:
    calls: int
    failed: int
    versions: list[VersionCallSummary]

    @property
    def failed_percent(self) -> float | None:
        return 100 * self.failed / self.calls if self.calls else None


# Postgres has no element-wise sum of arrays; unnest the histograms with their
# positions and sum per position, so the merge happens in the database whatever
# the number of minute rows.
_HISTOGRAM_SQL = f"""
SELECT s.config_id, h.n, sum(h.v)
FROM {ServiceCallStat._meta.db_table} s
CROSS JOIN LATERAL unnest(s.latency_hist) WITH ORDINALITY AS h(v, n)
WHERE s.service_id = %s
GROUP BY s.config_id, h.n
"""


def service_call_summary(service: Service) -> ServiceCallSummary:
    """Totals (the service's running counters) and, per version, calls, failed
    calls and latency percentiles since the service was created.

    Queries: the configurations with version and application; calls and failed
    per configuration; the merged histogram per configuration.
    """
    configs = list(ServiceVersionConfig.objects.filter(service=service).select_related("app_version__application"))
    counts: dict[int, Mapping[str, Any]] = {
        row["config_id"]: row
        for row in ServiceCallStat.objects.filter(service=service)
        .order_by()
        .values("config_id")
        .annotate(calls=Sum("calls"), failed=Sum("failed"))
    }
    histograms: dict[int, list[int]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_HISTOGRAM_SQL, [service.pk])
        for config_id, position, total in cursor.fetchall():
            histograms.setdefault(config_id, [0] * LATENCY_BUCKET_COUNT)[position - 1] = int(total)
    versions = []
    for config in configs:
        row = counts.get(config.id, {})
        histogram = histograms.get(config.id, [0] * LATENCY_BUCKET_COUNT)
        versions.append(
            VersionCallSummary(
                config=config,
                calls=row.get("calls") or 0,
                failed=row.get("failed") or 0,
                p50_ms=percentile_ms(histogram, 0.50),
                p90_ms=percentile_ms(histogram, 0.90),
                p99_ms=percentile_ms(histogram, 0.99),
            )
        )
    return ServiceCallSummary(calls=service.invocation_times, failed=service.failed_times, versions=versions)


@dataclass(frozen=True)
class MinuteCalls:
    start: datetime
    calls: int
    failed: int


def service_call_series(service: Service, minutes: int = 60, now: datetime | None = None) -> list[MinuteCalls]:
    """Calls and failed calls of every version together, per minute, for the
    last `minutes` minutes up to and including the current one, oldest first;
    minutes without calls are present with zeros.

    One query: the minute rows of the window summed over versions.
    """
    # The gateway writes buckets at whole UTC minutes.
    last = (now or timezone.now()).astimezone(UTC).replace(second=0, microsecond=0)
    first = last - timedelta(minutes=minutes - 1)
    rows: dict[datetime, Mapping[str, Any]] = {
        row["bucket_start"]: row
        for row in ServiceCallStat.objects.filter(service=service, bucket_start__gte=first, bucket_start__lte=last)
        .order_by("bucket_start")
        .values("bucket_start")
        .annotate(calls=Sum("calls"), failed=Sum("failed"))
    }
    series = []
    for offset in range(minutes):
        start = first + timedelta(minutes=offset)
        row = rows.get(start, {})
        series.append(MinuteCalls(start=start, calls=row.get("calls") or 0, failed=row.get("failed") or 0))
    return series
