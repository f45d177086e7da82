from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404

from pools.models import Flavor, Node, ResourcePool
from services.models import Instance, Service

if TYPE_CHECKING:
    from django.contrib.auth.models import User


@dataclass(frozen=True)
class FlavorOption:
    flavor: Flavor
    is_available: bool
    reason: str = ""


def pool_list_for(user: User) -> QuerySet[ResourcePool]:
    """Pools a user may deploy to: every public pool and their own dedicated ones."""
    return ResourcePool.objects.filter(Q(is_public=True) | Q(owner=user)).order_by("-is_public", "name")


def pool_usable_nodes(pool: ResourcePool) -> list[Node]:
    return [node for node in pool.nodes.all() if node.is_offered]


def flavor_fits_node(node: Node, flavor: Flavor) -> bool:
    """Whether one instance of the flavor can run on the node at all: an
    engine refuses a container limited to more CPUs or memory than it has,
    whatever the pool's overcommit (which applies to the sum of instances)."""
    return (
        Decimal(node.cpu_count) >= flavor.cpus
        and node.memory_mib >= flavor.memory_mib
        and node.gpu_count >= flavor.gpus
    )


def memory_text(mib: int) -> str:
    # Whole GiB only: "// 1024" would call 512 MiB "0 GiB".
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def _unavailable_reason(pool: ResourcePool, nodes: list[Node], flavor: Flavor) -> str:
    if not nodes:
        return f"no engine in pool {pool.name} is reachable"
    if flavor.gpus and not any(node.gpu_count for node in nodes):
        return f"no engine in pool {pool.name} has GPUs"
    if flavor.gpus and max(node.gpu_count for node in nodes) < flavor.gpus:
        return f"needs {flavor.gpus} GPUs; no engine in pool {pool.name} has that many"
    largest_cpus = max(node.cpu_count for node in nodes)
    if flavor.cpus > largest_cpus:
        # normalize() alone turns 10.00 into 1E+1; ":f" keeps it plain.
        return f"needs {flavor.cpus.normalize():f} vCPUs; the largest engine in pool {pool.name} has {largest_cpus}"
    largest_memory = max(node.memory_mib for node in nodes)
    if flavor.memory_mib > largest_memory:
        return (
            f"needs {memory_text(flavor.memory_mib)} memory; "
            f"the largest engine in pool {pool.name} has {memory_text(largest_memory)}"
        )
    return f"no single engine in pool {pool.name} has enough CPU, memory and GPUs together"


def flavor_options_for_pool(pool: ResourcePool | None) -> list[FlavorOption]:
    """Every flavor, each marked available or not on this pool, with the reason:
    not offered, too large for any engine, or the pool is full (counting every
    instance placed: what one more needs against the roomiest node's free room)."""
    flavors = list(Flavor.objects.all())
    if pool is None:
        return [FlavorOption(f, False, "no resource pool is selected") for f in flavors]
    nodes = pool_usable_nodes(pool)
    offered = None if pool.offers_every_flavor else set(pool.flavors.values_list("id", flat=True))
    free = [capacity.free for capacity in node_capacity_list(nodes, pool)]
    options = []
    for flavor in flavors:
        need = instance_need(flavor)
        if offered is not None and flavor.id not in offered:
            options.append(FlavorOption(flavor, False, f"not offered in pool {pool.name}"))
        elif not any(flavor_fits_node(node, flavor) for node in nodes):
            options.append(FlavorOption(flavor, False, _unavailable_reason(pool, nodes, flavor)))
        elif any(room.covers(need) and flavor_fits_node(node, flavor) for node, room in zip(nodes, free, strict=True)):
            options.append(FlavorOption(flavor, True))
        else:
            options.append(FlavorOption(flavor, False, _full_reason(pool, free, need)))
    return options


def _full_reason(pool: ResourcePool, free: list[Resources], need: Resources) -> str:
    roomiest = max(free, key=lambda room: (room.cpus, room.memory_mib))
    return (
        f"pool {pool.name} is full: {cpus_text(max(roomiest.cpus, Decimal(0)))} vCPU and "
        f"{memory_text(max(roomiest.memory_mib, 0))} free on its roomiest engine, "
        f"{cpus_text(need.cpus)} vCPU and {memory_text(need.memory_mib)} needed"
    )


# --- Capacity accounting ----------------------------------------------------------
# What a node can give is its engine's CPU and memory times its pool's
# overcommit ratios, and the GPUs its operator declared. What it has given is
# the sum, over every Instance row placed on it, of the instance's flavor plus
# a fixed per-instance overhead (settings.INSTANCE_OVERHEAD_*). Every row
# counts, whatever its state: a row exists from placement until its service is
# deleted, and a Stopped or Failed service keeps its rows (and their nodes) to
# start on again.


