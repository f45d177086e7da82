"""Writes: every change to AI applications and services goes through here.

Functions named `*_run` are the bodies of Celery tasks. Each one claims its
work with a conditional update before touching an engine, so running it twice,
or on two workers at once, does the work once.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from pools.models import Node
from pools.selectors import node_pick_for
from services import runtime
from services.models import (
    SERVICE_TRANSITIONS,
    AIApplication,
    AIApplicationVersion,
    Instance,
    Service,
    ServiceEvent,
    ServiceStatus,
    ServiceVersionConfig,
    VersionStatus,
)
from services.probes import probe_health
from services.validation import DeployRequest, RequestInvalid, VersionRequest

log = logging.getLogger(__name__)

# The deploy probes quickly for the first seconds (most servers are up in
# one), then once a second: every failing probe can be a line in the server's
# log, and probing at full speed for minutes would push the server's own
# start-up lines out of the log tail that a failed deploy reports.
DEPLOY_POLL_SECONDS = 0.05
DEPLOY_POLL_FAST_FOR_SECONDS = 5.0
DEPLOY_POLL_SLOW_SECONDS = 1.0


class ActionRefused(Exception):
    """The action makes no sense in the object's current state; the message says why."""


# --- AI applications -----------------------------------------------------------


def ai_application_version_register(*, owner, request: VersionRequest) -> AIApplicationVersion:
    """Store a new version (creating its application if needed) as Checking and
    enqueue the image check. Not repeatable: a second call with the same version
    number is refused by the unique constraint."""
    with transaction.atomic():
        application, _ = AIApplication.objects.get_or_create(
            owner=owner, name=request.application_name, defaults={"description": request.description}
        )
        try:
            with transaction.atomic():
                version = AIApplicationVersion.objects.create(
                    application=application,
                    version=request.version,
                    image=request.image,
                    container_port=request.container_port,
                    health_path=request.health_path,
                    predict_path=request.predict_path,
                    is_websocket=request.is_websocket,
                )
        except IntegrityError:
            raise RequestInvalid(
                {"version": [f"{request.application_name} already has a version {request.version}."]}
            ) from None
        transaction.on_commit(lambda: _enqueue("version_check_image_task", version.id))
    return version


def ai_application_version_recheck(*, version: AIApplicationVersion) -> None:
    AIApplicationVersion.objects.filter(id=version.id).update(status=VersionStatus.CHECKING, status_reason="")
    transaction.on_commit(lambda: _enqueue("version_check_image_task", version.id))


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


def ai_application_delete(*, application: AIApplication) -> None:
    if ServiceVersionConfig.objects.filter(app_version__application=application).exists():
        raise ActionRefused(f"{application.name} is used by a service; delete the service first.")
    application.delete()


def ai_application_version_delete(*, version: AIApplicationVersion) -> None:
    """Delete one version; refused while a service uses it. Its application
    stays, even when this was its last version."""
    if ServiceVersionConfig.objects.filter(app_version=version).exists():
        raise ActionRefused(f"{version} is used by a service; delete the service first.")
    try:
        version.delete()
    except ProtectedError:
        # A deploy picked the version between the check and the delete.
        raise ActionRefused(f"{version} is used by a service; delete the service first.") from None


# --- Events and status ----------------------------------------------------------


def service_event_add(service_id, message: str, *, level: str = ServiceEvent.Level.INFO, detail: str = "") -> None:
    try:
        with transaction.atomic():
            ServiceEvent.objects.create(service_id=service_id, message=message[:500], level=level, detail=detail)
    except IntegrityError:
        # A Delete removed the service while a task or the reconcile loop was
        # still reporting on it; its events are gone with it.
        log.info("service %s is gone; dropped event %r", service_id, message)


def service_transition(
    service_id,
    *,
    to: str,
    lease_token=None,
    reason: str = "",
    event: str = "",
    event_level: str = ServiceEvent.Level.INFO,
    event_detail: str = "",
) -> bool:
    """Move a service to `to` from any status that allows it; True if this call won.

    With a lease token, only the holder of that lease may make the move. A move
    clears the lease, so whichever task works on the new status can claim it.
    The `event`, if any, is written in the same transaction as the move, so the
    timeline never lags behind the status.
    """
    sources = [status for status, targets in SERVICE_TRANSITIONS.items() if to in targets]
    rows = Service.objects.filter(id=service_id, status__in=sources)
    if lease_token is not None:
        rows = rows.filter(lease_token=lease_token)
    with transaction.atomic():
        moved = rows.update(
            status=to,
            status_reason=reason[:500],
            status_changed_at=timezone.now(),
            lease_token=None,
            lease_expires_at=None,
        )
        if moved and event:
            service_event_add(service_id, event, level=event_level, detail=event_detail)
    return bool(moved)


