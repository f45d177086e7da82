"""Writes that users ask for: registering AI applications, deploying, starting,
stopping and deleting services.

Each one validates, writes inside a transaction and enqueues the worker side
(services.tasks, which runs services.lifecycle) once the transaction commits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from services import tasks
from services.choices import ServiceStatus, VersionStatus
from services.models import (
    AIApplication,
    AIApplicationVersion,
    DataCollectionRule,
    Service,
    ServiceVersionConfig,
)
from services.transitions import service_event_add, service_transition
from services.validation import (
    CollectionRuleRequest,
    DeployRequest,
    RequestInvalid,
    VersionRequest,
    hours_text,
    service_limit_message,
)

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
    """Store a validated service as Deploying and enqueue its deploy after commit.

    The service limit is counted again here, with the owner's row locked, so
    requests sent at once cannot together pass it (each validated alone).
    """
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
        if Service.objects.filter(owner=owner).count() >= settings.MAX_SERVICES_PER_USER:
            raise RequestInvalid({"__all__": [service_limit_message(owner)]})
        try:
            with transaction.atomic():
                service = Service.objects.create(
                    owner=owner,
                    name=request.name,
                    description=request.description,
                    pool=request.pool,
                    timeout_minutes=request.timeout_minutes,
                    is_websocket=request.is_websocket,
                    traffic_limit=request.traffic_limit,
                    auto_stop_hours=request.auto_stop_hours,
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


def service_auto_stop_set(*, service: Service, hours: int | None, actor: User | None = None) -> None:
    """Set (or, with None, turn off) the auto-stop timer. On a serving service
    the timer starts again from now, so setting the same hours extends it."""
    now = timezone.now()
    is_serving = service.is_supervised
    Service.objects.filter(id=service.id).update(
        auto_stop_hours=hours, auto_stop_at=now + timedelta(hours=hours) if hours and is_serving else None
    )
    who = f" by {actor.get_username()}" if actor is not None else ""
    if hours:
        when = "from now" if is_serving else "after it next turns Running"
        service_event_add(service.id, f"Auto stop set to {hours_text(hours)} {when}{who}")
    else:
        service_event_add(service.id, f"Auto stop turned off{who}")


def service_delete(*, service: Service, actor: User | None = None) -> None:
    """Any status but Deleting → Deleting, and enqueue the delete. A second call is refused."""
    if not service_transition(service.id, to=ServiceStatus.DELETING, event=_requested("Delete", actor)):
        service.refresh_from_db(fields=["status"])
        _refuse(service, "delete")
    transaction.on_commit(lambda: tasks.service_delete_task.delay(str(service.id)))


# --- Data collection ----------------------------------------------------------------


def collection_rule_set(
    *, service: Service, request: CollectionRuleRequest, actor: User | None = None
) -> DataCollectionRule:
    """Store the service's data collection rule (creating it the first time) and
    note it in the service's events. Every gateway process hears of the change
    by push as it commits (migration 0008's triggers) and samples from its next
    call on. Records beyond a tighter retention go at the next purge. Safe to repeat."""
    with transaction.atomic():
        rule, _ = DataCollectionRule.objects.update_or_create(
            service=service,
            defaults={
                "is_enabled": request.is_enabled,
                "sample_percent": request.sample_percent,
                "content": request.content,
                "keep_days": request.keep_days,
                "keep_records": request.keep_records,
            },
        )
        who = f" by {actor.get_username()}" if actor is not None else ""
        if rule.is_enabled:
            event = (
                f"Data collection on{who}: {rule.sample_percent}% of calls, "
                f"{rule.get_content_display().lower()}, kept {rule.retention_label}"
            )
        else:
            event = f"Data collection off{who}"
        service_event_add(service.id, event)
    return rule
