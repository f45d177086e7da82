from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import Count, Q, QuerySet

from pools.models import Flavor, Node, ResourcePool

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
    return [node for node in pool.nodes.all() if node.is_enabled and node.is_reachable]


def _fits(node: Node, flavor: Flavor) -> bool:
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
    """Every flavor, each marked available or not on this pool, with the reason."""
    flavors = list(Flavor.objects.all())
    if pool is None:
        return [FlavorOption(f, False, "no resource pool is selected") for f in flavors]
    nodes = pool_usable_nodes(pool)
    options = []
    for flavor in flavors:
        if any(_fits(node, flavor) for node in nodes):
            options.append(FlavorOption(flavor, True))
        else:
            options.append(FlavorOption(flavor, False, _unavailable_reason(pool, nodes, flavor)))
    return options


def node_pick_for(pool: ResourcePool, flavor: Flavor, extra_load: dict[int, int] | None = None) -> Node | None:
    """The usable node of the pool that fits the flavor and runs the fewest instances."""
    extra_load = extra_load or {}
    candidates = (
        Node.objects.filter(pool=pool, is_enabled=True, is_reachable=True)
        .annotate(instance_total=Count("instances"))
        .order_by("name")
    )
    fitting = [node for node in candidates if _fits(node, flavor)]
    if not fitting:
        return None
    return min(fitting, key=lambda node: (node.instance_total + extra_load.get(node.id, 0), node.name))
