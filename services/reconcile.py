"""The reconcile loop: make the engines match the database, and statuses true.

The database is the truth. Each cycle lists this console's containers with one
label-filtered call per engine, then:
- removes containers no service owns (or that a Failed service left behind);
- restarts or recreates missing and exited instances of serving services and
  health-checks the running ones, setting Running / Alarm / Abnormal;
- stops containers of Stopped services that are running again;
- re-enqueues Deploying / Stopping / Deleting work whose task lease lapsed
  (the worker died), so no transition is stranded;
- refreshes engine capacity and re-checks images of versions still Checking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from pools.models import Node
from services import runtime
from services.actions import (
    _container_spec,
    _enqueue,
    _in_parallel,
    ai_application_version_check_image,
    service_event_add,
)
from services.models import (
    SERVING_STATUSES,
    AIApplicationVersion,
    Instance,
    Service,
    ServiceEvent,
    ServiceStatus,
    VersionStatus,
)
from services.probes import probe_health

log = logging.getLogger(__name__)

RECONCILE_LOCK_KEY = 0x525453  # any constant; one reconcile at a time across all workers
NODE_REFRESH_SECONDS = 30
UNCLAIMED_GRACE_SECONDS = 10
RESTART_BACKOFF_MAX_SECONDS = 300
TASK_FOR_STATUS = {
    ServiceStatus.DEPLOYING: "service_deploy_task",
    ServiceStatus.STOPPING: "service_stop_task",
    ServiceStatus.DELETING: "service_delete_task",
}


@dataclass
class ReconcileReport:
    removed_orphans: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    status_changes: dict[str, str] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)
    unreachable_nodes: list[str] = field(default_factory=list)


def restart_backoff_seconds(crash_streak: int) -> float:
    """How long to wait before restarting an instance that died `crash_streak`
    times without being healthy in between: at once the first time, then 2, 4,
    8 … seconds, at most RESTART_BACKOFF_MAX_SECONDS."""
    if crash_streak == 0:
        return 0.0
    return float(min(2**crash_streak, RESTART_BACKOFF_MAX_SECONDS))


def _refresh_node(node: Node, now) -> None:
    try:
        info = runtime.engine_info(node.docker_host)
    except runtime.EngineError as exc:
        Node.objects.filter(id=node.id).update(is_reachable=False, last_error=str(exc)[:300], checked_at=now)
        node.is_reachable = False
        return
    Node.objects.filter(id=node.id).update(
        is_reachable=True, last_error="", checked_at=now, cpu_count=info.cpu_count, memory_mib=info.memory_mib
    )
    node.is_reachable = True


def nodes_refresh() -> None:
    """Read every enabled engine's capacity now (used at seed time and by the loop)."""
    now = timezone.now()
    for node in Node.objects.filter(is_enabled=True):
        _refresh_node(node, now)


