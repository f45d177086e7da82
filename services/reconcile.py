"""The reconcile loop: make the engines match the database, and statuses true.

The database is the truth. Each cycle lists this console's containers with one
label-filtered call per engine, then:
- removes containers no service owns (or that a Failed service left behind);
- restarts or recreates missing and exited instances of serving services and
  health-checks the running ones, setting Running / Alarm / Abnormal;
- stops containers of Stopped services that are running again;
- reports Deploying / Stopping / Deleting work whose task lease lapsed (the
  worker died) for services.tasks.reconcile_task to enqueue again, so no
  transition is stranded;
- refreshes engine capacity and re-checks images of versions still Checking.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from pools.actions import swarm_nodes_record, swarm_pool_unreachable
from pools.models import Node, PoolKind, ResourcePool
from services import runtime
from services.choices import (
    SUPERVISED_STATUSES,
    TRANSITIONAL_STATUSES,
    ConfigPhase,
    InstanceState,
    ServiceStatus,
    VersionStatus,
)
from services.instance_runtime import (
    TaskPlace,
    config_swarm_name,
    container_spec,
    in_parallel,
    instance_address,
    instance_follow,
    is_on_swarm,
    service_network_spec,
    swarm_places,
    version_service_spec,
)
from services.lifecycle import advisory_lock, ai_application_version_check_image
from services.models import AIApplicationVersion, Instance, Service, ServiceEvent
from services.probes import probe_health
from services.runtime import swarm
from services.transitions import service_event_add, service_transition
from services.validation import hours_text

log = logging.getLogger(__name__)

RECONCILE_LOCK_KEY = 0x525453  # any constant; one reconcile at a time across all workers
NODE_REFRESH_SECONDS = 30
# A transitional service nobody has claimed for this long gets its task enqueued again.
UNCLAIMED_GRACE_SECONDS = 5
# How long after a failed health probe the reconcile loop probes once more.
PROBE_RETRY_DELAY_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 300


@dataclass
class ReconcileReport:
    removed_orphans: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    status_changes: dict[str, str] = field(default_factory=dict)
    requeued: list[str] = field(default_factory=list)
    unreachable_nodes: list[str] = field(default_factory=list)
    auto_stopped: list[str] = field(default_factory=list)
    # (service id, status) of transitional work whose lease lapsed: the caller
    # enqueues its task again.
    lapsed: list[tuple[str, ServiceStatus]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def restart_backoff_seconds(crash_streak: int) -> float:
    """How long to wait before restarting an instance that died `crash_streak`
    times without being healthy in between: at once the first time, then 2, 4,
    8 … seconds, at most RESTART_BACKOFF_MAX_SECONDS."""
    if crash_streak == 0:
        return 0.0
    return float(min(2**crash_streak, RESTART_BACKOFF_MAX_SECONDS))


def _refresh_node(node: Node, now: datetime) -> None:
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


def _refresh_swarm_pool(pool: ResourcePool, now: datetime, report: ReconcileReport | None = None) -> bool:
    """One node list from the pool's manager: the pool's nodes as the swarm sees
    them. False when the manager did not answer."""
    try:
        listed = swarm.swarm_nodes(pool.manager_url)
    except runtime.EngineError as exc:
        if report is not None:
            report.unreachable_nodes.append(pool.name)
        swarm_pool_unreachable(pool=pool, reason=str(exc), now=now)
        return False
    swarm_nodes_record(pool=pool, nodes=listed, now=now)
    return True


@dataclass(frozen=True)
class SwarmView:
    """What one Swarm pool's manager said this cycle: its console services' names,
    their running tasks, and the console's service networks."""

    pool: ResourcePool
    service_names: set[str]
    places: dict[str, TaskPlace]
    network_names: set[str]


def _swarm_view(pool: ResourcePool, now: datetime, report: ReconcileReport) -> SwarmView | None:
    """One node, service, task and network list from the pool's manager; None when it did not answer."""
    if not _refresh_swarm_pool(pool, now, report):
        return None
    try:
        services = swarm.list_managed_services(pool.manager_url, settings.CONSOLE_ID)
        tasks = swarm.list_managed_tasks(pool.manager_url, settings.CONSOLE_ID, services=services)
        names = {info.name for info in services}
        places = swarm_places(pool.id, tasks, names)
        networks = set(swarm.list_managed_networks(pool.manager_url, settings.CONSOLE_ID))
    except runtime.EngineError as exc:
        report.unreachable_nodes.append(pool.name)
        swarm_pool_unreachable(pool=pool, reason=str(exc), now=now)
        return None
    return SwarmView(pool, names, places, networks)


