"""The worker side of a service's life: deploy, stop and delete, as Celery runs them.

Functions named `*_run` are the bodies of the tasks in services.tasks. Each
one claims its work with a lease (a conditional update) before touching an
engine, so running it twice, or on two workers at once, does the work once.
Containers have deterministic names, so a second run adopts the first's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Q
from django.utils import timezone

from pools.models import Node
from services import runtime
from services.choices import ConfigPhase, InstanceState, ServiceStatus, VersionStatus
from services.instance_runtime import (
    config_swarm_name,
    in_parallel,
    instance_address,
    instance_failure,
    instance_remove_one,
    instances_remove,
    instances_start,
    instances_stop,
    networks_remove,
    rolling_update_undo,
    rolling_update_verdict,
    swarm_rollback_reason,
)
from services.logs import container_log_excerpt_of
from services.metrics import DEPLOY_SECONDS
from services.models import (
    AIApplicationVersion,
    Instance,
    Service,
    ServiceEvent,
    ServiceUpdate,
    ServiceVersionConfig,
)
from services.placement import PlacementRefused, instances_place
from services.probes import probe_health_detail
from services.routing_sync import routing_sync
from services.transitions import service_event_add, service_transition

log = logging.getLogger(__name__)

# A deploy probes its instances every 50 ms for DEPLOY_FAST_WAIT_SECONDS (most
# servers are up within it), then hands the wait to the periodic prober, which
# probes every DEPLOY_PROBE_INTERVAL_SECONDS: every failing probe can be a line
# in the server's log, and probing at full speed for minutes would push the
# server's own start-up lines out of the log tail that a failed deploy reports.
DEPLOY_POLL_SECONDS = 0.05
# How long an update waits for Swarm to say whether its rolling update
# completed (Swarm watches the new tasks for a moment first).
SWARM_VERDICT_WAIT_SECONDS = 30.0
# How long a worker waits itself for the new tasks of a Swarm rolling update
# before the prober takes over.
SWARM_ROLLING_UPDATE_WAIT_SECONDS = 120.0


# --- Leases ------------------------------------------------------------------------


def lease_claim(service_id: uuid.UUID | str, status: ServiceStatus) -> uuid.UUID | None:
    """Take the work on a service in `status` unless a live lease holds it; the token, or None."""
    now = timezone.now()
    token = uuid.uuid4()
    won = (
        Service.objects.filter(id=service_id, status=status)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_token=token, lease_expires_at=now + timedelta(seconds=settings.TASK_LEASE_SECONDS))
    )
    return token if won else None


def lease_renew(service_id: uuid.UUID | str, token: uuid.UUID, status: ServiceStatus) -> bool:
    """Extend a held lease; False when it was lost (the status moved on)."""
    return bool(
        Service.objects.filter(id=service_id, status=status, lease_token=token).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.TASK_LEASE_SECONDS)
        )
    )


@contextmanager
def lease_kept(service_id: uuid.UUID | str, token: uuid.UUID, status: ServiceStatus) -> Iterator[None]:
    """Renew the lease every third of its length while the block runs, so a
    lease can be short (a dead worker's work is taken up again within seconds)
    however long one engine call takes."""
    stop = threading.Event()

    def renew() -> None:
        try:
            while not stop.wait(settings.TASK_LEASE_SECONDS / 3):
                if not lease_renew(service_id, token, status):
                    return
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=renew, name=f"lease-{service_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_leased(
    service_id: uuid.UUID | str, status: ServiceStatus, work: Callable[[uuid.UUID | str, uuid.UUID], str]
) -> str:
    """Claim the service in `status`, then do the work while the lease is kept alive."""
    token = lease_claim(service_id, status)
    if token is None:
        return "not claimed"
    with lease_kept(service_id, token, status):
        return work(service_id, token)


def lease_release_for_retry(service_id: uuid.UUID | str, token: uuid.UUID) -> None:
    """Let a held lease lapse now, so the reconcile loop re-enqueues the work soon."""
    Service.objects.filter(id=service_id, lease_token=token).update(lease_expires_at=timezone.now())


# --- Containers ----------------------------------------------------------------------


def instances_plan(service: Service, configs: list[ServiceVersionConfig] | None = None) -> list[Instance]:
    """The service's Instance rows, one per compute node of each configuration.
    The action that created or changed the service placed them; one still
    missing (a service stored some other way) is placed now, with the room of
    the pool counted as at creation. Rows are written before any container
    exists, so the reconcile loop knows every container we create.

    With `configs` (a live update's new ones), only theirs, and nothing else is
    touched; without, every configuration's, and rows beyond the counts go.
    Raises runtime.EngineError when a missing row finds no room.
    """
    only = configs is not None
    if configs is None:
        configs = list(service.configs.select_related("app_version__application", "flavor"))
    instances = service.instances.select_related("node")
    if only:
        instances = instances.filter(config__in=configs)
    existing = {(i.config_id, i.index): i for i in instances}
    missing = {
        (config.id, index)
        for config in configs
        for index in range(config.instance_count)
        if (config.id, index) not in existing
    }
    if missing:
        try:
            with transaction.atomic():
                placed = instances_place(service, configs, only=missing)
        except PlacementRefused as exc:
            raise runtime.EngineError(str(exc)) from None
        existing.update({(i.config_id, i.index): i for i in placed})
    wanted = []
    for config in configs:
        for index in range(config.instance_count):
            instance = existing.pop((config.id, index))
            instance.config = config
            wanted.append(instance)
    for leftover in existing.values() if not only else ():
        instance_remove_one(leftover)
        leftover.delete()
    return wanted


def containers_remove(instances: list[Instance]) -> None:
    """Remove the instances' containers (best effort: the reconcile loop retries) and mark them Missing."""
    try:
        instances_remove(instances)
    except runtime.EngineError as exc:
        names = ", ".join(instance.container_name for instance in instances)
        log.warning("could not remove %s: %s (the reconcile loop will retry)", names, exc)
    Instance.objects.filter(id__in=[i.id for i in instances]).update(
        state=InstanceState.MISSING, is_healthy=False, container_id="", host_port=None
    )


# --- AI application versions -----------------------------------------------------------


def ai_application_version_check_image(*, version_id: int) -> str | None:
    """Mark a version Normal when an engine has its image, Failed when the
    engines answer without it. When no engine answers, the version stays
    Checking with the reason, and the reconcile loop checks it again. Safe to repeat."""
    version = AIApplicationVersion.objects.filter(id=version_id).first()
    if version is None:
        return None
    nodes = list(Node.objects.filter(is_enabled=True))
    errors = []
    for node in nodes:
        try:
            if runtime.image_exists(node.docker_host, version.image):
                AIApplicationVersion.objects.filter(id=version_id).update(status=VersionStatus.NORMAL, status_reason="")
                return VersionStatus.NORMAL
        except runtime.EngineError as exc:
            errors.append(str(exc))
    if not nodes:
        reason = "no engine is registered to check the image on"
    elif len(errors) == len(nodes):
        reason = "no engine answered yet, checking again: " + "; ".join(errors)
        AIApplicationVersion.objects.filter(id=version_id).update(status_reason=reason[:300])
        return VersionStatus.CHECKING
    else:
        reason = f"image {version.image} not found on the engine"
    AIApplicationVersion.objects.filter(id=version_id).update(status=VersionStatus.FAILED, status_reason=reason[:300])
    return VersionStatus.FAILED


# --- Deploy ----------------------------------------------------------------------------


def _deploy_fail(service: Service, token: uuid.UUID, reason: str, instances: list[Instance], detail: str) -> None:
    containers_remove(instances)
    service_transition(
        service.id,
        to=ServiceStatus.FAILED,
        lease_token=token,
        reason=reason,
        event=f"Failed: {reason}",
        event_level=ServiceEvent.Level.ERROR,
        event_detail=detail,
    )


def deploy_deadline(service: Service) -> datetime:
    """When a deploy gives up: the service's timeout after it turned Deploying."""
    seconds = service.timeout_minutes * 60 * settings.SERVICE_TIMEOUT_SCALE
    return service.status_changed_at + timedelta(seconds=seconds)


class DeployFailed(Exception):
    """The deploy cannot succeed; the reason and the detail go into the Failed event."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class LeaseLost(Exception):
    """Another status took the service (a Delete): stop working on it."""


def _containers_start(service: Service, instances: list[Instance]) -> list[runtime.ContainerInfo]:
    """Create (or adopt) and start every instance's container, wherever its pool runs it."""
    return instances_start(service, instances)


def _instances_record_started(
    service: Service, instances: list[Instance], started: list[runtime.ContainerInfo]
) -> None:
    """Write down where each started container listens; none is healthy yet."""
    for instance, info in zip(instances, started, strict=True):
        instance.container_id = info.container_id
        instance.host_port = info.host_port
        instance.state = InstanceState.RUNNING
        instance.is_healthy = False
        Instance.objects.filter(id=instance.id).update(
            container_id=info.container_id,
            host_port=info.host_port,
            state=InstanceState.RUNNING,
            is_healthy=False,
            updated_at=timezone.now(),
        )
        if instance.node.swarm_node_id:
            service_event_add(
                service.id, f"Swarm task for {instance.container_name} created in pool {service.pool.name}"
            )
        else:
            service_event_add(service.id, f"Container {instance.container_name} started on {instance.node.name}")


@dataclass(frozen=True)
class ProbeResult:
    instance: Instance
    is_healthy: bool
    note: str
    # Why the deploy cannot succeed (the container exited or vanished), or "".
    failure: str = ""


def _probe(instance: Instance, *, inspect: bool = True) -> ProbeResult:
    """Probe one instance's health path; when it does not answer (and `inspect`),
    see whether its container is still there."""
    version = instance.config.app_version
    if instance.host_port is None:
        # No published port yet: nothing to probe (and none to default to 80).
        healthy, note = False, "no published port yet"
    else:
        healthy, note = probe_health_detail(
            instance_address(instance),
            instance.host_port,
            version.health_path,
            settings.HEALTH_PROBE_TIMEOUT_SECONDS,
        )
    note = f"GET {version.health_path} on port {version.container_port}: {note}"
    if healthy or not inspect:
        return ProbeResult(instance, healthy, note)
    return ProbeResult(instance, False, note, failure=instance_failure(instance))


def _probes_record(service: Service, results: list[ProbeResult]) -> None:
    """Write what each probe got; an instance that answered is healthy from now on."""
    now = timezone.now()
    for result in results:
        instance = result.instance
        if result.is_healthy:
            instance.is_healthy = True
            Instance.objects.filter(id=instance.id).update(
                is_healthy=True, state=InstanceState.RUNNING, probe_note=result.note[:200], probed_at=now
            )
            service_event_add(service.id, f"Health check passed for {instance.container_name}")
        else:
            Instance.objects.filter(id=instance.id).update(probe_note=result.note[:200], probed_at=now)


def _timeout_failure(service: Service, pending: list[Instance]) -> DeployFailed:
    detail = "\n\n".join(f"== {i.container_name} ==\n{container_log_excerpt_of(i)}" for i in pending)
    return DeployFailed(
        f"timed out after {service.timeout_minutes} minute(s): {len(pending)} instance(s) never "
        f"answered the health check",
        detail,
    )


def _health_wait(
    service: Service,
    token: uuid.UUID,
    instances: list[Instance],
    deadline: datetime,
    budget_seconds: float,
    status: ServiceStatus = ServiceStatus.DEPLOYING,
) -> list[Instance]:
    """Probe the instances quickly for up to `budget_seconds`; the ones still not
    answering then (most servers are up well within it).

    Raises DeployFailed on timeout or when a container exits, and LeaseLost
    when a Delete takes the service meanwhile.
    """
    pending = [instance for instance in instances if not instance.is_healthy]
    stop_at = last_renewal = time.monotonic()
    stop_at += budget_seconds
    rounds = 0
    while pending:
        if timezone.now() > deadline:
            raise _timeout_failure(service, pending)
        if time.monotonic() - last_renewal > settings.TASK_LEASE_SECONDS / 3:
            if not lease_renew(service.id, token, status):
                raise LeaseLost
            last_renewal = time.monotonic()
        # Asking the engine whether a container exited costs more than a probe:
        # the fast loop asks every tenth round (about twice a second). A Swarm
        # rolling update is asked every other round: that is also how the rows
        # learn where the new tasks run, while Swarm is stopping the old ones.
        inspect = rounds % (2 if any(i.config.swarm_service for i in pending) else 10) == 0
        rounds += 1
        results = in_parallel(partial(_probe, inspect=inspect), pending)
        # A failed probe's note is written when the engine was asked too (and the
        # last one before the hand-over), not 20 times a second.
        _probes_record(service, [r for r in results if r.is_healthy or inspect or time.monotonic() >= stop_at])
        failed = next((result for result in results if result.failure), None)
        if failed is not None:
            raise DeployFailed(failed.failure, container_log_excerpt_of(failed.instance))
        pending = [result.instance for result in results if not result.is_healthy]
        if pending:
            if time.monotonic() >= stop_at:
                return pending
            time.sleep(DEPLOY_POLL_SECONDS)
    return []


def _deploy_succeed(service: Service, token: uuid.UUID, instance_count: int) -> bool:
    """Every instance answered: Running, once every gateway process routes the service."""
    # The gateway routes a Deploying service's healthy instances; Running is
    # said only once every live gateway process does, never before.
    routing_sync(service_id=service.id)
    running = f"Running: {instance_count}/{instance_count} instance(s) healthy"
    moved = service_transition(service.id, to=ServiceStatus.RUNNING, lease_token=token, event=running)
    if moved:
        DEPLOY_SECONDS.observe((timezone.now() - service.status_changed_at).total_seconds())
        if service.auto_stop_hours:
            # The auto-stop timer starts when the service turns Running.
            Service.objects.filter(id=service.id).update(
                auto_stop_at=timezone.now() + timedelta(hours=service.auto_stop_hours)
            )
    return moved


def _hand_over_to_prober(
    service: Service, token: uuid.UUID, pending: list[Instance], status: ServiceStatus = ServiceStatus.DEPLOYING
) -> bool:
    """Leave the rest of the wait to deploys_probe: the lease goes, the worker is free."""
    handed = Service.objects.filter(id=service.id, status=status, lease_token=token).update(
        health_wait_started_at=timezone.now(), lease_token=None, lease_expires_at=None
    )
    if handed:
        names = ", ".join(instance.container_name for instance in pending)
        service_event_add(service.id, f"Waiting for the health check of {names}")
    return bool(handed)


def service_deploy_run(*, service_id: uuid.UUID | str) -> str:
    """Create (or reuse) one container per compute node and probe them for a
    moment; when every one answers its health path, mark the service Running,
    else hand the wait to the periodic prober (deploys_probe) and return, so a
    slow or broken model never holds a worker. On a container exit, remove the
    containers and mark it Failed with the reason and the last log lines.

    Safe to repeat: claims the Deploying service with a lease first, and
    containers have deterministic names, so a second run adopts the first's.
    """
    return _run_leased(service_id, ServiceStatus.DEPLOYING, _deploy)


def _deploy(service_id: uuid.UUID | str, token: uuid.UUID) -> str:
    service = Service.objects.select_related("pool").get(id=service_id)
    deadline = deploy_deadline(service)
    try:
        instances = instances_plan(service)
    except runtime.EngineError as exc:
        _deploy_fail(service, token, str(exc), list(service.instances.select_related("node")), "")
        return "failed"
    try:
        started = _containers_start(service, instances)
    except runtime.EngineError as exc:
        _deploy_fail(service, token, str(exc), instances, "")
        return "failed"
    if not lease_renew(service_id, token, ServiceStatus.DEPLOYING):
        # A Delete took the service while the containers were being created;
        # the reconcile loop removes the ones created after the delete ran.
        return "lease lost"
    _instances_record_started(service, instances, started)
    try:
        pending = _health_wait(service, token, instances, deadline, settings.DEPLOY_FAST_WAIT_SECONDS)
    except DeployFailed as failure:
        _deploy_fail(service, token, failure.reason, instances, failure.detail)
        return "failed"
    except LeaseLost:
        return "lease lost"
    if pending:
        return "waiting" if _hand_over_to_prober(service, token, pending) else "lease lost"
    return "running" if _deploy_succeed(service, token, len(instances)) else "lease lost"


def _wait_fail(service: Service, token: uuid.UUID, reason: str, instances: list[Instance], detail: str) -> None:
    """A deploy fails; a live update rolls back."""
    if service.status == ServiceStatus.UPGRADING:
        _update_roll_back(service, token, reason, detail)
    else:
        _deploy_fail(service, token, reason, instances, detail)


PROBE_LOCK_KEY = 0x525450  # one prober at a time across all workers


@contextmanager
def advisory_lock(key: int) -> Iterator[bool]:
    """A PostgreSQL session advisory lock, if free: yields whether this call holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        is_held = bool(cursor.fetchone()[0])
    try:
        yield is_held
    finally:
        if is_held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def deploys_probe() -> dict[str, str] | None:
    """One round of the periodic prober: probe every instance of every deploy
    waiting for its health checks, all at once; a service whose instances all
    answer turns Running, one whose container exited or whose timeout passed
    turns Failed with the reason and the last log lines. Safe to repeat and to
    run on several workers (one at a time runs; each service is claimed with a
    lease). Returns None when another round is running, else the outcome per service."""
    with advisory_lock(PROBE_LOCK_KEY) as is_held:
        return _deploys_probe_round() if is_held else None


def _deploys_probe_round() -> dict[str, str]:
    """Deploys, and live updates waiting for their new instances: an update's
    outcome "ready" means its task is to be enqueued again for the cut-over."""
    outcomes: dict[str, str] = {}
    waiting = Service.objects.filter(
        status__in=[ServiceStatus.DEPLOYING, ServiceStatus.UPGRADING], health_wait_started_at__isnull=False
    ).values_list("id", "status")
    claimed: list[tuple[Service, uuid.UUID, list[Instance]]] = []
    for service_id, status in waiting:
        token = lease_claim(service_id, ServiceStatus(status))
        if token is None:
            continue
        service = Service.objects.select_related("pool").get(id=service_id)
        instances = list(
            service.instances.select_related("node", "config__app_version__application", "config__flavor").filter(
                config__phase=ConfigPhase.STAGED if status == ServiceStatus.UPGRADING else ConfigPhase.SERVING
            )
        )
        pending = [instance for instance in instances if not instance.is_healthy]
        if timezone.now() > deploy_deadline(service):
            failure = _timeout_failure(service, pending)
            _wait_fail(service, token, failure.reason, instances, failure.detail)
            outcomes[str(service_id)] = "failed"
            continue
        claimed.append((service, token, instances))

    probes = [
        (service, instance) for service, _, instances in claimed for instance in instances if not instance.is_healthy
    ]
    results = in_parallel(lambda item: _probe(item[1]), probes)
    by_service: dict[str, list[ProbeResult]] = {}
    for (service, _), result in zip(probes, results, strict=True):
        by_service.setdefault(str(service.id), []).append(result)

    for service, token, instances in claimed:
        service_results = by_service.get(str(service.id), [])
        _probes_record(service, service_results)
        failed = next((result for result in service_results if result.failure), None)
        if failed is not None:
            _wait_fail(service, token, failed.failure, instances, container_log_excerpt_of(failed.instance))
            outcomes[str(service.id)] = "failed"
        elif all(result.is_healthy for result in service_results) and service.status == ServiceStatus.UPGRADING:
            # The cut-over may wait for calls in flight: a task does it, not this round.
            Service.objects.filter(id=service.id, lease_token=token).update(
                lease_token=None, lease_expires_at=None, health_wait_started_at=None
            )
            outcomes[str(service.id)] = "ready"
        elif all(result.is_healthy for result in service_results):
            outcomes[str(service.id)] = "running" if _deploy_succeed(service, token, len(instances)) else "lease lost"
        else:
            # Still waiting: let the next round claim it again.
            Service.objects.filter(id=service.id, lease_token=token).update(lease_token=None, lease_expires_at=None)
            outcomes[str(service.id)] = "waiting"
    return outcomes


# --- Live updates --------------------------------------------------------------------


def service_update_run(*, service_id: uuid.UUID | str) -> str:
    """Carry out an Upgrading service's update (services.actions.service_update
    wrote its plan and its new, staged configurations):

    1. start the staged configurations' containers, with no traffic, and wait
       for their health checks (a long wait goes to the prober, as a deploy's);
    2. cut over: in one transaction, every configuration takes its new weight
       and the ones leaving go to weight 0 (Draining);
    3. once every gateway process routes by that and has no call in flight that
       could reach a Draining configuration, remove those containers;
    4. back to Running (or Alarm/Abnormal, as the instances' health says).

    A staged container that exits, or an update that is not healthy within the
    service's timeout, is rolled back before any traffic moved: the new
    containers go and the service runs its previous configuration.

    Safe to repeat: claims the Upgrading service with a lease, and each step
    reads where the last one got to (staged, draining or neither).
    """
    return _run_leased(service_id, ServiceStatus.UPGRADING, _update)


def _update(service_id: uuid.UUID | str, token: uuid.UUID) -> str:
    service = Service.objects.select_related("pool").get(id=service_id)
    update = ServiceUpdate.objects.filter(service_id=service_id, outcome=ServiceUpdate.Outcome.IN_PROGRESS).first()
    configs = list(service.configs.select_related("app_version__application", "flavor"))
    is_cut_over = any(config.phase == ConfigPhase.DRAINING for config in configs)
    staged = [config for config in configs if config.phase == ConfigPhase.STAGED]
    if update is not None and not is_cut_over and staged:
        outcome = _update_start_staged(service, token, staged)
        if outcome:
            return outcome
    if update is not None and not is_cut_over:
        _update_cut_over(service, update)
    return _update_finish(service, token, update)


def _update_start_staged(service: Service, token: uuid.UUID, staged: list[ServiceVersionConfig]) -> str:
    """Start the new configurations' instances and wait for them; "" once all
    are healthy, else what happened ("waiting", "rolled back", "lease lost")."""
    instances = list(
        Instance.objects.filter(config__in=staged).select_related(
            "node", "config__app_version__application", "config__flavor"
        )
    )
    if len(instances) == sum(config.instance_count for config in staged) and all(i.is_healthy for i in instances):
        return ""  # the prober saw them all healthy
    if rolled_back := _swarm_rolled_back_before(service, staged, instances):
        # A run that died after starting a rolling update Swarm has rolled back
        # since: starting it again would only repeat the failure.
        _update_roll_back(service, token, rolled_back, "")
        return "rolled back"
    try:
        instances = instances_plan(service, staged)
        started = _containers_start(service, instances)
    except runtime.EngineError as exc:
        _update_roll_back(service, token, str(exc), "")
        return "rolled back"
    for config in staged:
        if config.swarm_service:
            service_event_add(
                service.id,
                f"Swarm rolling update of {config.swarm_service} started: {config.instance_count} new task(s) "
                "start before the old ones stop, and Swarm rolls back at the first that fails",
            )
    if not lease_renew(service.id, token, ServiceStatus.UPGRADING):
        return "lease lost"
    _instances_record_started(service, instances, started)
    # Swarm stops an old task as soon as its replacement passed Swarm's health
    # check: the worker stays to move the traffic at once (the prober's rounds
    # would leave the old version's calls waiting on stopped tasks).
    is_rolling = any(config.swarm_service for config in staged)
    try:
        pending = _health_wait(
            service,
            token,
            instances,
            deploy_deadline(service),
            SWARM_ROLLING_UPDATE_WAIT_SECONDS if is_rolling else settings.DEPLOY_FAST_WAIT_SECONDS,
            status=ServiceStatus.UPGRADING,
        )
    except DeployFailed as failure:
        _update_roll_back(service, token, failure.reason, failure.detail)
        return "rolled back"
    except LeaseLost:
        return "lease lost"
    if pending:
        handed = _hand_over_to_prober(service, token, pending, status=ServiceStatus.UPGRADING)
        return "waiting" if handed else "lease lost"
    return ""


def _swarm_rolled_back_before(service: Service, staged: list[ServiceVersionConfig], instances: list[Instance]) -> str:
    """Swarm's reason when an earlier run started the rolling update of a staged
    configuration (its rows say their tasks started) and Swarm has rolled it
    back since (its Swarm service runs another configuration again); else ""."""
    started = {instance.config_id for instance in instances if instance.state == InstanceState.RUNNING}
    for config in staged:
        if not config.swarm_service or config.id not in started:
            continue
        try:
            reason = swarm_rollback_reason(config, rolling_update_verdict(service, config))
        except runtime.EngineError:
            return ""  # the start that follows says what is wrong with the manager
        if reason:
            return reason
    return ""


def _update_cut_over(service: Service, update: ServiceUpdate) -> None:
    """Every configuration takes the weight the plan gives it, in one
    transaction (the gateway applies it whole); those leaving go Draining."""
    weights = {int(config_id): weight for config_id, weight in update.plan.get("weights", {}).items()}
    leaving = {int(config_id) for config_id in update.plan.get("remove", [])}
    with transaction.atomic():
        for config in ServiceVersionConfig.objects.select_for_update().filter(service_id=service.id):
            if config.id in leaving:
                config.weight, config.phase = 0, ConfigPhase.DRAINING
            elif config.id in weights:
                config.weight, config.phase = weights[config.id], ConfigPhase.SERVING
            else:
                continue
            config.save(update_fields=["weight", "phase"])
        if leaving or weights:
            service_event_add(service.id, "Traffic moved to the new configuration")


def _update_finish(service: Service, token: uuid.UUID, update: ServiceUpdate | None) -> str:
    """Wait until no gateway can send a call to a Draining configuration, remove
    its containers and rows, record the outcome and settle the status."""
    draining = list(ServiceVersionConfig.objects.filter(service_id=service.id, phase=ConfigPhase.DRAINING))
    if draining and update is not None:
        undone = _swarm_rolled_back_after_cut_over(service, update, draining)
        if undone:
            return _update_undo_after_cut_over(service, token, update, undone)
    if draining:
        routing_sync(
            service_id=service.id,
            drain_config_ids=[config.id for config in draining],
            timeout=settings.UPDATE_DRAIN_TIMEOUT_SECONDS,
        )
        old = list(Instance.objects.filter(config__in=draining).select_related("node"))
        containers_remove(old)
        ServiceVersionConfig.objects.filter(id__in=[config.id for config in draining]).delete()
        service_event_add(service.id, f"Removed {len(old)} container(s) of the previous configuration")
    else:
        # A change of weights alone: every gateway routes by it before the update is said done.
        routing_sync(service_id=service.id)
    if update is not None:
        ServiceUpdate.objects.filter(id=update.id, outcome=ServiceUpdate.Outcome.IN_PROGRESS).update(
            outcome=ServiceUpdate.Outcome.SUCCEEDED,
            finished_at=timezone.now(),
            after={"description": service.description, "config": service.config_rows()},
        )
    moved = _update_settle(service, token, "Update done")
    return "done" if moved else "lease lost"


def _swarm_rolled_back_after_cut_over(
    service: Service, update: ServiceUpdate, draining: list[ServiceVersionConfig]
) -> str:
    """Wait for Swarm's verdict on the rolling updates that moved a draining
    configuration's Swarm service to a new one; Swarm's reason when it rolled
    one back (a new task failed while it watched it), else ""."""
    taken_over = {config_swarm_name(config) for config in draining}
    rolled = [
        config
        for config in ServiceVersionConfig.objects.filter(service_id=service.id, phase=ConfigPhase.SERVING)
        if config.swarm_service and config.swarm_service in taken_over
    ]
    deadline = time.monotonic() + SWARM_VERDICT_WAIT_SECONDS
    for config in rolled:
        while True:
            try:
                verdict = rolling_update_verdict(service, config)
            except runtime.EngineError as exc:
                log.warning("no verdict on the Swarm update of %s: %s", config.swarm_service, exc)
                break
            if verdict is None or verdict.update_state in ("completed", ""):
                break
            if verdict.is_rolled_back:
                return verdict.update_message or verdict.update_state
            if time.monotonic() > deadline:
                log.warning("Swarm update of %s still %s", config.swarm_service, verdict.update_state)
                break
            time.sleep(DEPLOY_POLL_SECONDS * 4)
    return ""


def _update_undo_after_cut_over(service: Service, token: uuid.UUID, update: ServiceUpdate, reason: str) -> str:
    """Swarm put the previous configuration back after the traffic had moved:
    so does the console (every configuration the update kept or replaced
    serves again at its weight from before, the new ones drain and go), and the
    update is recorded as rolled back."""
    new = {int(config_id) for config_id in update.plan.get("new", [])}
    before = {row["model_id"]: row["weight"] for row in update.before.get("config", [])}
    with transaction.atomic():
        configs = list(ServiceVersionConfig.objects.select_for_update().filter(service_id=service.id))
        rolled = {config.swarm_service for config in configs if config.id in new and config.swarm_service}
        restarted = []
        for config in configs:
            if config.id in new:
                config.weight, config.phase = 0, ConfigPhase.DRAINING
            else:
                if config.phase == ConfigPhase.DRAINING and config_swarm_name(config) in rolled:
                    restarted.append(config.id)
                config.weight = before.get(config.app_version_id, config.weight)
                config.phase = ConfigPhase.SERVING
            config.save(update_fields=["weight", "phase"])
        # Swarm's rollback starts new tasks for these. Their rows still name the
        # tasks it stopped during the update, which may answer until they are
        # gone: the rows forget them, and follow the new tasks once they run.
        Instance.objects.filter(config_id__in=restarted).update(is_healthy=False, host_port=None, container_id="")
        service_event_add(
            service.id,
            f"Swarm rolled the update back after the traffic had moved: {reason}; traffic goes back to the "
            "previous configuration",
            level=ServiceEvent.Level.ERROR,
        )
    restored = list(
        Instance.objects.filter(service_id=service.id, config__phase=ConfigPhase.SERVING).select_related(
            "node", "config__app_version__application", "config__flavor"
        )
    )
    try:
        _health_wait(
            service,
            token,
            restored,
            timezone.now() + timedelta(seconds=service.timeout_seconds * settings.SERVICE_TIMEOUT_SCALE),
            SWARM_ROLLING_UPDATE_WAIT_SECONDS,
            status=ServiceStatus.UPGRADING,
        )
    except DeployFailed as failure:
        # The status settled below says how many answer; the reconcile loop keeps probing them.
        log.warning("the restored configuration of %s is not healthy yet: %s", service.id, failure.reason)
    except LeaseLost:
        return "lease lost"
    leaving = list(ServiceVersionConfig.objects.filter(service_id=service.id, phase=ConfigPhase.DRAINING))
    routing_sync(
        service_id=service.id,
        drain_config_ids=[config.id for config in leaving],
        timeout=settings.UPDATE_DRAIN_TIMEOUT_SECONDS,
    )
    containers_remove(list(Instance.objects.filter(config__in=leaving).select_related("node")))
    ServiceVersionConfig.objects.filter(id__in=[config.id for config in leaving]).delete()
    ServiceUpdate.objects.filter(id=update.id, outcome=ServiceUpdate.Outcome.IN_PROGRESS).update(
        outcome=ServiceUpdate.Outcome.ROLLED_BACK,
        finished_at=timezone.now(),
        reason=f"Swarm rolled back: {reason}"[:500],
        after={"description": service.description, "config": service.config_rows()},
    )
    moved = _update_settle(
        service,
        token,
        "Update rolled back by Swarm; the service runs its previous configuration",
        level=ServiceEvent.Level.ERROR,
    )
    return "rolled back" if moved else "lease lost"


def _update_roll_back(service: Service, token: uuid.UUID, reason: str, detail: str) -> None:
    """Before any traffic moved: remove the staged configurations and their
    containers (a Swarm service one took over by a rolling update goes back to
    the configuration it ran); the service runs on as it was."""
    staged = list(
        ServiceVersionConfig.objects.filter(service_id=service.id, phase=ConfigPhase.STAGED).select_related(
            "app_version__application", "flavor"
        )
    )
    try:
        rolling_update_undo(service, staged)
    except runtime.EngineError as exc:
        service_event_add(
            service.id,
            f"Could not put the previous configuration back on Swarm: {exc}",
            level=ServiceEvent.Level.WARNING,
        )
    containers_remove(list(Instance.objects.filter(config__in=staged).select_related("node")))
    ServiceVersionConfig.objects.filter(id__in=[config.id for config in staged]).delete()
    ServiceUpdate.objects.filter(service_id=service.id, outcome=ServiceUpdate.Outcome.IN_PROGRESS).update(
        outcome=ServiceUpdate.Outcome.ROLLED_BACK,
        finished_at=timezone.now(),
        reason=reason[:500],
        after={"description": service.description, "config": service.config_rows()},
    )
    _update_settle(
        service,
        token,
        f"Update rolled back: {reason}; the service runs its previous configuration",
        level=ServiceEvent.Level.ERROR,
        detail=detail,
    )


def _update_settle(
    service: Service, token: uuid.UUID, what: str, *, level: str = ServiceEvent.Level.INFO, detail: str = ""
) -> bool:
    """Upgrading → Running, Alarm or Abnormal, as its instances' health says now."""
    flags = list(Instance.objects.filter(service_id=service.id).values_list("is_healthy", flat=True))
    ready, total = sum(flags), len(flags)
    if ready == total:
        status = ServiceStatus.RUNNING
    elif ready:
        status = ServiceStatus.ALARM
    else:
        status = ServiceStatus.ABNORMAL
    return service_transition(
        service.id,
        to=status,
        lease_token=token,
        reason="" if status == ServiceStatus.RUNNING else f"{ready}/{total} instance(s) healthy",
        event=f"{what}. {status.label}: {ready}/{total} instance(s) healthy",
        event_level=level,
        event_detail=detail,
    )


# --- Stop and delete -------------------------------------------------------------------


def service_stop_run(*, service_id: uuid.UUID | str) -> str:
    """Stop every container of a Stopping service and mark it Stopped. Safe to repeat."""
    return _run_leased(service_id, ServiceStatus.STOPPING, _stop)


def _stop(service_id: uuid.UUID | str, token: uuid.UUID) -> str:
    instances = list(Instance.objects.filter(service_id=service_id).select_related("node"))

    try:
        instances_stop(instances)
    except runtime.EngineError as exc:
        service_event_add(service_id, f"Stopping failed, will retry: {exc}", level=ServiceEvent.Level.WARNING)
        lease_release_for_retry(service_id, token)
        return "retry"
    Instance.objects.filter(service_id=service_id).update(state=InstanceState.STOPPED, is_healthy=False)
    stopped = f"Stopped: {len(instances)} container(s) stopped"
    if service_transition(service_id, to=ServiceStatus.STOPPED, lease_token=token, event=stopped):
        return "stopped"
    return "lease lost"


def service_delete_run(*, service_id: uuid.UUID | str) -> str:
    """Remove every container of a Deleting service, then its row. Safe to repeat."""
    return _run_leased(service_id, ServiceStatus.DELETING, _delete)


def _delete(service_id: uuid.UUID | str, token: uuid.UUID) -> str:
    instances = list(Instance.objects.filter(service_id=service_id).select_related("node"))
    try:
        instances_remove(instances)
        networks_remove(service_id, instances)
    except runtime.EngineError as exc:
        service_event_add(service_id, f"Deleting failed, will retry: {exc}", level=ServiceEvent.Level.WARNING)
        lease_release_for_retry(service_id, token)
        return "retry"
    Service.objects.filter(id=service_id, status=ServiceStatus.DELETING, lease_token=token).delete()
    return "deleted"