def reconcile() -> ReconcileReport | None:
    """One cycle; returns None when another cycle is already running."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RECONCILE_LOCK_KEY])
        if not cursor.fetchone()[0]:
            return None
    try:
        return _reconcile_once()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RECONCILE_LOCK_KEY])


def _reconcile_once() -> ReconcileReport:
    report = ReconcileReport()
    now = timezone.now()

    # Containers first, then rows: a container is only ever created after its
    # row is committed, so reading rows second never shows a fresh container
    # as an orphan.
    nodes = list(Node.objects.filter(is_enabled=True))
    containers: dict[int, dict[str, runtime.ContainerInfo]] = {}
    for node in nodes:
        stale = node.checked_at is None or now - node.checked_at > timedelta(seconds=NODE_REFRESH_SECONDS)
        try:
            listed = runtime.list_managed_containers(node.docker_host, settings.CONSOLE_ID)
        except runtime.EngineError as exc:
            report.unreachable_nodes.append(node.name)
            if node.is_reachable:
                log.warning("engine %s unreachable: %s", node.name, exc)
            Node.objects.filter(id=node.id).update(is_reachable=False, last_error=str(exc)[:300], checked_at=now)
            continue
        containers[node.id] = {info.name: info for info in listed}
        if stale or not node.is_reachable:
            _refresh_node(node, now)

    services = {
        str(service.id): service
        for service in Service.objects.select_related("pool").prefetch_related(
            "instances__node", "instances__config__app_version__application", "instances__config__flavor"
        )
    }

    _remove_orphans(nodes, containers, services, report)
    _converge_serving(services, containers, report)
    _stop_strays(services, containers)
    _requeue_lapsed(services, now, report)
    _recheck_versions(now)
    return report


def _remove_orphans(nodes, containers, services, report: ReconcileReport) -> None:
    by_id = {node.id: node for node in nodes}
    # A Failed service owns no containers: its deploy removed them.
    owned = {
        (instance.node_id, instance.container_name)
        for service in services.values()
        if service.status != ServiceStatus.FAILED
        for instance in service.instances.all()
    }
    for node_id, listed in containers.items():
        for name in listed:
            if (node_id, name) in owned:
                continue
            try:
                runtime.remove_container(by_id[node_id].docker_host, name)
                report.removed_orphans.append(name)
            except runtime.EngineError as exc:
                log.warning("could not remove orphan %s: %s", name, exc)


def _converge_serving(services, containers, report: ReconcileReport) -> None:
    checks = []
    for service in services.values():
        if service.status not in SERVING_STATUSES:
            continue
        for instance in service.instances.all():
            checks.append((service, instance))

    def check(item) -> tuple[bool, str]:
        service, instance = item
        listed = containers.get(instance.node_id)
        if listed is None:
            return False, ""
        info = listed.get(instance.container_name)
        if info is not None and info.is_running:
            if info.host_port != instance.host_port:
                Instance.objects.filter(id=instance.id).update(host_port=info.host_port)
                instance.host_port = info.host_port
            healthy = instance.host_port is not None and probe_health(
                settings.INSTANCE_HOST,
                instance.host_port,
                instance.config.app_version.health_path,
                settings.HEALTH_PROBE_TIMEOUT_SECONDS,
            )
            return healthy, ""
        # Missing or not running: bring it back. The new container is checked
        # on the next cycle, once its server had a moment to start.
        now = timezone.now()
        backoff = restart_backoff_seconds(instance.crash_streak)
        if instance.restarted_at is not None and (now - instance.restarted_at).total_seconds() < backoff:
            return False, ""
        if info is None:
            what = "was missing"
        elif info.state in ("exited", "dead"):
            what = "had exited"
        else:
            what = f"was {info.state}"
        streak = instance.crash_streak + 1
        then = (
            f" ({streak} times since it was last healthy; next try in {restart_backoff_seconds(streak):.0f} s)"
            if streak > 1
            else ""
        )
        try:
            started = runtime.ensure_container_running(instance.node.docker_host, _container_spec(service, instance))
        except runtime.EngineError as exc:
            Instance.objects.filter(id=instance.id).update(crash_streak=streak, restarted_at=now)
            return False, f"Instance {instance.container_name} {what}; restart failed: {exc}{then}"
        Instance.objects.filter(id=instance.id).update(
            container_id=started.container_id,
            host_port=started.host_port,
            state=Instance.State.RUNNING,
            restart_count=instance.restart_count + 1,
            crash_streak=streak,
            restarted_at=now,
        )
        report.repaired.append(instance.container_name)
        return False, f"Instance {instance.container_name} {what}; restarted it{then}"

    results = _in_parallel(check, checks)
    healthy_by_service: dict[str, list[bool]] = {}
    for (service, instance), (healthy, note) in zip(checks, results, strict=True):
        healthy_by_service.setdefault(str(service.id), []).append(healthy)
        if healthy != instance.is_healthy or (healthy and instance.crash_streak):
            Instance.objects.filter(id=instance.id).update(
                is_healthy=healthy, **({"crash_streak": 0} if healthy else {})
            )
        if note:
            service_event_add(service.id, note, level=ServiceEvent.Level.WARNING)

    for service_id, flags in healthy_by_service.items():
        service = services[service_id]
        ready = sum(flags)
        if ready == len(flags):
            wanted = ServiceStatus.RUNNING
        elif ready:
            wanted = ServiceStatus.ALARM
        else:
            wanted = ServiceStatus.ABNORMAL
        if wanted == service.status:
            continue
        reason = "" if wanted == ServiceStatus.RUNNING else f"{ready}/{len(flags)} instance(s) healthy"
        level = ServiceEvent.Level.INFO if wanted == ServiceStatus.RUNNING else ServiceEvent.Level.WARNING
        # The status and its event commit together, so nobody sees one without
        # the other. Only move from the status we read: a user's Stop or Delete
        # since then wins.
        with transaction.atomic():
            moved = Service.objects.filter(id=service.id, status=service.status).update(
                status=wanted, status_reason=reason, status_changed_at=timezone.now()
            )
            if moved:
                report.status_changes[service.name] = wanted
                label = ServiceStatus(wanted).label
                service_event_add(service.id, f"{label}: {ready}/{len(flags)} instance(s) healthy", level=level)


def _stop_strays(services, containers) -> None:
    for service in services.values():
        if service.status != ServiceStatus.STOPPED:
            continue
        for instance in service.instances.all():
            info = containers.get(instance.node_id, {}).get(instance.container_name)
            if info is not None and info.is_running:
                try:
                    runtime.stop_container(instance.node.docker_host, instance.container_name)
                except runtime.EngineError as exc:
                    log.warning("could not stop %s: %s", instance.container_name, exc)


def _requeue_lapsed(services, now, report: ReconcileReport) -> None:
    for service in services.values():
        task_name = TASK_FOR_STATUS.get(service.status)
        if task_name is None:
            continue
        if service.lease_expires_at is None:
            lapsed = now - service.status_changed_at > timedelta(seconds=UNCLAIMED_GRACE_SECONDS)
        else:
            lapsed = service.lease_expires_at < now
        if lapsed:
            report.requeued.append(service.name)
            _enqueue(task_name, str(service.id))


def _recheck_versions(now) -> None:
    stuck = AIApplicationVersion.objects.filter(
        Q(status=VersionStatus.CHECKING), Q(created_at__lt=now - timedelta(seconds=UNCLAIMED_GRACE_SECONDS))
    ).values_list("id", flat=True)[:20]
    for version_id in stuck:
        ai_application_version_check_image(version_id=version_id)
