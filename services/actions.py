"""Writes that users ask for: registering AI applications, deploying, starting,
stopping and deleting services.

Each one validates, writes inside a transaction and enqueues the worker side
(services.tasks, which runs services.lifecycle) once the transaction commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from pools.quotas import limits_problems, owner_lock
from services import tasks
from services.choices import UPDATABLE_STATUSES, ConfigPhase, ServiceStatus, VersionStatus
from services.instance_runtime import rolls_over
from services.models import (
    AIApplication,
    AIApplicationVersion,
    DataCollectionRule,
    Service,
    ServiceUpdate,
    ServiceVersionConfig,
)
from services.placement import PlacementRefused, instances_place
from services.routing_sync import routing_sync
from services.transitions import service_event_add, service_transition
from services.validation import (
    CollectionRuleRequest,
    DeployRequest,
    RequestInvalid,
    UpdateRequest,
    VersionConfigRequest,
    VersionRequest,
    hours_text,
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
    """Store a validated service as Deploying, its instances placed on nodes,
    and enqueue its deploy after commit.

    The limits, the quota and the pool's room are checked again here, with the
    owner's row and the pool's nodes locked, so requests sent at once cannot
    together pass them (each validated alone). A refusal stores nothing.
    """
    with transaction.atomic():
        owner_lock(owner)
        problems = limits_problems(
            owner,
            new_services=1,
            rows=[(config.flavor, config.instance_count) for config in request.configs],
            is_public=request.pool.is_public,
        )
        if problems:
            raise RequestInvalid({"__all__": problems})
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
                    second_pool=request.second_pool,
                    status=ServiceStatus.DEPLOYING,
                )
        except IntegrityError:
            raise RequestInvalid({"name": [f"You already have a service named {request.name}."]}) from None
        configs = ServiceVersionConfig.objects.bulk_create(
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
        _place(service, configs, list(range(len(configs))))
        instance_total = sum(config.instance_count for config in request.configs)
        where = f"pool {request.pool.name}"
        if request.second_pool is not None:
            where = f"pools {request.pool.name} and {request.second_pool.name}, half in each"
        service_event_add(service.id, f"Deployment queued: {instance_total} instance(s) on {where}")
        transaction.on_commit(lambda: tasks.service_deploy_task.delay(str(service.id)))
    return service


def _place(service: Service, configs: list[ServiceVersionConfig], row_numbers: list[int]) -> None:
    """Place the configurations' instances, or refuse naming the request's row
    (its number in `row_numbers`) that does not fit."""
    try:
        instances_place(service, configs)
    except PlacementRefused as exc:
        raise RequestInvalid({f"configs.{row_numbers[exc.config_index]}.flavor": [str(exc)]}) from None


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


# --- Updates ------------------------------------------------------------------------


@dataclass
class UpdatePlan:
    """How a requested configuration differs from the current one."""

    # Configuration id → new weight, for the configurations that stay as they are.
    kept_weights: dict[int, int] = field(default_factory=dict)
    # Rows that need new containers (with their number in the request): a new
    # version, or a version whose specification, compute nodes or environment changed.
    new_rows: list[tuple[int, VersionConfigRequest]] = field(default_factory=list)
    # Configurations that go (their version left, or a new row replaces it).
    removed: list[ServiceVersionConfig] = field(default_factory=list)

    @property
    def moves_containers(self) -> bool:
        return bool(self.new_rows or self.removed)


def update_plan(current: list[ServiceVersionConfig], wanted: list[VersionConfigRequest]) -> UpdatePlan:
    """Match the wanted rows to the current configurations by version: a
    version whose settings are unchanged keeps its containers (and only its
    weight may change); any other change starts new containers."""
    plan = UpdatePlan()
    by_version = {config.app_version_id: config for config in current}
    for number, row in enumerate(wanted):
        config = by_version.pop(row.app_version.id, None)
        if (
            config is not None
            and config.flavor_id == row.flavor.id
            and config.instance_count == row.instance_count
            and (config.envs or {}) == row.envs
        ):
            plan.kept_weights[config.id] = row.weight
            continue
        if config is not None:
            plan.removed.append(config)
        plan.new_rows.append((number, row))
    plan.removed.extend(by_version.values())
    return plan


def _rows_text(rows: list[dict[str, object]]) -> str:
    return "; ".join(
        f"{row['model_name']} {row['model_version']} {row['weight']}% on {row['instance_count']} × "
        f"{row['specification']}"
        for row in rows
    )


def service_update(*, service: Service, request: UpdateRequest, actor: User | None = None) -> ServiceUpdate | None:
    """Change a service's description and/or version configurations; the
    update history keeps who, when, before, after and the outcome.

    A new description, or new traffic ratios alone, take effect at once (the
    call returns once every gateway process routes by the new ratios). Any
    other change is a live update: the service turns Upgrading, its new
    configurations are written as Staged (no traffic), and the worker
    (services.lifecycle.service_update_run) starts them, moves the traffic and
    removes what they replace. Returns the update, or None when nothing changes.
    Refused while another update runs, and a live update unless the service is
    serving (Running, Alarm or Abnormal)."""
    with transaction.atomic():
        locked = Service.objects.select_for_update().get(id=service.id)
        if locked.status in (ServiceStatus.UPGRADING, ServiceStatus.DELETING):
            _refuse(locked, "update")
        configs = list(
            locked.configs.select_related("app_version__application", "flavor").filter(phase=ConfigPhase.SERVING)
        )
        before = {"description": locked.description, "config": locked.config_rows()}
        new_description = request.description if request.description not in (None, locked.description) else None
        plan = update_plan(configs, request.configs) if request.configs is not None else UpdatePlan()
        weights_change = {
            config_id: weight
            for config_id, weight in plan.kept_weights.items()
            if next(c.weight for c in configs if c.id == config_id) != weight
        }
        if new_description is None and not weights_change and not plan.moves_containers:
            return None
        if plan.moves_containers and locked.status not in UPDATABLE_STATUSES:
            raise ActionRefused(
                f"Cannot change the versions or instances of {locked.name} while it is "
                f"{locked.get_status_display()}: start it first (a new description or new traffic ratios "
                "can be set now)."
            )
        who = f" by {actor.get_username()}" if actor is not None else ""
        if new_description is not None:
            Service.objects.filter(id=locked.id).update(description=new_description)
            locked.description = new_description
        if not plan.moves_containers:
            for config_id, weight in weights_change.items():
                ServiceVersionConfig.objects.filter(id=config_id).update(weight=weight)
            update = ServiceUpdate.objects.create(
                service=locked,
                requested_by=actor,
                outcome=ServiceUpdate.Outcome.SUCCEEDED,
                finished_at=timezone.now(),
                before=before,
                after={"description": locked.description, "config": locked.config_rows()},
            )
            if weights_change:
                service_event_add(locked.id, f"Traffic ratios changed{who}: {_rows_text(update.after['config'])}")
            else:
                service_event_add(locked.id, f"Description changed{who}")
        else:
            update = _live_update_start(locked, actor, plan, before, who)
    if weights_change and not plan.moves_containers:
        # Returns once every gateway process routes by the new ratios.
        routing_sync(service_id=service.id)
    return update


def _live_update_start(
    service: Service, actor: User | None, plan: UpdatePlan, before: dict[str, Any], who: str
) -> ServiceUpdate:
    """Write the staged configurations and the plan, turn Upgrading, and enqueue the worker after commit."""
    problems = limits_problems(
        service.owner,
        rows=[(row.flavor, row.instance_count) for _, row in plan.new_rows],
        is_public=service.pool.is_public,
    )
    if problems:
        # The old instances hold their place until the new ones took over.
        raise RequestInvalid({"__all__": [*problems, "An update holds its old and new instances for a moment."]})
    next_position = (
        ServiceVersionConfig.objects.filter(service=service).order_by("-position").values_list("position", flat=True)
    ).first() or 0
    # On a Swarm pool, a version whose settings change keeps its Swarm service,
    # which Swarm's own rolling update moves to the new configuration.
    replaced = {config.app_version_id: config for config in plan.removed}
    staged = ServiceVersionConfig.objects.bulk_create(
        ServiceVersionConfig(
            service=service,
            position=next_position + 1 + n,
            app_version=row.app_version,
            weight=0,
            flavor=row.flavor,
            instance_count=row.instance_count,
            envs=row.envs,
            phase=ConfigPhase.STAGED,
            swarm_service=rolls_over(service, replaced[row.app_version.id]) if row.app_version.id in replaced else "",
        )
        for n, (_, row) in enumerate(plan.new_rows)
    )
    _place(service, staged, [number for number, _ in plan.new_rows])
    weights = {str(config_id): weight for config_id, weight in plan.kept_weights.items()}
    weights.update({str(config.id): row.weight for config, (_, row) in zip(staged, plan.new_rows, strict=True)})
    after_rows = [
        {
            "model_id": row.app_version.id,
            "model_name": row.app_version.application.name,
            "model_version": row.app_version.version,
            "weight": row.weight,
            "specification": row.flavor.code,
            "instance_count": row.instance_count,
            "envs": row.envs,
        }
        for _, row in plan.new_rows
    ]
    kept = [dict(r, weight=plan.kept_weights[c.id]) for c, r in _kept_rows(service, plan)]
    update = ServiceUpdate.objects.create(
        service=service,
        requested_by=actor,
        is_live=True,
        before=before,
        after={"description": service.description, "config": kept + after_rows},
        plan={
            "weights": weights,
            "remove": [config.id for config in plan.removed],
            "new": [config.id for config in staged],
        },
    )
    new_instances = sum(row.instance_count for _, row in plan.new_rows)
    event = f"Update requested{who}: {_rows_text(update.after['config'])}"
    if new_instances:
        event += f"; starting {new_instances} new instance(s) before any traffic moves"
    if not service_transition(service.id, to=ServiceStatus.UPGRADING, from_=ServiceStatus(service.status), event=event):
        raise ActionRefused(f"{service.name} changed status meanwhile; try again.")
    transaction.on_commit(lambda: tasks.service_update_task.delay(str(service.id)))
    return update


def _kept_rows(service: Service, plan: UpdatePlan) -> list[tuple[ServiceVersionConfig, dict[str, object]]]:
    configs = service.configs.select_related("app_version__application", "flavor").filter(
        id__in=list(plan.kept_weights)
    )
    return [(config, config.summary()) for config in configs.order_by("position")]


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