def nodes_refresh() -> None:
    """Read every enabled engine's capacity, and every swarm's nodes, now (used at seed time and by the loop)."""
    now = timezone.now()
    for node in Node.objects.filter(is_enabled=True).exclude(pool__kind=PoolKind.SWARM):
        _refresh_node(node, now)
    for pool in ResourcePool.objects.filter(kind=PoolKind.SWARM):
        _refresh_swarm_pool(pool, now)


def reconcile() -> ReconcileReport | None:
    """One cycle; returns None when another cycle is already running."""
    with advisory_lock(RECONCILE_LOCK_KEY) as is_held:
        return _reconcile_once() if is_held else None


def _reconcile_once() -> ReconcileReport:
    report = ReconcileReport()
    now = timezone.now()

    # Containers first, then rows: a container is only ever created after its
    # row is committed, so reading rows second never shows a fresh container
    # as an orphan.
    # A Swarm pool's nodes, services and tasks are read from its manager, never
    # listed as engines: the containers there are Swarm's to keep.
    swarms = {pool.id: _swarm_view(pool, now, report) for pool in ResourcePool.objects.filter(kind=PoolKind.SWARM)}
    nodes = list(Node.objects.filter(is_enabled=True).exclude(pool__kind=PoolKind.SWARM))
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
    networks = {service_network_spec(service_id).name for service_id in services}
    _remove_orphan_networks(nodes, containers, networks)
    for view in swarms.values():
        if view is not None:
            _remove_orphan_swarm_services(view, services, report)
            _remove_orphan_swarm_networks(view, networks)
    _converge_serving(services, containers, swarms, report)
    _stop_strays(services, containers)
    _auto_stop_due(services, now, report)
    _requeue_lapsed(services, now, report)
    _recheck_versions(now)
    return report


def _remove_orphans(
    nodes: list[Node],
    containers: dict[int, dict[str, runtime.ContainerInfo]],
    services: dict[str, Service],
    report: ReconcileReport,
) -> None:
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


# A Swarm service is kept for a service in these statuses; in any other (Stopped,
# Failed, or on its way there) its Swarm services go, as its containers would.
SWARM_KEPT_STATUSES = (*SUPERVISED_STATUSES, ServiceStatus.DEPLOYING, ServiceStatus.UPGRADING)


def _remove_orphan_swarm_services(view: SwarmView, services: dict[str, Service], report: ReconcileReport) -> None:
    """Remove the pool's Swarm services that no configuration of a kept service
    names. Listed before the rows were read, so a Swarm service a deploy created
    has its rows here."""
    wanted = {
        config_swarm_name(instance.config)
        for service in services.values()
        if service.status in SWARM_KEPT_STATUSES
        for instance in service.instances.all()
    }
    for name in sorted(view.service_names - wanted):
        try:
            swarm.remove_version_service(view.pool.manager_url, name)
            report.removed_orphans.append(name)
        except runtime.EngineError as exc:
            log.warning("could not remove Swarm service %s: %s", name, exc)


def _remove_orphan_networks(
    nodes: list[Node], containers: dict[int, dict[str, runtime.ContainerInfo]], wanted: set[str]
) -> None:
    """Remove service networks not `wanted` (their service is gone: a delete that died half-way, say)."""
    for node in nodes:
        if node.id not in containers:
            continue  # the engine did not answer this cycle
        try:
            for name in runtime.list_managed_networks(node.docker_host, settings.CONSOLE_ID):
                if name not in wanted:
                    runtime.remove_network(node.docker_host, name)
        except runtime.EngineError as exc:
            # Most often a container on it is still being removed; the next cycle retries.
            log.info("could not remove an orphan network on %s: %s", node.name, exc)


def _remove_orphan_swarm_networks(view: SwarmView, wanted: set[str]) -> None:
    """Remove overlay networks not `wanted` (their service is gone): a delete
    leaves its network while Swarm still stops the tasks on it."""
    for name in sorted(view.network_names - wanted):
        try:
            swarm.remove_network(view.pool.manager_url, name)
        except runtime.EngineError as exc:
            log.info("could not remove the orphan overlay network %s yet: %s", name, exc)


@dataclass(frozen=True)
class InstanceCheck:
    """What one cycle found out about one instance of a supervised service."""

    is_healthy: bool
    state: InstanceState | None = None  # None: unknown this cycle (its engine did not answer)
    note: str = ""  # a line for the service's timeline


