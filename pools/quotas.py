"""What a user may hold and what they hold now: the service and instance
limits and the vCPU and GPU quota.

Services in public pools take quota per instance, from creation to deletion,
in every status (a Stopped or Abnormal service keeps its place), whatever
phase of a live update their configuration is in. Services in dedicated pools
take none: the pool takes its owner's quota for its nodes, as they are added
and removed. The checks run inside the transaction that changes what a user
holds, with the user's row locked, so requests sent at once cannot together
pass a limit that each passes alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import F, QuerySet, Sum

from pools.models import Flavor, Node, ResourcePool, UserQuota
from services.models import Service, ServiceVersionConfig

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class Allowance:
    """A user's limits, defaults filled in."""

    max_services: int
    max_instances: int
    vcpus: int
    gpus: int


@dataclass(frozen=True)
class Holding:
    """What a user holds now (or would hold)."""

    services: int = 0
    instances: int = 0
    vcpus: Decimal = Decimal(0)
    gpus: int = 0


def allowance_of(user: User) -> Allowance:
    quota = UserQuota.objects.filter(user=user).first() or UserQuota()

    def pick(value: int | None, default: int) -> int:
        return default if value is None else value

    return Allowance(
        max_services=pick(quota.max_services, settings.MAX_SERVICES_PER_USER),
        max_instances=pick(quota.max_instances, settings.MAX_INSTANCES_PER_USER),
        vcpus=pick(quota.vcpus, settings.QUOTA_VCPUS),
        gpus=pick(quota.gpus, settings.QUOTA_GPUS),
    )


def holding_of(user: User) -> Holding:
    """Services (any status), instances (every configuration of every service),
    and quota taken: public pools' instances and dedicated pools' nodes."""
    configs = ServiceVersionConfig.objects.filter(service__owner=user)
    instances = configs.aggregate(total=Sum("instance_count"))["total"] or 0
    public = configs.filter(service__pool__is_public=True).aggregate(
        vcpus=Sum(F("instance_count") * F("flavor__cpus")), gpus=Sum(F("instance_count") * F("flavor__gpus"))
    )
    nodes = _quota_taking_nodes(user).aggregate(vcpus=Sum("cpu_count"), gpus=Sum("gpu_count"))
    return Holding(
        services=Service.objects.filter(owner=user).count(),
        instances=instances,
        vcpus=Decimal(public["vcpus"] or 0) + Decimal(nodes["vcpus"] or 0),
        gpus=(public["gpus"] or 0) + (nodes["gpus"] or 0),
    )


def _quota_taking_nodes(user: User) -> QuerySet[Node]:
    """The nodes of the user's dedicated pools; a Swarm node held back
    (disabled, pools.actions.swarm_nodes_record) takes none: it is not used."""
    return Node.objects.filter(pool__owner=user, pool__is_public=False).exclude(is_enabled=False, swarm_node_id__gt="")


def dedication_problems(pool: ResourcePool, owner: User) -> list[str]:
    """Why dedicating `pool` to `owner` would pass their vCPU or GPU quota ([]
    when it would not): from then on its nodes take their quota, and their
    services in it, when it was public, stop taking it instance by instance."""
    allowance = allowance_of(owner)
    held = holding_of(owner)
    nodes = (
        Node.objects.filter(pool=pool)
        .exclude(is_enabled=False, swarm_node_id__gt="")
        .aggregate(vcpus=Sum("cpu_count"), gpus=Sum("gpu_count"))
    )
    freed: dict[str, Any] = {}
    if pool.is_public:
        freed = ServiceVersionConfig.objects.filter(service__owner=owner, service__pool=pool).aggregate(
            vcpus=Sum(F("instance_count") * F("flavor__cpus")), gpus=Sum(F("instance_count") * F("flavor__gpus"))
        )
    node_vcpus, node_gpus = Decimal(nodes["vcpus"] or 0), int(nodes["gpus"] or 0)
    vcpus = held.vcpus - Decimal(freed.get("vcpus") or 0) + node_vcpus
    gpus = held.gpus - int(freed.get("gpus") or 0) + node_gpus
    name = owner.get_username()
    problems = []
    if node_vcpus and vcpus > allowance.vcpus:
        problems.append(
            f"Pool {pool.name}'s nodes have {_number(node_vcpus)} vCPUs, which would take {name}'s vCPU quota to "
            f"{_number(vcpus)} of {allowance.vcpus}. Raise their quota first, or choose another owner."
        )
    if node_gpus and gpus > allowance.gpus:
        problems.append(
            f"Pool {pool.name}'s nodes have {node_gpus} GPUs, which would take {name}'s GPU quota to "
            f"{gpus} of {allowance.gpus}. Raise their quota first, or choose another owner."
        )
    return problems


