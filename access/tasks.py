"""Celery tasks of the access app: thin, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from access import actions


@shared_task
def access_tokens_purge_task() -> int:
    return actions.access_tokens_purge()