def _converge_serving(
    services: dict[str, Service],
    containers: dict[int, dict[str, runtime.ContainerInfo]],
    swarms: dict[int, SwarmView | None],
    report: ReconcileReport,
) -> None:
    """Keep every instance of a Running, Alarm or Abnormal service running and
    probed, then settle each service's status on how many answered. An
    Upgrading service's serving instances are kept up too (its status is the
    update's to settle; its new and draining instances are the update's)."""
    checks = [
        (service, instance)
        for service in services.values()
        if service.status in SUPERVISED_STATUSES or service.status == ServiceStatus.UPGRADING
        for instance in service.instances.all()
        if service.status != ServiceStatus.UPGRADING or instance.config.phase == ConfigPhase.SERVING
    ]

    def converge(item: tuple[Service, Instance]) -> InstanceCheck:
        service, instance = item
        if is_on_swarm(instance):
            return _swarm_instance_converge(service, instance, swarms.get(instance.node.pool_id))
        return _instance_converge(service, instance, containers.get(instance.node_id), report)

    results = in_parallel(converge, checks)
    healthy_by_service: dict[str, list[bool]] = {}
    for (service, instance), result in zip(checks, results, strict=True):
        healthy_by_service.setdefault(str(service.id), []).append(result.is_healthy)
        _instance_record(instance, result)
        if result.note:
            service_event_add(service.id, result.note, level=ServiceEvent.Level.WARNING)
    for service_id, flags in healthy_by_service.items():
        if services[service_id].status == ServiceStatus.UPGRADING:
            continue
        _service_status_settle(services[service_id], ready=sum(flags), total=len(flags), report=report)


def _instance_converge(
    service: Service,
    instance: Instance,
    listed: dict[str, runtime.ContainerInfo] | None,
    report: ReconcileReport,
) -> InstanceCheck:
    """Probe a running instance, or bring a missing or exited one back."""
    if listed is None:
        # Its engine did not answer. The container may well be serving still
        # (live restore keeps containers through an engine restart): whether
        # it answers its health check is what counts.
        return InstanceCheck(is_healthy=_instance_answers(instance))
    info = listed.get(instance.container_name)
    if info is not None and info.is_running:
        if info.host_port != instance.host_port:
            Instance.objects.filter(id=instance.id).update(host_port=info.host_port)
            instance.host_port = info.host_port
        return InstanceCheck(is_healthy=_instance_answers(instance), state=InstanceState.RUNNING)
    return _instance_restart(service, instance, info, report)


def _swarm_instance_converge(service: Service, instance: Instance, view: SwarmView | None) -> InstanceCheck:
    """Probe the instance where its task runs now. Swarm replaces a task that
    exits by itself: the console never restarts one, it only brings back a
    Swarm service that went missing."""
    if view is None:
        # The manager did not answer; the tasks may well be serving still.
        return InstanceCheck(is_healthy=_instance_answers(instance))
    place = view.places.get(instance.container_name)
    if place is not None and place.info.is_running:
        instance_follow(instance, place)
        return InstanceCheck(is_healthy=_instance_answers(instance), state=InstanceState.RUNNING)
    name = config_swarm_name(instance.config)
    if name in view.service_names:
        how = f"is {place.info.state}" if place is not None else "has no task"
        return InstanceCheck(
            is_healthy=False,
            state=InstanceState.MISSING,
            note=""
            if instance.state != InstanceState.RUNNING
            else f"Instance {instance.container_name} {how}; Swarm is replacing it",
        )
    try:
        swarm.ensure_version_service(view.pool.manager_url, version_service_spec(service, instance.config))
    except runtime.EngineError as exc:
        return InstanceCheck(
            is_healthy=False,
            state=InstanceState.MISSING,
            note=f"Swarm service {name} was missing; creating it failed: {exc}",
        )
    view.service_names.add(name)
    return InstanceCheck(
        is_healthy=False, state=InstanceState.MISSING, note=f"Swarm service {name} was missing; created it again"
    )


def _instance_answers(instance: Instance) -> bool:
    """Probe the instance's health path; a failed probe is tried once more a
    moment later, so a blip (an engine reprogramming its port forwarding as it
    restarts) does not take a serving instance out of the gateway."""
    if instance.host_port is None:
        return False
    for attempt in range(2):
        if attempt:
            time.sleep(PROBE_RETRY_DELAY_SECONDS)
        if probe_health(
            instance_address(instance),
            instance.host_port,
            instance.config.app_version.health_path,
            settings.HEALTH_PROBE_TIMEOUT_SECONDS,
        ):
            return True
    return False