def owner_lock(user: User) -> None:
    """Hold the user's row until the transaction ends: one change of what they hold at a time."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()


def _number(value: Decimal) -> str:
    return f"{value.normalize():f}" if value != value.to_integral() else str(int(value))


def limits_problems(
    user: User,
    *,
    new_services: int = 0,
    rows: Iterable[tuple[Flavor, int]] = (),
    is_public: bool = True,
    node_vcpus: int = 0,
    node_gpus: int = 0,
    for_operator: bool = False,
) -> list[str]:
    """Why adding this to what the user holds would pass a limit ([] when it
    would not): `new_services` services, instances as (flavor, count) rows (in
    a public pool they take quota), and a dedicated pool's node. An operator
    (`for_operator`) reads it about the user, and is told how to make room."""
    allowance = allowance_of(user)
    held = holding_of(user)
    rows = list(rows)
    adding_instances = sum(count for _, count in rows)
    adding_vcpus = Decimal(node_vcpus) + (sum((f.cpus * n for f, n in rows), Decimal(0)) if is_public else 0)
    adding_gpus = node_gpus + (sum(f.gpus * n for f, n in rows) if is_public else 0)
    problems = []
    if new_services and held.services + new_services > allowance.max_services:
        problems.append(service_limit_message(user, allowance.max_services))
    if adding_instances and held.instances + adding_instances > allowance.max_instances:
        problems.append(
            f"Your services would have {held.instances + adding_instances} instances; a user may have at most "
            f"{allowance.max_instances} ({held.instances} now)."
        )
    whose = f"{user.get_username()}'s" if for_operator else "your"
    if adding_vcpus and held.vcpus + adding_vcpus > allowance.vcpus:
        make_room = (
            "Raise their quota first (admin, user quotas)."
            if for_operator
            else "Delete a service in a public pool, or ask an administrator for more."
        )
        problems.append(
            f"vCPU quota exceeded: this needs {_number(adding_vcpus)} vCPUs and {_number(allowance.vcpus - held.vcpus)} "
            f"of {whose} {allowance.vcpus} are left. {make_room}"
        )
    if adding_gpus and held.gpus + adding_gpus > allowance.gpus:
        problems.append(
            f"GPU quota exceeded: this needs {adding_gpus} GPUs and {allowance.gpus - held.gpus} of {whose} "
            f"{allowance.gpus} are left."
        )
    return problems


def service_limit_message(user: User, limit: int) -> str:
    """Why a user at the service limit cannot deploy, and what to delete first."""
    broken = list(
        Service.objects.filter(owner=user, status__in=["failed", "abnormal"])
        .order_by("name")
        .values_list("name", flat=True)[:5]
    )
    first = f" Your Failed or Abnormal services are the first to go: {', '.join(broken)}." if broken else ""
    return (
        f"You already have {limit} services, the most you may have in any status. Delete one to deploy another.{first}"
    )


@dataclass(frozen=True)
class QuotaLine:
    """One row of the Quotas page."""

    label: str
    used: Decimal | int
    limit: int

    @property
    def percent(self) -> int:
        if self.limit <= 0:
            return 100 if self.used else 0
        return max(0, min(100, round(Decimal(self.used) * 100 / self.limit)))

    @property
    def is_over(self) -> bool:
        return self.used > self.limit

    @property
    def used_text(self) -> str:
        return _number(Decimal(self.used))


@dataclass(frozen=True)
class QuotaTaker:
    """What takes quota: a service in a public pool, or a dedicated pool's nodes."""

    kind: str
    name: str
    pool_name: str
    vcpus: Decimal
    gpus: int
    instances: int

    @property
    def vcpus_text(self) -> str:
        return _number(self.vcpus)


def quota_page_for(user: User) -> dict[str, object]:
    """The Quotas page: each limit with what is used, and what uses it."""
    allowance = allowance_of(user)
    held = holding_of(user)
    takers: list[QuotaTaker] = []
    services = (
        Service.objects.filter(owner=user, pool__is_public=True)
        .select_related("pool")
        .annotate(
            vcpus=Sum(F("configs__instance_count") * F("configs__flavor__cpus")),
            gpus=Sum(F("configs__instance_count") * F("configs__flavor__gpus")),
            instance_total=Sum("configs__instance_count"),
        )
        .order_by("name")
    )
    for service in services:
        takers.append(
            QuotaTaker(
                "service",
                service.name,
                service.pool.name,
                Decimal(service.vcpus or 0),
                service.gpus or 0,
                service.instance_total or 0,
            )
        )
    pools = (
        _quota_taking_nodes(user)
        .values("pool__name")
        .annotate(vcpus=Sum("cpu_count"), gpus=Sum("gpu_count"))
        .order_by("pool__name")
    )
    for row in pools:
        takers.append(
            QuotaTaker("dedicated pool", row["pool__name"], row["pool__name"], Decimal(row["vcpus"]), row["gpus"], 0)
        )
    return {
        "lines": [
            QuotaLine("vCPUs", held.vcpus, allowance.vcpus),
            QuotaLine("GPUs", held.gpus, allowance.gpus),
            QuotaLine("Real-time services", held.services, allowance.max_services),
            QuotaLine("Instances", held.instances, allowance.max_instances),
        ],
        "takers": takers,
    }
