"""Celery tasks: thin interfaces that load by id and call one function.

Every task here is safe to run twice; the lifecycle functions claim their work first.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from services import collection, lifecycle, reconcile
from services.choices import ServiceStatus
from services.metrics import RECONCILE_SECONDS


@shared_task
def service_deploy_task(service_id: str) -> str:
    return lifecycle.service_deploy_run(service_id=service_id)


@shared_task
def service_stop_task(service_id: str) -> str:
    return lifecycle.service_stop_run(service_id=service_id)


@shared_task
def service_delete_task(service_id: str) -> str:
    return lifecycle.service_delete_run(service_id=service_id)


@shared_task
def service_update_task(service_id: str) -> str:
    return lifecycle.service_update_run(service_id=service_id)


@shared_task
def version_check_image_task(version_id: int) -> str | None:
    return lifecycle.ai_application_version_check_image(version_id=version_id)


@shared_task
def deploys_probe_task() -> dict[str, str] | None:
    """One round of the prober of deploys (and live updates) waiting for their
    health checks; an update whose new instances all answered goes on in its own task."""
    outcomes = lifecycle.deploys_probe()
    for service_id, outcome in (outcomes or {}).items():
        if outcome == "ready":
            service_update_task.delay(service_id)
    return outcomes


@shared_task
def collected_records_purge_task() -> int:
    """Data collection's retention: delete the records beyond each rule's limits."""
    return collection.collected_records_purge()


# The task that carries a service out of each transitional status.
TASK_FOR_STATUS: dict[ServiceStatus, Task] = {
    ServiceStatus.DEPLOYING: service_deploy_task,
    ServiceStatus.STOPPING: service_stop_task,
    ServiceStatus.DELETING: service_delete_task,
    ServiceStatus.UPGRADING: service_update_task,
}


@shared_task
def reconcile_task() -> dict[str, Any] | None:
    """One reconcile cycle; then re-enqueue the work whose worker died."""
    with RECONCILE_SECONDS.time():
        report = reconcile.reconcile()
    if report is None:
        return None
    for service_id, status in report.lapsed:
        TASK_FOR_STATUS[status].delay(service_id)
    return report.as_dict()
