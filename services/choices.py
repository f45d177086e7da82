"""Statuses of versions, services and instances, and the moves between them.

No Django here: the gateway imports these too (through services.contract), so
both processes agree on what each status means.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import EnumType, StrEnum
from typing import TYPE_CHECKING, Self, cast


class _LabelledChoicesType(EnumType):
    @property
    def choices(cls) -> list[tuple[str, str]]:
        """(value, label) pairs, for a model field's `choices` (as Django's TextChoices)."""
        return [(member.value, member.label) for member in cast("Iterable[LabelledChoices]", cls)]

    @property
    def values(cls) -> list[str]:
        return [member.value for member in cast("Iterable[LabelledChoices]", cls)]


class LabelledChoices(StrEnum, metaclass=_LabelledChoicesType):
    """A string enum whose members carry a label for people, like Django's TextChoices."""

    label: str

    if TYPE_CHECKING:
        # mypy checks a lookup by value, `ServiceStatus("running")`, against
        # __new__ too: there the label is absent.
        def __new__(cls, value: str, label: str = ...) -> Self: ...

    else:

        def __new__(cls, value: str, label: str) -> LabelledChoices:
            member = str.__new__(cls, value)
            member._value_ = value
            member.label = label
            return member


class VersionStatus(LabelledChoices):
    CHECKING = "checking", "Checking"
    NORMAL = "normal", "Normal"
    FAILED = "failed", "Failed"


class ServiceStatus(LabelledChoices):
    DEPLOYING = "deploying", "Deploying"
    RUNNING = "running", "Running"
    ALARM = "alarm", "Alarm"
    ABNORMAL = "abnormal", "Abnormal"
    FAILED = "failed", "Failed"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    DELETING = "deleting", "Deleting"
    # A live update is replacing versions or instances; calls go on.
    UPGRADING = "upgrading", "Upgrading"


class ConfigPhase(LabelledChoices):
    """Where a version configuration of a service stands in a live update."""

    # Takes the traffic its weight says (every configuration outside an update).
    SERVING = "serving", "Serving"
    # Added by an update: its instances start and pass their health checks
    # with no traffic; the cut-over gives it its weight.
    STAGED = "staged", "Starting"
    # Left by an update's cut-over: no new calls; removed once the calls in flight finished.
    DRAINING = "draining", "Draining"


class InstanceState(LabelledChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    # Exited (or gone) and waiting out the reconcile loop's restart back-off.
    EXITED = "exited", "Exited"
    MISSING = "missing", "Missing"
    STOPPED = "stopped", "Stopped"


# The transitions are written once here; every status write goes through
# services.transitions.service_transition, which refuses anything not listed.
SERVICE_TRANSITIONS: dict[ServiceStatus, frozenset[ServiceStatus]] = {
    ServiceStatus.DEPLOYING: frozenset({ServiceStatus.RUNNING, ServiceStatus.FAILED, ServiceStatus.DELETING}),
    ServiceStatus.RUNNING: frozenset(
        {
            ServiceStatus.ALARM,
            ServiceStatus.ABNORMAL,
            ServiceStatus.STOPPING,
            ServiceStatus.DELETING,
            ServiceStatus.UPGRADING,
        }
    ),
    ServiceStatus.ALARM: frozenset(
        {
            ServiceStatus.RUNNING,
            ServiceStatus.ABNORMAL,
            ServiceStatus.STOPPING,
            ServiceStatus.DELETING,
            ServiceStatus.UPGRADING,
        }
    ),
    ServiceStatus.ABNORMAL: frozenset(
        {
            ServiceStatus.RUNNING,
            ServiceStatus.ALARM,
            ServiceStatus.STOPPING,
            ServiceStatus.DELETING,
            ServiceStatus.UPGRADING,
        }
    ),
    ServiceStatus.FAILED: frozenset({ServiceStatus.DEPLOYING, ServiceStatus.DELETING}),
    ServiceStatus.STOPPING: frozenset({ServiceStatus.STOPPED, ServiceStatus.DELETING}),
    ServiceStatus.STOPPED: frozenset({ServiceStatus.DEPLOYING, ServiceStatus.DELETING}),
    ServiceStatus.DELETING: frozenset(),
    # An update ends on the status its instances' health says; Stop waits for it.
    ServiceStatus.UPGRADING: frozenset(
        {ServiceStatus.RUNNING, ServiceStatus.ALARM, ServiceStatus.ABNORMAL, ServiceStatus.DELETING}
    ),
}

# A task is working on the service; the pages poll while any is in one of these.
TRANSITIONAL_STATUSES = frozenset(
    {ServiceStatus.DEPLOYING, ServiceStatus.STOPPING, ServiceStatus.DELETING, ServiceStatus.UPGRADING}
)
# The reconcile loop keeps these services' instances running and health-checked.
SUPERVISED_STATUSES = frozenset({ServiceStatus.RUNNING, ServiceStatus.ALARM, ServiceStatus.ABNORMAL})
# The gateway routes calls to these services (an Alarm service still has
# healthy instances; an Upgrading one serves on while its update runs).
CALLABLE_STATUSES = frozenset({ServiceStatus.RUNNING, ServiceStatus.ALARM, ServiceStatus.UPGRADING})
# A live update may start from these (the serving statuses).
UPDATABLE_STATUSES = SUPERVISED_STATUSES


def sources_of(target: ServiceStatus) -> frozenset[ServiceStatus]:
    """Every status from which a service may move to `target`."""
    return frozenset(status for status, targets in SERVICE_TRANSITIONS.items() if target in targets)


def can_transition(source: str, target: str) -> bool:
    return target in SERVICE_TRANSITIONS.get(ServiceStatus(source), frozenset())