@dataclass(frozen=True)
class Resources:
    """An amount of CPU, memory and GPUs: what a node has, gives or has left."""

    cpus: Decimal = Decimal(0)
    memory_mib: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory_mib + other.memory_mib, self.gpus + other.gpus)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.memory_mib - other.memory_mib, self.gpus - other.gpus)

    def __mul__(self, count: int) -> Resources:
        return Resources(self.cpus * count, self.memory_mib * count, self.gpus * count)

    def covers(self, need: Resources) -> bool:
        """Whether this much is enough for `need`, in every resource."""
        return self.cpus >= need.cpus and self.memory_mib >= need.memory_mib and self.gpus >= need.gpus


def instance_overhead() -> Resources:
    return Resources(
        cpus=Decimal(str(settings.INSTANCE_OVERHEAD_CPUS)), memory_mib=settings.INSTANCE_OVERHEAD_MEMORY_MIB
    )


def instance_need(flavor: Flavor) -> Resources:
    """What one instance of the flavor takes from its node: the flavor plus the overhead."""
    return Resources(flavor.cpus, flavor.memory_mib, flavor.gpus) + instance_overhead()


def node_total(node: Node, pool: ResourcePool) -> Resources:
    """What the node can give: its engine's last-read CPU and memory times the
    pool's overcommit, and its declared GPUs (never overcommitted)."""
    return Resources(
        cpus=Decimal(node.cpu_count) * pool.cpu_overcommit,
        # Whole MiB, rounded down: never more than the ratio allows.
        memory_mib=int(node.memory_mib * pool.memory_overcommit),
        gpus=node.gpu_count,
    )


def _percent(used: Decimal | int, total: Decimal | int) -> int:
    """How full, 0-100, for a bar: a node that holds anything but has nothing is full."""
    if total <= 0:
        return 100 if used > 0 else 0
    return max(0, min(100, round(Decimal(used) * 100 / Decimal(total))))


@dataclass(frozen=True)
class Usage:
    """Total and used resources; `free` may be negative when more was placed
    than there is (its overcommit was lowered, or its engine shrank)."""

    total: Resources
    used: Resources

    @property
    def free(self) -> Resources:
        return self.total - self.used

    @property
    def cpu_percent(self) -> int:
        return _percent(self.used.cpus, self.total.cpus)

    @property
    def memory_percent(self) -> int:
        return _percent(self.used.memory_mib, self.total.memory_mib)

    @property
    def gpu_percent(self) -> int:
        return _percent(self.used.gpus, self.total.gpus)

    @property
    def is_cpu_over(self) -> bool:
        return self.used.cpus > self.total.cpus

    @property
    def is_memory_over(self) -> bool:
        return self.used.memory_mib > self.total.memory_mib

    @property
    def is_gpu_over(self) -> bool:
        return self.used.gpus > self.total.gpus


@dataclass(frozen=True)
class NodeCapacity(Usage):
    """One node's capacity, what its instances use, and (Usage.free) what is left."""

    node: Node
    instance_count: int


def node_capacity_list(nodes: Iterable[Node], pool: ResourcePool | None = None) -> list[NodeCapacity]:
    """The capacity, use and free room of each node, in the nodes' order, in one
    query over their Instance rows. The ratios come from `pool` when given (all
    nodes in it), else from each node's own pool (load it with select_related)."""
    nodes = list(nodes)
    usage = {
        row["node_id"]: row
        for row in Instance.objects.filter(node__in=[node.id for node in nodes])
        # No ordering: Instance's default ordering would join it into the GROUP BY.
        .order_by()
        .values("node_id")
        .annotate(
            count=Count("id"),
            cpus=Sum("config__flavor__cpus"),
            memory_mib=Sum("config__flavor__memory_mib"),
            gpus=Sum("config__flavor__gpus"),
        )
    }
    overhead = instance_overhead()
    capacities = []
    for node in nodes:
        row = usage.get(node.id)
        count = row["count"] if row else 0
        flavors = Resources(row["cpus"], row["memory_mib"], row["gpus"]) if row else Resources()
        capacities.append(
            NodeCapacity(
                total=node_total(node, pool or node.pool),
                used=flavors + overhead * count,
                node=node,
                instance_count=count,
            )
        )
    return capacities


def usage_sum(capacities: Iterable[NodeCapacity]) -> Usage:
    """The pool's total over its enabled nodes: a disabled node takes no new
    instances, so its room is not the pool's to offer."""
    total, used = Resources(), Resources()
    for capacity in capacities:
        if capacity.node.is_enabled:
            total, used = total + capacity.total, used + capacity.used
    return Usage(total=total, used=used)


# --- The operators' pool pages ------------------------------------------------------------


@dataclass(frozen=True)
class PoolSummary:
    pool: ResourcePool
    nodes: list[NodeCapacity]
    service_count: int

    @property
    def usage(self) -> Usage:
        return usage_sum(self.nodes)

    @property
    def unreachable_nodes(self) -> list[Node]:
        return [c.node for c in self.nodes if c.node.is_enabled and not c.node.is_reachable]


