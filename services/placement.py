"""Placement: which node each new instance runs on, decided inside the
transaction that creates or changes the service.

The pool's nodes are locked first (in id order, so two placements never
deadlock), then each instance goes to the enabled, reachable node with the
most room left that fits it, counting every instance already placed
(pools.selectors.node_capacity_list: flavor plus overhead, against the engine's
capacity times the pool's overcommit). Deploys sent at once to one pool thus
place one after the other and can never overfill a node.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from pools.models import Node, ResourcePool
from pools.selectors import (
    Resources,
    cpus_text,
    flavor_fits_node,
    instance_need,
    memory_text,
    node_capacity_list,
)
from services.models import Instance, Service, ServiceVersionConfig


def container_name_for(service_id: uuid.UUID | str, config_id: int, index: int) -> str:
    """Never used twice: a configuration's id is not reused, so a live update's
    new containers cannot be mistaken for (or adopt) those of one it replaced."""
    return f"rts-{service_id}-{config_id}-{index}"


class PlacementRefused(Exception):
    """The instances do not fit the pool; the message says how far they are from fitting."""

    def __init__(self, message: str, config_index: int) -> None:
        super().__init__(message)
        self.config_index = config_index


def _cpus(value: Decimal) -> str:
    return f"{cpus_text(value)} vCPU" + ("" if value == 1 else "s")


def pool_nodes_locked(pools: list[ResourcePool]) -> list[Node]:
    """The pools' nodes that take new instances, locked until the transaction ends."""
    locked = list(Node.objects.select_for_update().filter(pool__in=pools).order_by("id"))
    return [node for node in locked if node.is_offered]


def instances_place(
    service: Service, configs: list[ServiceVersionConfig], only: set[tuple[int, int]] | None = None
) -> list[Instance]:
    """Create the Instance rows of these configurations (or just the (config id,
    index) pairs in `only`), each on a node with room for it in its pool (with
    multi-pool load balancing, even indexes in the first pool, odd ones in the
    second); PlacementRefused (naming the configuration's index in `configs`)
    when one does not fit. Call inside a transaction."""
    pools = {service.pool_id: service.pool}
    if service.second_pool is not None:
        pools[service.second_pool.id] = service.second_pool
    nodes = pool_nodes_locked(list(pools.values()))
    capacities = [
        capacity
        for pool in pools.values()
        for capacity in node_capacity_list([node for node in nodes if node.pool_id == pool.id], pool)
    ]
    free = {capacity.node.id: capacity.free for capacity in capacities}
    counts = {capacity.node.id: capacity.instance_count for capacity in capacities}
    rows: list[Instance] = []
    for n, config in enumerate(configs):
        need = instance_need(config.flavor)
        for index in range(config.instance_count):
            if only is not None and (config.id, index) not in only:
                continue
            pool = pools[service.pool_for_instance(index)]
            in_pool = [node for node in nodes if node.pool_id == pool.id]
            fitting = [node for node in in_pool if flavor_fits_node(node, config.flavor) and free[node.id].covers(need)]
            if not fitting:
                raise PlacementRefused(_full_message(pool, in_pool, free, need, index, config), n)
            # The most CPU left first, so instances spread over the nodes.
            node = max(fitting, key=lambda node: (free[node.id].cpus, -counts[node.id], node.name))
            free[node.id] = free[node.id] - need
            counts[node.id] += 1
            rows.append(
                Instance(
                    service=service,
                    config=config,
                    index=index,
                    node=node,
                    container_name=container_name_for(service.id, config.id, index),
                )
            )
    return Instance.objects.bulk_create(rows)


def _full_message(
    pool: ResourcePool,
    nodes: list[Node],
    free: dict[int, Resources],
    need: Resources,
    placed: int,
    config: ServiceVersionConfig,
) -> str:
    if not nodes:
        return f"Pool {pool.name} has no engine that is enabled and answering; no instance can be placed now."
    roomiest = max((free[node.id] for node in nodes), key=lambda room: (room.cpus, room.memory_mib))
    fitted = f"; {placed} of its {config.instance_count} instances fit" if placed else ""
    what = f"{_cpus(need.cpus)} and {memory_text(need.memory_mib)}"
    if need.gpus:
        what += f" and {need.gpus} GPU{'s' if need.gpus != 1 else ''}"
    room = f"{_cpus(max(roomiest.cpus, Decimal(0)))} and {memory_text(max(roomiest.memory_mib, 0))}"
    if need.gpus:
        room += f" and {max(roomiest.gpus, 0)} GPUs"
    return (
        f"Pool {pool.name} is full for {config.flavor.code}: an instance needs {what} (with the system overhead), "
        f"the roomiest node has {room} free{fitted}. Choose a smaller specification or fewer compute nodes, "
        "or delete a service in this pool."
    )
