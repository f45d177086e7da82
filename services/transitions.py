"""The one writer of Service.status, and of the event timeline beside it.

User-facing actions, the lifecycle tasks and the reconcile loop all move a
service through `service_transition`, so every move is checked against
services.choices.SERVICE_TRANSITIONS and is a conditional update that tells
whether it won.
"""

from __future__ import annotations

import logging
import uuid

from django.db import IntegrityError, transaction
from django.utils import timezone

from services.choices import ServiceStatus, sources_of
from services.models import Service, ServiceEvent

log = logging.getLogger(__name__)


def service_event_add(
    service_id: uuid.UUID | str, message: str, *, level: str = ServiceEvent.Level.INFO, detail: str = ""
) -> None:
    """Add one line to a service's timeline; dropped quietly if the service is gone."""
    try:
        with transaction.atomic():
            ServiceEvent.objects.create(service_id=service_id, message=message[:500], level=level, detail=detail)
    except IntegrityError:
        # A Delete removed the service while a task or the reconcile loop was
        # still reporting on it; its events are gone with it.
        log.info("service %s is gone; dropped event %r", service_id, message)


# Moves that end a running stretch: the auto-stop timer goes with it.
AUTO_STOP_DISARMING = frozenset({ServiceStatus.STOPPING, ServiceStatus.FAILED, ServiceStatus.DELETING})


def service_transition(
    service_id: uuid.UUID | str,
    *,
    to: ServiceStatus,
    from_: ServiceStatus | None = None,
    lease_token: uuid.UUID | None = None,
    reason: str = "",
    event: str = "",
    event_level: str = ServiceEvent.Level.INFO,
    event_detail: str = "",
) -> bool:
    """Move a service to `to`; True if this call won.

    Without `from_`, the move is made from any status that allows it; with it,
    only from that status (the caller read it and decided on it, so a user's
    Stop or Delete since then wins). With a lease token, only the holder of that
    lease may make the move. A move clears the lease, so whichever task works on
    the new status can claim it. The `event`, if any, is written in the same
    transaction as the move, so the timeline never lags behind the status.
    """
    sources = sources_of(to)
    if from_ is not None:
        if from_ not in sources:
            return False
        sources = frozenset({from_})
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
            health_wait_started_at=None,
            # A service that stops (or never ran) has no auto-stop timer running;
            # the next Running starts it again.
            **({"auto_stop_at": None} if to in AUTO_STOP_DISARMING else {}),
        )
        if moved and event:
            service_event_add(service_id, event, level=event_level, detail=event_detail)
    return bool(moved)