def _lease_claim(service_id, status: str) -> uuid.UUID | None:
    now = timezone.now()
    token = uuid.uuid4()
    won = (
        Service.objects.filter(id=service_id, status=status)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(lease_token=token, lease_expires_at=now + timedelta(seconds=settings.TASK_LEASE_SECONDS))
    )
    return token if won else None


def _lease_renew(service_id, token: uuid.UUID, status: str) -> bool:
    return bool(
        Service.objects.filter(id=service_id, status=status, lease_token=token).update(
            lease_expires_at=timezone.now() + timedelta(seconds=settings.TASK_LEASE_SECONDS)
        )
    )


def _enqueue(task_name: str, *args) -> None:
    from services import tasks

    getattr(tasks, task_name).delay(*args)


# --- Service lifecycle: requests from users --------------------------------------


def service_create(*, owner, request: DeployRequest) -> Service:
    """Store a validated service as Deploying and enqueue its deploy after commit."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                service = Service.objects.create(
                    owner=owner,
                    name=request.name,
                    description=request.description,
                    pool=request.pool,
                    timeout_minutes=request.timeout_minutes,
                    is_websocket=request.is_websocket,
                    status=ServiceStatus.DEPLOYING,
                )
        except IntegrityError:
            raise RequestInvalid({"name": [f"You already have a service named {request.name}."]}) from None
        ServiceVersionConfig.objects.bulk_create(
            ServiceVersionConfig(
                service=service,
                position=position,
                app_version=config.app_version,
                weight=config.weight,
                flavor=config.flavor,
                instance_count=config.instance_count,
                envs=config.envs,
            )
            for position, config in enumerate(request.configs)
        )
        instance_total = sum(config.instance_count for config in request.configs)
        service_event_add(service.id, f"Deployment queued: {instance_total} instance(s) on pool {request.pool.name}")
        transaction.on_commit(lambda: _enqueue("service_deploy_task", str(service.id)))
    return service


def _refuse(service: Service, action: str) -> None:
    raise ActionRefused(f"Cannot {action} {service.name} while it is {service.get_status_display()}.")


def service_start(*, service: Service) -> None:
    """Stopped or Failed → Deploying, and enqueue the deploy. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.DEPLOYING, event="Start requested; deployment queued"):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "start")
    transaction.on_commit(lambda: _enqueue("service_deploy_task", str(service.id)))


def service_stop(*, service: Service) -> None:
    """Running, Alarm or Abnormal → Stopping, and enqueue the stop. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.STOPPING, event="Stop requested"):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "stop")
    transaction.on_commit(lambda: _enqueue("service_stop_task", str(service.id)))


def service_delete(*, service: Service) -> None:
    """Any status but Deleting → Deleting, and enqueue the delete. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.DELETING, event="Delete requested"):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "delete")
    transaction.on_commit(lambda: _enqueue("service_delete_task", str(service.id)))


# --- Service lifecycle: the work, run by Celery tasks ----------------------------


def container_name_for(service_id, position: int, index: int) -> str:
    return f"rts-{service_id}-{position}-{index}"


def _container_spec(service: Service, instance: Instance) -> runtime.ContainerSpec:
    config = instance.config
    version = config.app_version
    return runtime.ContainerSpec(
        name=instance.container_name,
        image=version.image,
        container_port=version.container_port,
        cpus=float(config.flavor.cpus),
        memory_mib=config.flavor.memory_mib,
        environment={str(k): str(v) for k, v in (config.envs or {}).items()},
        labels={
            runtime.LABEL_MANAGED: "1",
            runtime.LABEL_CONSOLE: settings.CONSOLE_ID,
            runtime.LABEL_SERVICE: str(service.id),
            runtime.LABEL_CONFIG: str(config.id),
            runtime.LABEL_VERSION: f"{version.application.name}:{version.version}",
            runtime.LABEL_INSTANCE: str(instance.index),
        },
        publish_host=settings.INSTANCE_HOST,
    )


