"""Reads: every query the views make, scoped to the user who asks."""

from __future__ import annotations

import base64
import codecs
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import BinaryField, Count, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce, Substr
from django.shortcuts import get_object_or_404
from django.utils import timezone

from pools.models import Node
from services.choices import TRANSITIONAL_STATUSES, ServiceStatus, VersionStatus
from services.contract import LATENCY_BUCKET_COUNT, percentile_ms
from services.models import (
    AIApplication,
    AIApplicationVersion,
    DataCollectionRecord,
    DataCollectionRule,
    Instance,
    Service,
    ServiceCallStat,
    ServiceEvent,
    ServiceUpdate,
    ServiceVersionConfig,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _instance_count(condition: Q) -> QuerySet[Any, Any]:
    return (
        Instance.objects.filter(condition, service=OuterRef("pk"))
        .order_by()
        .values("service")
        .annotate(n=Count("id"))
        .values("n")
    )


def _services_visible_to(user: User, *, all_users: bool) -> QuerySet[Service]:
    """The user's own services; with all_users, every user's services, for staff only."""
    if all_users and user.is_staff:
        return Service.objects.all()
    return Service.objects.filter(owner=user)


def service_list_for(user: User, *, all_users: bool = False) -> QuerySet[Service]:
    """The user's services (every user's, for staff asking for all_users) with
    what the list shows, in a fixed number of queries."""
    return (
        _services_visible_to(user, all_users=all_users)
        .select_related("pool", "second_pool", "owner")
        # Counted per row by subqueries, so a page of 10 counts 10 services' instances, not all.
        .annotate(
            instance_total=Coalesce(Subquery(_instance_count(Q())), 0),
            instance_ready=Coalesce(Subquery(_instance_count(Q(is_healthy=True))), 0),
        )
        .prefetch_related(
            Prefetch(
                "configs",
                queryset=ServiceVersionConfig.objects.select_related("app_version__application", "flavor"),
            )
        )
        .order_by("-created_at")
    )


# The list's sort keys, as the URL says them, and what they order by.
SERVICE_SORTS = {
    "name": ("name",),
    "-name": ("-name",),
    "status": ("status", "name"),
    "-status": ("-status", "name"),
    "created": ("created_at", "id"),
    "-created": ("-created_at", "-id"),
}
SERVICE_PAGE_SIZES = (10, 20, 50)


@dataclass(frozen=True)
class ServiceListQuery:
    """What the list shows, as its URL says it. Any value that makes no sense
    falls back to its default: a hand-edited URL never breaks the page.

    `scope="all"` (every user's services) and the owner, pool and node filters
    are the operators' view: for anyone but staff they stay at their defaults."""

    q: str = ""
    status: str = ""
    app: str = ""
    sort: str = "-created"
    page: int = 1
    size: int = SERVICE_PAGE_SIZES[0]
    scope: str = ""
    owner: str = ""
    pool: str = ""
    node: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, is_staff: bool = False) -> ServiceListQuery:
        status = params.get("status", "")
        app = params.get("app", "")
        sort = params.get("sort", "-created")
        size = params.get("size", "")
        page = params.get("page", "")
        is_operator = is_staff and params.get("scope", "") == "all"

        def operator_id(name: str) -> str:
            value = params.get(name, "")
            return value if is_operator and value.isdigit() and len(value) < 12 else ""

        return cls(
            q=params.get("q", "").strip()[:64],
            status=status if status in ServiceStatus.values else "",
            app=app if app.isdigit() and len(app) < 12 else "",
            sort=sort if sort in SERVICE_SORTS else "-created",
            page=int(page) if page.isdigit() and 0 < int(page) < 100_000 else 1,
            size=int(size) if size.isdigit() and int(size) in SERVICE_PAGE_SIZES else SERVICE_PAGE_SIZES[0],
            scope="all" if is_operator else "",
            owner=operator_id("owner"),
            pool=operator_id("pool"),
            node=operator_id("node"),
        )

    @property
    def is_all_users(self) -> bool:
        return self.scope == "all"

    @property
    def is_filtered(self) -> bool:
        return bool(self.q or self.status or self.app or self.owner or self.pool or self.node)

    def url_params(self, **changes: Any) -> str:
        """This query with some values changed, as a query string of the non-default values."""
        values = {**self.__dict__, **changes}
        defaults = ServiceListQuery().__dict__
        return urlencode({key: value for key, value in values.items() if value != defaults[key]})


