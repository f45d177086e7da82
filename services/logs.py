"""Containers' logs, read from their engines through the runtime.

These are engine calls, not database reads: the details page calls
`instance_logs_read` explicitly when it shows the Logs panel, and a failed
deploy keeps `container_log_excerpt_of` in its event.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from services import runtime
from services.instance_runtime import instance_log_excerpt, instance_logs
from services.models import Instance


def instance_logs_read(instances: Iterable[Instance]) -> list[tuple[Instance, str]]:
    """Each instance with the last lines of its container's log, read from its engine now."""
    logs = []
    for instance in instances:
        try:
            text = instance_logs(instance, tail=settings.CONTAINER_LOG_TAIL_LINES)
        except runtime.EngineError as exc:
            text = f"(logs unavailable: {exc})"
        logs.append((instance, text))
    return logs


def container_log_excerpt_of(instance: Instance) -> str:
    """The first and last lines of an instance's log, for a failure's event."""
    try:
        logs = instance_log_excerpt(instance, tail=settings.CONTAINER_LOG_TAIL_LINES)
    except runtime.EngineError as exc:
        return f"(logs unavailable: {exc})"
    return logs.strip() or "(the container wrote no log lines)"