def _instances_plan(service: Service) -> list[Instance]:
    """The service's Instance rows, one per compute node of each configuration,
    created (and placed on a node) where missing. Rows are written before any
    container exists, so the reconcile loop knows every container we create."""
    configs = list(service.configs.select_related("app_version__application", "flavor"))
    existing = {(i.config_id, i.index): i for i in service.instances.select_related("node")}
    extra_load: dict[int, int] = {}
    wanted = []
    for config in configs:
        for index in range(config.instance_count):
            instance = existing.pop((config.id, index), None)
            if instance is None:
                node = node_pick_for(service.pool, config.flavor, extra_load)
                if node is None:
                    raise runtime.EngineError(
                        f"no reachable engine in pool {service.pool.name} fits {config.flavor.display_name}"
                    )
                extra_load[node.id] = extra_load.get(node.id, 0) + 1
                instance = Instance.objects.create(
                    service=service,
                    config=config,
                    index=index,
                    node=node,
                    container_name=container_name_for(service.id, config.position, index),
                )
                instance.node = node
            instance.config = config
            wanted.append(instance)
    for leftover in existing.values():
        runtime.remove_container(leftover.node.docker_host, leftover.container_name)
        leftover.delete()
    return wanted


def _logs_of(instance: Instance) -> str:
    try:
        logs = runtime.container_log_excerpt(
            instance.node.docker_host, instance.container_name, tail=settings.CONTAINER_LOG_TAIL_LINES
        )
    except runtime.EngineError as exc:
        return f"(logs unavailable: {exc})"
    return logs.strip() or "(the container wrote no log lines)"


def _remove_containers(instances: list[Instance]) -> None:
    def remove(instance: Instance) -> None:
        try:
            runtime.remove_container(instance.node.docker_host, instance.container_name)
        except runtime.EngineError as exc:
            log.warning("could not remove %s: %s (the reconcile loop will retry)", instance.container_name, exc)

    _in_parallel(remove, instances)
    Instance.objects.filter(id__in=[i.id for i in instances]).update(
        state=Instance.State.MISSING, is_healthy=False, container_id="", host_port=None
    )


def _in_parallel(function, items: list) -> list:
    if len(items) <= 1:
        return [function(item) for item in items]

    def run(item):
        try:
            return function(item)
        finally:
            # A pool thread that touched the database has its own connection;
            # close it, or it stays open until garbage collection finds it.
            connections.close_all()

    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(run, items))


def _deploy_fail(service: Service, token, reason: str, instances: list[Instance], detail: str) -> None:
    _remove_containers(instances)
    service_transition(
        service.id,
        to=ServiceStatus.FAILED,
        lease_token=token,
        reason=reason,
        event=f"Failed: {reason}",
        event_level=ServiceEvent.Level.ERROR,
        event_detail=detail,
    )


def _deploy_deadline(service: Service):
    seconds = service.timeout_minutes * 60 * settings.SERVICE_TIMEOUT_SCALE
    return service.status_changed_at + timedelta(seconds=seconds)