def _instance_restart(
    service: Service, instance: Instance, info: runtime.ContainerInfo | None, report: ReconcileReport
) -> InstanceCheck:
    """Start a missing or stopped container again, unless it is waiting out its
    back-off. The new container is probed on the next cycle, once its server
    had a moment to start."""
    down = InstanceState.MISSING if info is None else InstanceState.EXITED
    now = timezone.now()
    backoff = restart_backoff_seconds(instance.crash_streak)
    if instance.restarted_at is not None and (now - instance.restarted_at).total_seconds() < backoff:
        return InstanceCheck(is_healthy=False, state=down)
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
    if instance.state == InstanceState.RUNNING:
        # Written down before the restart, so metering (its triggers) does not
        # count the time the instance was down as running.
        Instance.objects.filter(id=instance.id).update(state=down)
    try:
        started = runtime.ensure_container_running(instance.node.docker_host, container_spec(service, instance))
    except runtime.EngineError as exc:
        Instance.objects.filter(id=instance.id).update(crash_streak=streak, restarted_at=now)
        return InstanceCheck(
            is_healthy=False, state=down, note=f"Instance {instance.container_name} {what}; restart failed: {exc}{then}"
        )
    Instance.objects.filter(id=instance.id).update(
        container_id=started.container_id,
        host_port=started.host_port,
        state=InstanceState.RUNNING,
        restart_count=instance.restart_count + 1,
        crash_streak=streak,
        restarted_at=now,
    )
    instance.state = InstanceState.RUNNING
    report.repaired.append(instance.container_name)
    return InstanceCheck(
        is_healthy=False,
        state=InstanceState.RUNNING,
        note=f"Instance {instance.container_name} {what}; restarted it{then}",
    )


def _instance_record(instance: Instance, result: InstanceCheck) -> None:
    """Write what changed: health, state, and a healthy instance's clean crash streak."""
    changes: dict[str, object] = {}
    if result.is_healthy != instance.is_healthy:
        changes["is_healthy"] = result.is_healthy
    if result.is_healthy and instance.crash_streak:
        changes["crash_streak"] = 0
    if result.state is not None and result.state != instance.state:
        changes["state"] = result.state
    if changes:
        Instance.objects.filter(id=instance.id).update(**changes)


def _service_status_settle(service: Service, *, ready: int, total: int, report: ReconcileReport) -> None:
    """Running when every instance answers, Alarm when some do, Abnormal when none do."""
    if ready == total:
        wanted = ServiceStatus.RUNNING
    elif ready:
        wanted = ServiceStatus.ALARM
    else:
        wanted = ServiceStatus.ABNORMAL
    if wanted == service.status:
        return
    # Only move from the status we read: a user's Stop or Delete since then wins.
    moved = service_transition(
        service.id,
        to=wanted,
        from_=ServiceStatus(service.status),
        reason="" if wanted == ServiceStatus.RUNNING else f"{ready}/{total} instance(s) healthy",
        event=f"{wanted.label}: {ready}/{total} instance(s) healthy",
        event_level=ServiceEvent.Level.INFO if wanted == ServiceStatus.RUNNING else ServiceEvent.Level.WARNING,
    )
    if moved:
        report.status_changes[service.name] = wanted


def _stop_strays(services: dict[str, Service], containers: dict[int, dict[str, runtime.ContainerInfo]]) -> None:
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


def _auto_stop_due(services: dict[str, Service], now: datetime, report: ReconcileReport) -> None:
    """Stop the serving services whose auto-stop time has come (the caller enqueues their stops)."""
    for service in services.values():
        if service.status not in SUPERVISED_STATUSES or service.auto_stop_at is None or service.auto_stop_at > now:
            continue
        hours = service.auto_stop_hours
        after = f"{hours_text(hours)} after it turned Running" if hours else "as set"
        if service_transition(
            service.id,
            to=ServiceStatus.STOPPING,
            from_=ServiceStatus(service.status),
            event=f"Auto stop: stopping {after}",
        ):
            report.auto_stopped.append(service.name)
            report.lapsed.append((str(service.id), ServiceStatus.STOPPING))


def _requeue_lapsed(services: dict[str, Service], now: datetime, report: ReconcileReport) -> None:
    """Enqueue again the work of a transitional service nobody has claimed for a
    while, or whose worker's lease lapsed; once per grace period, not every
    cycle: while the workers are busy, the message queued last time still waits."""
    grace = timedelta(seconds=UNCLAIMED_GRACE_SECONDS)
    requeued = []
    for service in services.values():
        if service.status not in TRANSITIONAL_STATUSES:
            continue
        if service.health_wait_started_at is not None:
            continue  # the deploy prober (services.tasks.deploys_probe_task) has it
        if service.lease_expires_at is None:
            lapsed = now - service.status_changed_at > grace
        else:
            lapsed = service.lease_expires_at < now
        if lapsed and (service.requeued_at is None or now - service.requeued_at > grace):
            requeued.append(service.id)
            report.requeued.append(service.name)
            report.lapsed.append((str(service.id), ServiceStatus(service.status)))
    if requeued:
        Service.objects.filter(id__in=requeued).update(requeued_at=now)


def _recheck_versions(now: datetime) -> None:
    stuck = AIApplicationVersion.objects.filter(
        Q(status=VersionStatus.CHECKING), Q(created_at__lt=now - timedelta(seconds=UNCLAIMED_GRACE_SECONDS))
    ).values_list("id", flat=True)[:20]
    for version_id in stuck:
        ai_application_version_check_image(version_id=version_id)