@dataclass
class ServicePage:
    services: list[Service]
    total: int
    page: int
    pages: int
    # Services by status, all of the user's (not only the filtered ones).
    status_counts: dict[str, int]
    query: ServiceListQuery

    @property
    def has_transitional(self) -> bool:
        return service_list_has_transitional(self.services)

    def url(self, **changes: Any) -> str:
        """A link to this list with some values changed (back to page 1 unless a page is given)."""
        changes.setdefault("page", 1)
        params = self.query.url_params(**changes)
        return f"?{params}" if params else "?"

    @property
    def sort_links(self) -> dict[str, tuple[str, str]]:
        """Per sortable column: (its link, "up", "down" or "" for how it sorts now)."""
        links: dict[str, tuple[str, str]] = {}
        for key in ("name", "status", "created"):
            if self.query.sort == key:
                links[key] = (self.url(sort=f"-{key}"), "up")
            elif self.query.sort == f"-{key}":
                links[key] = (self.url(sort=key), "down")
            else:
                links[key] = (self.url(sort=key), "")
        return links

    @property
    def status_links(self) -> list[tuple[ServiceStatus, int, str]]:
        """(status, how many of the user's services have it, a link filtering by it), for those that occur."""
        return [
            (status, self.status_counts[status.value], self.url(status=status.value))
            for status in ServiceStatus
            if self.status_counts.get(status.value)
        ]

    @property
    def previous_url(self) -> str:
        return self.url(page=self.page - 1) if self.page > 1 else ""

    @property
    def next_url(self) -> str:
        return self.url(page=self.page + 1) if self.page < self.pages else ""

    @property
    def poll_url(self) -> str:
        params = self.query.url_params(page=self.page)
        return f"?{params}" if params else ""