def service_deploy_run(*, service_id) -> str:
    """Create (or reuse) one container per compute node, wait for every health
    check, then mark the service Running; on timeout or a container exit, remove
    the containers and mark it Failed with the reason and the last log lines.

    Safe to repeat: claims the Deploying service with a lease first, and
    containers have deterministic names, so a second run adopts the first's.
    """
    token = _lease_claim(service_id, ServiceStatus.DEPLOYING)
    if token is None:
        return "not claimed"
    service = Service.objects.select_related("pool").get(id=service_id)
    deadline = _deploy_deadline(service)
    try:
        instances = _instances_plan(service)
    except runtime.EngineError as exc:
        _deploy_fail(service, token, str(exc), list(service.instances.select_related("node")), "")
        return "failed"

    def start(instance: Instance) -> runtime.ContainerInfo:
        return runtime.ensure_container_running(instance.node.docker_host, _container_spec(service, instance))

    try:
        started = _in_parallel(start, instances)
    except runtime.EngineError as exc:
        _deploy_fail(service, token, str(exc), instances, "")
        return "failed"
    if not _lease_renew(service_id, token, ServiceStatus.DEPLOYING):
        # A Delete took the service while the containers were being created;
        # the reconcile loop removes the ones created after the delete ran.
        return "lease lost"
    for instance, info in zip(instances, started, strict=True):
        instance.container_id = info.container_id
        instance.host_port = info.host_port
        instance.state = Instance.State.RUNNING
        instance.is_healthy = False
        Instance.objects.filter(id=instance.id).update(
            container_id=info.container_id,
            host_port=info.host_port,
            state=Instance.State.RUNNING,
            is_healthy=False,
            updated_at=timezone.now(),
        )
        service_event_add(service.id, f"Container {instance.container_name} started on {instance.node.name}")

    pending = list(instances)
    last_renewal = polling_since = time.monotonic()
    while pending:
        if timezone.now() > deadline:
            detail = "\n\n".join(f"== {i.container_name} ==\n{_logs_of(i)}" for i in pending)
            reason = (
                f"timed out after {service.timeout_minutes} minute(s): {len(pending)} instance(s) never "
                f"answered the health check"
            )
            _deploy_fail(service, token, reason, instances, detail)
            return "failed"
        if time.monotonic() - last_renewal > settings.TASK_LEASE_SECONDS / 3:
            if not _lease_renew(service_id, token, ServiceStatus.DEPLOYING):
                return "lease lost"
            last_renewal = time.monotonic()
        for instance in list(pending):
            version = instance.config.app_version
            if probe_health(
                settings.INSTANCE_HOST, instance.host_port, version.health_path, settings.HEALTH_PROBE_TIMEOUT_SECONDS
            ):
                pending.remove(instance)
                Instance.objects.filter(id=instance.id).update(is_healthy=True, state=Instance.State.RUNNING)
                service_event_add(service.id, f"Health check passed for {instance.container_name}")
                continue
            info = runtime.inspect_container(instance.node.docker_host, instance.container_name)
            if info is None or info.state in ("exited", "dead"):
                detail = _logs_of(instance)
                how = "disappeared" if info is None else f"exited with code {info.exit_code}"
                _deploy_fail(service, token, f"container {instance.container_name} {how}", instances, detail)
                return "failed"
        if pending:
            is_fast = time.monotonic() - polling_since < DEPLOY_POLL_FAST_FOR_SECONDS
            time.sleep(DEPLOY_POLL_SECONDS if is_fast else DEPLOY_POLL_SLOW_SECONDS)

    running = f"Running: {len(instances)}/{len(instances)} instance(s) healthy"
    if service_transition(service.id, to=ServiceStatus.RUNNING, lease_token=token, event=running):
        return "running"
    return "lease lost"


def service_stop_run(*, service_id) -> str:
    """Stop every container of a Stopping service and mark it Stopped. Safe to repeat."""
    token = _lease_claim(service_id, ServiceStatus.STOPPING)
    if token is None:
        return "not claimed"
    instances = list(Instance.objects.filter(service_id=service_id).select_related("node"))

    def stop(instance: Instance) -> None:
        runtime.stop_container(instance.node.docker_host, instance.container_name)

    try:
        _in_parallel(stop, instances)
    except runtime.EngineError as exc:
        service_event_add(service_id, f"Stopping failed, will retry: {exc}", level=ServiceEvent.Level.WARNING)
        # Let the lease lapse so the reconcile loop retries soon.
        Service.objects.filter(id=service_id, lease_token=token).update(lease_expires_at=timezone.now())
        return "retry"
    Instance.objects.filter(service_id=service_id).update(state=Instance.State.STOPPED, is_healthy=False)
    stopped = f"Stopped: {len(instances)} container(s) stopped"
    if service_transition(service_id, to=ServiceStatus.STOPPED, lease_token=token, event=stopped):
        return "stopped"
    return "lease lost"


def service_delete_run(*, service_id) -> str:
    """Remove every container of a Deleting service, then its row. Safe to repeat."""
    token = _lease_claim(service_id, ServiceStatus.DELETING)
    if token is None:
        return "not claimed"
    instances = list(Instance.objects.filter(service_id=service_id).select_related("node"))
    try:
        _in_parallel(lambda i: runtime.remove_container(i.node.docker_host, i.container_name), instances)
    except runtime.EngineError as exc:
        service_event_add(service_id, f"Deleting failed, will retry: {exc}", level=ServiceEvent.Level.WARNING)
        Service.objects.filter(id=service_id, lease_token=token).update(lease_expires_at=timezone.now())
        return "retry"
    Service.objects.filter(id=service_id, status=ServiceStatus.DELETING, lease_token=token).delete()
    return "deleted"
