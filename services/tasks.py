"""Celery tasks: thin interfaces that load by id and call one action.

Every task here is safe to run twice; the actions claim their work first.
"""

from celery import shared_task

from services import actions, reconcile


@shared_task
def service_deploy_task(service_id: str) -> str:
    return actions.service_deploy_run(service_id=service_id)


@shared_task
def service_stop_task(service_id: str) -> str:
    return actions.service_stop_run(service_id=service_id)


@shared_task
def service_delete_task(service_id: str) -> str:
    return actions.service_delete_run(service_id=service_id)


@shared_task
def version_check_image_task(version_id: int) -> str | None:
    return actions.ai_application_version_check_image(version_id=version_id)


@shared_task
def reconcile_task() -> dict | None:
    report = reconcile.reconcile()
    return None if report is None else report.__dict__
