"""Writes that users ask for: registering AI applications, deploying, starting,
stopping and deleting services.

Each one validates, writes inside a transaction and enqueues the worker side
(services.tasks, which runs services.lifecycle) once the transaction commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from services import tasks
from services.choices import ServiceStatus, VersionStatus
from services.models import AIApplication, AIApplicationVersion, Service, ServiceVersionConfig
from services.transitions import service_event_add, service_transition
from services.validation import DeployRequest, RequestInvalid, VersionRequest

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class ActionRefused(Exception):
    """The action makes no sense in the object's current state; the message says why."""


# --- AI applications -----------------------------------------------------------


def ai_application_version_register(*, owner: User, request: VersionRequest) -> AIApplicationVersion:
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
        transaction.on_commit(lambda: tasks.version_check_image_task.delay(version.id))
    return version


def ai_application_version_recheck(*, version: AIApplicationVersion) -> None:
    AIApplicationVersion.objects.filter(id=version.id).update(status=VersionStatus.CHECKING, status_reason="")
    transaction.on_commit(lambda: tasks.version_check_image_task.delay(version.id))


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


# --- Service lifecycle: requests from users --------------------------------------


def service_create(*, owner: User, request: DeployRequest) -> Service:
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
        transaction.on_commit(lambda: tasks.service_deploy_task.delay(str(service.id)))
    return service


def _refuse(service: Service, action: str) -> NoReturn:
    raise ActionRefused(f"Cannot {action} {service.name} while it is {service.get_status_display()}.")


def _requested(what: str, actor: User | None) -> str:
    return f"{what} requested by {actor.get_username()}" if actor is not None else f"{what} requested"


def service_start(*, service: Service, actor: User | None = None) -> None:
    """Stopped or Failed → Deploying, and enqueue the deploy. A second call is
    refused. The event names the actor (the owner, or an operator)."""
    event = f"{_requested('Start', actor)}; deployment queued"
    if not service_transition(service.id, to=ServiceStatus.DEPLOYING, event=event):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "start")
    transaction.on_commit(lambda: tasks.service_deploy_task.delay(str(service.id)))


def service_stop(*, service: Service, actor: User | None = None) -> None:
    """Running, Alarm or Abnormal → Stopping, and enqueue the stop. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.STOPPING, event=_requested("Stop", actor)):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "stop")
    transaction.on_commit(lambda: tasks.service_stop_task.delay(str(service.id)))


def service_delete(*, service: Service, actor: User | None = None) -> None:
    """Any status but Deleting → Deleting, and enqueue the delete. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.DELETING, event=_requested("Delete", actor)):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "delete")
    transaction.on_commit(lambda: tasks.service_delete_task.delay(str(service.id)))