def pool_summary_list() -> list[PoolSummary]:
    """Every pool, public first, with its nodes' capacity and its number of
    services: four queries however many pools, nodes and instances there are."""
    pools = list(
        ResourcePool.objects.select_related("owner")
        .annotate(service_count=Count("services"))
        .prefetch_related("nodes", "flavors")
        .order_by("-is_public", "name")
    )
    # The nodes' pools come from the prefetch, which sets each node's `pool`.
    nodes = [node for pool in pools for node in pool.nodes.all()]
    capacities = {capacity.node.id: capacity for capacity in node_capacity_list(nodes)}
    return [
        PoolSummary(
            pool=pool,
            nodes=[capacities[node.id] for node in pool.nodes.all()],
            service_count=pool.service_count,
        )
        for pool in pools
    ]


def pool_get(pool_id: int) -> ResourcePool:
    """One pool for the operators' pages (views check that the user is staff), or 404."""
    return get_object_or_404(ResourcePool.objects.select_related("owner"), id=pool_id)


def node_get(node_id: int) -> Node:
    return get_object_or_404(Node.objects.select_related("pool"), id=node_id)


@dataclass(frozen=True)
class PlacedInstance:
    """One instance on a node, as a segment of the node's bars."""

    instance: Instance
    need: Resources
    # Its share of the node's total, 0-100, for the width of its segment.
    cpu_percent: Decimal
    memory_percent: Decimal
    # The same for every instance of one service, so its segments look alike.
    color: int

    @property
    def label(self) -> str:
        service = self.instance.service
        return (
            f"{service.name} #{self.instance.index} ({service.owner.get_username()}): "
            f"{cpus_text(self.need.cpus)} vCPU, {memory_text(self.need.memory_mib)}"
        )


@dataclass(frozen=True)
class NodeDetail:
    capacity: NodeCapacity
    instances: list[PlacedInstance]

    @property
    def node(self) -> Node:
        return self.capacity.node


@dataclass(frozen=True)
class PoolDetail:
    pool: ResourcePool
    nodes: list[NodeDetail]
    # Each annotated with instance_total.
    services: Sequence[Service]
    offered_flavors: list[Flavor]

    @property
    def usage(self) -> Usage:
        return usage_sum(detail.capacity for detail in self.nodes)


# How many colors the bars' segments cycle through (static/console.css .segment-N).
SEGMENT_COLORS = 6


def _share(part: Decimal | int, whole: Decimal | int) -> Decimal:
    return Decimal(part) * 100 / Decimal(whole) if whole > 0 else Decimal(0)


def pool_detail(pool: ResourcePool) -> PoolDetail:
    """The pool's nodes with their capacity and placed instances, its services
    and the flavors it offers (every flavor when it offers every one)."""
    nodes = list(pool.nodes.all())
    for node in nodes:
        node.pool = pool
    placed: dict[int, list[Instance]] = {node.id: [] for node in nodes}
    for instance in (
        Instance.objects.filter(node__in=nodes)
        .select_related("service__owner", "config__flavor")
        .order_by("service__name", "config__position", "index")
    ):
        placed[instance.node_id].append(instance)
    services = list(
        Service.objects.filter(Q(pool=pool) | Q(second_pool=pool))
        .select_related("owner")
        .annotate(instance_total=Count("instances"))
        .order_by("name", "owner__username")
    )
    colors = {service.id: index % SEGMENT_COLORS for index, service in enumerate(services)}
    details = []
    for capacity in node_capacity_list(nodes, pool):
        segments = []
        for instance in placed[capacity.node.id]:
            need = instance_need(instance.config.flavor)
            segments.append(
                PlacedInstance(
                    instance=instance,
                    need=need,
                    cpu_percent=_share(need.cpus, capacity.total.cpus),
                    memory_percent=_share(need.memory_mib, capacity.total.memory_mib),
                    color=colors.get(instance.service_id, 0),
                )
            )
        details.append(NodeDetail(capacity=capacity, instances=segments))
    flavors = list(Flavor.objects.all() if pool.offers_every_flavor else pool.flavors.all())
    return PoolDetail(pool=pool, nodes=details, services=services, offered_flavors=flavors)


def cpus_text(cpus: Decimal) -> str:
    """vCPUs as people read them: 16, 2.5, 0.15 (at most two decimals)."""
    # normalize() alone turns 10.00 into 1E+1; ":f" keeps it plain.
    return f"{cpus.quantize(Decimal('0.01')).normalize():f}"


def pool_user_choices() -> list[str]:
    """Usernames an operator may dedicate a pool to (active users)."""
    return list(get_user_model().objects.filter(is_active=True).order_by("username").values_list("username", flat=True))
