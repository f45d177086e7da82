"""Reads: every query the views make, scoped to the user who asks."""

from django.db.models import Count, Prefetch, Q, QuerySet
from django.shortcuts import get_object_or_404

from services.models import (
    TRANSITIONAL_STATUSES,
    AIApplication,
    AIApplicationVersion,
    Instance,
    Service,
    ServiceVersionConfig,
    VersionStatus,
)


def service_list_for(user) -> QuerySet[Service]:
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


def service_list_has_transitional(services) -> bool:
    return any(service.status in TRANSITIONAL_STATUSES for service in services)


def service_get_for(user, service_id) -> Service:
    """One of the user's services, or 404 (also for another user's service)."""
    return get_object_or_404(service_list_for(user), id=service_id)


def service_detail_for(user, service_id) -> Service:
    service = service_get_for(user, service_id)
    service.instance_rows = list(
        Instance.objects.filter(service=service).select_related("node", "config__app_version__application")
    )
    service.event_rows = list(service.events.order_by("-created_at", "-id")[:200])
    return service


def ai_application_list_for(user) -> QuerySet[AIApplication]:
    return AIApplication.objects.filter(owner=user).prefetch_related(
        Prefetch("versions", queryset=AIApplicationVersion.objects.order_by("-created_at"))
    )


def ai_application_get_for(user, application_id) -> AIApplication:
    return get_object_or_404(AIApplication, owner=user, id=application_id)


def ai_version_get_for(user, version_id) -> AIApplicationVersion:
    return get_object_or_404(AIApplicationVersion.objects.select_related("application"), application__owner=user, id=version_id)


def deployable_versions_for(user) -> QuerySet[AIApplicationVersion]:
    return (
        AIApplicationVersion.objects.filter(application__owner=user, status=VersionStatus.NORMAL)
        .select_related("application")
        .order_by("application__name", "-created_at")
    )


def instance_logs_for(instances: list[Instance]) -> dict[int, str]:
    """The last log lines of each instance's container, read from its engine."""
    from django.conf import settings

    from services import runtime

    logs = {}
    for instance in instances:
        try:
            logs[instance.id] = runtime.container_logs(
                instance.node.docker_host, instance.container_name, tail=settings.CONTAINER_LOG_TAIL_LINES
            )
        except runtime.EngineError as exc:
            logs[instance.id] = f"(logs unavailable: {exc})"
    return logs