def service_page_for(user: User, query: ServiceListQuery) -> ServicePage:
    """One page of the user's services (every user's in the operators' view),
    searched, filtered and sorted as asked, in a fixed number of queries
    whatever the number of services."""
    all_users = query.is_all_users and user.is_staff
    services = service_list_for(user, all_users=all_users)
    if query.q:
        services = services.filter(name__icontains=query.q)
    if query.status:
        services = services.filter(status=query.status)
    if query.app:
        using_app = ServiceVersionConfig.objects.filter(app_version__application_id=int(query.app))
        services = services.filter(id__in=using_app.values("service_id"))
    if all_users and query.owner:
        services = services.filter(owner_id=int(query.owner))
    if all_users and query.pool:
        services = services.filter(pool_id=int(query.pool))
    if all_users and query.node:
        services = services.filter(id__in=Instance.objects.filter(node_id=int(query.node)).values("service_id"))
    total = services.count()
    pages = max(1, -(-total // query.size))
    page = min(query.page, pages)
    offset = (page - 1) * query.size
    rows = list(services.order_by(*SERVICE_SORTS[query.sort])[offset : offset + query.size])
    if all_users:
        _owner_links(rows, query)
    return ServicePage(rows, total, page, pages, _status_counts(user, all_users=all_users), query)


# At most this many rows are refreshed by one poll: the largest page.
WATCHED_ROWS_MAX = max(SERVICE_PAGE_SIZES)


def watched_ids(values: Iterable[str]) -> list[uuid.UUID]:
    """The service ids a list poll watches, as sent; what is not an id is dropped."""
    ids = []
    for value in list(values)[:WATCHED_ROWS_MAX]:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    return ids


def service_rows_watched_for(user: User, query: ServiceListQuery, ids: list[uuid.UUID]) -> ServicePage:
    """The list's poll: the rows it watches (transitional ones on screen), as
    they are now, and the counts; a watched row that is gone is simply absent."""
    all_users = query.is_all_users and user.is_staff
    rows = list(service_list_for(user, all_users=all_users).filter(id__in=ids)) if ids else []
    if all_users:
        _owner_links(rows, query)
    return ServicePage(rows, len(rows), query.page, 1, _status_counts(user, all_users=all_users), query)


def _owner_links(rows: list[Service], query: ServiceListQuery) -> None:
    for row in rows:
        row.owner_list_url = "?" + query.url_params(owner=str(row.owner_id), page=1)


def _status_counts(user: User, *, all_users: bool) -> dict[str, int]:
    return dict(
        _services_visible_to(user, all_users=all_users)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )


@dataclass(frozen=True)
class NodeLoad:
    node_id: int
    name: str
    pool_id: int
    pool_name: str
    instances: int
    is_reachable: bool
    is_enabled: bool
    list_url: str  # the operators' list filtered by this node


@dataclass(frozen=True)
class OperatorOverview:
    """The line above the operators' list: instances per node and the engines
    that do not answer (services by status come with the page's counts)."""

    nodes: list[NodeLoad]

    @property
    def unreachable(self) -> list[NodeLoad]:
        return [node for node in self.nodes if not node.is_reachable]

    @property
    def pools(self) -> list[tuple[int, str]]:
        """(id, name) of the pools that have nodes, for the Pool filter."""
        return list(dict((node.pool_id, node.pool_name) for node in self.nodes).items())


def operator_overview(query: ServiceListQuery) -> OperatorOverview:
    """One query, whatever the number of services."""
    rows = (
        Node.objects.select_related("pool").annotate(instance_count=Count("instances")).order_by("pool__name", "name")
    )
    return OperatorOverview(
        [
            NodeLoad(
                row.id,
                row.name,
                row.pool_id,
                row.pool.name,
                row.instance_count,
                row.is_reachable,
                row.is_enabled,
                "?" + query.url_params(node=str(row.id), page=1),
            )
            for row in rows
        ]
    )


def service_owners() -> QuerySet[Any, Any]:
    """The users who have services, for the operators' Owner filter."""
    return (
        get_user_model()
        .objects.filter(id__in=Service.objects.values("owner_id"))
        .order_by("username")
        .values_list("id", "username")
    )


def service_list_has_transitional(services: Iterable[Service]) -> bool:
    return any(service.status in TRANSITIONAL_STATUSES for service in services)


def service_get_for(user: User, service_id: uuid.UUID | str, *, as_operator: bool = False) -> Service:
    """One of the user's services, or 404 (also for another user's service).
    With as_operator, staff get any user's service: for the operators' view, and
    only where an operator may act (details, Start, Stop)."""
    return get_object_or_404(service_list_for(user, all_users=as_operator), id=service_id)


def service_detail_for(user: User, service_id: uuid.UUID | str, *, as_operator: bool = False) -> Service:
    """One of the user's services (any user's, for staff as_operator) with its
    instances (`instance_rows`), its newest 200 events (`event_rows`) and
    50 updates (`update_rows`), or 404."""
    # Service declares both attributes for the code that reads them; django-stubs
    # would declare them here too, and calls that a redefinition.
    services = service_list_for(
        user, all_users=as_operator
    ).prefetch_related(  # type: ignore[no-redef]
        Prefetch(
            "instances",
            queryset=Instance.objects.select_related("node", "config__app_version__application"),
            to_attr="instance_rows",
        ),
        Prefetch("events", queryset=ServiceEvent.objects.order_by("-created_at", "-id")[:200], to_attr="event_rows"),
        Prefetch(
            "updates",
            queryset=ServiceUpdate.objects.select_related("requested_by").order_by("-created_at", "-id")[:50],
            to_attr="update_rows",
        ),
    )
    return get_object_or_404(services, id=service_id)


def service_update_history(service: Service, limit: int = 50) -> list[ServiceUpdate]:
    """The service's updates, newest first, with who asked for each."""
    return list(service.updates.select_related("requested_by").order_by("-created_at", "-id")[:limit])


def ai_application_names_for(user: User) -> QuerySet[AIApplication]:
    """The user's applications by name, for a filter's choices."""
    return AIApplication.objects.filter(owner=user).only("id", "name").order_by("name")


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


# --- Data collection ----------------------------------------------------------------

COLLECTED_RECORDS_SHOWN = 50
# Of each body, the tab shows this much (the database sends no more).
BODY_PREVIEW_BYTES = 96


def collection_rule_for(service: Service) -> DataCollectionRule:
    """The service's data collection rule; a service that never set one has the
    default (off), unsaved."""
    return DataCollectionRule.objects.filter(service=service).first() or DataCollectionRule(service=service)


@dataclass(frozen=True)
class CollectedRecordRow:
    record: DataCollectionRecord
    # The first bytes of each body as text (hex when not UTF-8); None: not kept.
    request_preview: str | None
    response_preview: str | None


def collected_records_newest(service: Service, limit: int = COLLECTED_RECORDS_SHOWN) -> list[CollectedRecordRow]:
    """The service's newest records, newest first, with only the first bytes of
    their bodies read. One query."""
    records = (
        DataCollectionRecord.objects.filter(service=service)
        .defer("request_body", "response_body")
        .annotate(
            request_head=Substr("request_body", 1, BODY_PREVIEW_BYTES, output_field=BinaryField()),
            response_head=Substr("response_body", 1, BODY_PREVIEW_BYTES, output_field=BinaryField()),
        )
        .order_by("-id")[:limit]
    )
    return [
        CollectedRecordRow(record, body_preview(record.request_head), body_preview(record.response_head))
        for record in records
    ]


def collected_records_count(service: Service) -> int:
    return DataCollectionRecord.objects.filter(service=service).count()


def body_preview(data: bytes | memoryview | None) -> str | None:
    """A body's first bytes for people: UTF-8 text (a character cut at the end
    left out) with control characters as spaces, else hex."""
    if data is None:
        return None
    data = bytes(data)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return "0x " + data[:32].hex(" ")
    return "".join(char if char.isprintable() else " " for char in text)


def body_for_json(data: bytes | memoryview | None) -> tuple[str | None, str | None]:
    """(body, encoding) of a body in an export line: the text when it is UTF-8
    ("utf-8"), else base64 ("base64"); (None, None) when it was not kept. A body
    cut by the cap in the middle of a character is base64, so no byte is lost."""
    if data is None:
        return None, None
    data = bytes(data)
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _collected_record_json(record: DataCollectionRecord) -> dict[str, Any]:
    request_body, request_encoding = body_for_json(record.request_body)
    response_body, response_encoding = body_for_json(record.response_body)
    return {
        "id": record.id,
        "service_id": str(record.service_id),
        "created_at": record.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "version": record.version,
        "request_id": record.request_id,
        "method": record.method,
        "status": record.status_code,
        "latency_ms": round(record.latency_ms, 3),
        "request": {
            "content_type": record.request_content_type,
            "size": record.request_size,
            "truncated": record.request_truncated,
            "body": request_body,
            "body_encoding": request_encoding,
        },
        "response": {
            "content_type": record.response_content_type,
            "size": record.response_size,
            "truncated": record.response_truncated,
            "body": response_body,
            "body_encoding": response_encoding,
        },
    }


def collected_records_jsonl(service: Service, chunk_size: int = 200) -> Iterator[bytes]:
    """Every record of the service, oldest first, as JSON Lines (one object and
    a newline each), read through a server-side cursor `chunk_size` at a time
    so a large export never sits in memory whole."""
    records = DataCollectionRecord.objects.filter(service=service).order_by("id")
    for record in records.iterator(chunk_size=chunk_size):
        yield (json.dumps(_collected_record_json(record), ensure_ascii=False) + "\n").encode()
