"""Writes that operators ask for on the pool pages: pools and their nodes.

Each validates what needs other rows, then writes inside a transaction. The
deletes lock the row first: a service or instance written at the same time
takes a key-share lock on the row it points at, so either it commits first
and the delete sees it and refuses, or it waits for the delete and fails.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone
from django.utils.text import slugify

from pools.models import Node, PoolKind, ResourcePool
from pools.quotas import dedication_problems, limits_problems, owner_lock
from pools.selectors import node_capacity_list
from pools.validation import NodeChange, NodeRequest, PoolRequest
from services import runtime
from services.models import Service
from services.runtime import swarm
from services.validation import RequestInvalid

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# A refusal names at most this many services, then says how many more.
NAMES_SHOWN = 10


class ActionRefused(Exception):
    """The action makes no sense in the pool's or node's current state; the message says why."""


def _service_names(services: list[Service]) -> str:
    """ "fraud-check (alice), ocr (bob) and 3 more": names are unique per owner only."""
    shown = [f"{service.name} ({service.owner.get_username()})" for service in services[:NAMES_SHOWN]]
    more = len(services) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _name_taken(name: str) -> RequestInvalid:
    return RequestInvalid({"name": [f"A pool named {name} exists already; choose another name."]})


# --- Pools -----------------------------------------------------------------------------


def pool_create(*, request: PoolRequest) -> ResourcePool:
    """Store a new pool: a pool of engines with no nodes yet, or a Swarm pool
    with the nodes its manager lists. Nothing is stored when the manager does
    not answer as one. Not repeatable: the name is unique."""
    if ResourcePool.objects.filter(name=request.name).exists():
        raise _name_taken(request.name)
    swarm_nodes: list[swarm.SwarmNode] = []
    if request.kind == PoolKind.SWARM:
        swarm_nodes = _swarm_nodes_of_new_pool(request.manager_url)
    try:
        with transaction.atomic():
            pool = ResourcePool.objects.create(
                name=request.name,
                description=request.description,
                is_public=request.owner is None,
                owner=request.owner,
                cpu_overcommit=request.cpu_overcommit,
                memory_overcommit=request.memory_overcommit,
                offers_every_flavor=request.offers_every_flavor,
                kind=request.kind,
                manager_url=request.manager_url,
            )
            pool.flavors.set(request.flavors)
            if swarm_nodes:
                if request.owner is not None:
                    _swarm_quota_check(request.owner, swarm_nodes)
                swarm_nodes_record(pool=pool, nodes=swarm_nodes, now=timezone.now())
    except IntegrityError:
        # Another operator created the same name a moment ago.
        raise _name_taken(request.name) from None
    return pool


def pool_update(*, pool: ResourcePool, request: PoolRequest) -> ResourcePool:
    """Change a pool's name, description, owner, ratios and flavors. Safe to repeat.

    A pool may be dedicated to a user only while every service in it is
    theirs: a dedicated pool is for its owner alone. Lowering a ratio is
    allowed even below what is placed; the pages then show the node as over.
    """
    try:
        with transaction.atomic():
            locked = ResourcePool.objects.select_for_update().get(id=pool.id)
            if ResourcePool.objects.filter(name=request.name).exclude(id=locked.id).exists():
                raise _name_taken(request.name)
            if request.owner is not None:
                owner_lock(request.owner)
                if problems := pool_owner_problems(locked, request.owner):
                    raise RequestInvalid({"owner": problems})
            locked.name = request.name
            locked.description = request.description
            locked.is_public = request.owner is None
            locked.owner = request.owner
            locked.cpu_overcommit = request.cpu_overcommit
            locked.memory_overcommit = request.memory_overcommit
            locked.offers_every_flavor = request.offers_every_flavor
            locked.save()
            # The chosen flavors are kept while the pool offers every flavor,
            # so switching back to a chosen list finds them as they were.
            if not request.offers_every_flavor:
                locked.flavors.set(request.flavors)
    except IntegrityError:
        raise _name_taken(request.name) from None
    return locked


def pool_owner_problems(pool: ResourcePool, owner: User) -> list[str]:
    """Why `pool` cannot be dedicated to `owner` ([] when it can): a dedicated
    pool is for its owner alone, so every service in it must be theirs, and
    its nodes must fit their quota (pools.quotas.dedication_problems)."""
    foreign = list(
        Service.objects.filter(Q(pool=pool) | Q(second_pool=pool))
        .exclude(owner=owner)
        .select_related("owner")
        .order_by("name")
    )
    if foreign:
        return [
            f"Pool {pool.name} has services of other users: {_service_names(foreign)}. "
            f"It can be dedicated to {owner.get_username()} only once every service in it is theirs."
        ]
    if pool.owner_id == owner.id:
        return []
    return dedication_problems(pool, owner)


def pool_delete(*, pool: ResourcePool) -> None:
    """Delete a pool and its nodes in one transaction, or refuse, naming the
    services still in it (or placed on its nodes). Deleting a deleted pool is
    refused too, so a second click says what happened."""
    with transaction.atomic():
        locked = ResourcePool.objects.select_for_update().filter(id=pool.id).first()
        if locked is None:
            raise ActionRefused(f"Pool {pool.name} was already deleted.")
        # Locked before the check, so an instance being placed on one of them
        # either is seen below or waits and then fails.
        list(Node.objects.select_for_update().filter(pool=locked))
        services = list(
            Service.objects.filter(Q(pool=locked) | Q(second_pool=locked) | Q(instances__node__pool=locked))
            .select_related("owner")
            .distinct()
            .order_by("name")
        )
        if services:
            raise ActionRefused(
                f"Pool {locked.name} still has {len(services)} service{'s' if len(services) != 1 else ''}: "
                f"{_service_names(services)}. Their owners delete them first; then the pool can go."
            )
        try:
            Node.objects.filter(pool=locked).delete()
            locked.delete()
        except ProtectedError:
            # Only a row the check could not see: one committed by a transaction that began earlier.
            raise ActionRefused(f"Pool {locked.name} just got a service; reload the page to see it.") from None


def _swarm_nodes_of_new_pool(manager_url: str) -> list[swarm.SwarmNode]:
    """The nodes of the swarm a new pool is to manage, or RequestInvalid."""
    if (pool := ResourcePool.objects.filter(manager_url=manager_url).first()) is not None:
        raise RequestInvalid(
            {"manager_url": [f"This swarm is pool {pool.name} already; a swarm can be one pool only."]}
        )
    if (node := Node.objects.filter(docker_host=manager_url).select_related("pool").first()) is not None:
        # Its engine would offer its CPU and memory twice.
        raise RequestInvalid(
            {
                "manager_url": [
                    f"This engine is node {node.name} of pool {node.pool.name}; an engine can be in one pool only."
                ]
            }
        )
    try:
        nodes = swarm.swarm_nodes(manager_url)
    except runtime.EngineError as exc:
        raise RequestInvalid(
            {
                "manager_url": [
                    f"{exc}. Nothing was saved: check the URL and that it is a manager of a swarm, then try again."
                ]
            }
        ) from None
    if not nodes:
        raise RequestInvalid({"manager_url": ["The swarm lists no node. Nothing was saved."]})
    return nodes


def _swarm_quota_check(owner: User, nodes: list[swarm.SwarmNode]) -> None:
    """A dedicated pool takes its owner's quota for its nodes, as node_add does
    for an engine: the swarm's nodes all at once."""
    owner_lock(owner)
    vcpus = sum(node.cpu_count for node in nodes)
    if problems := limits_problems(owner, is_public=False, node_vcpus=vcpus, for_operator=True):
        raise RequestInvalid(
            {
                "owner": [
                    f"The swarm's {len(nodes)} node(s) have {vcpus} vCPUs; {owner.get_username()} is short of quota. {problems[0]}"
                ]
            }
        )


# Why a node that joined a dedicated pool's swarm later is not used; the
# reconcile loop keeps this reason on the node until an operator enables it.
OVER_QUOTA_REASON = "Not used: it joined the swarm after the pool was created and"


def swarm_nodes_record(*, pool: ResourcePool, nodes: list[swarm.SwarmNode], now: datetime) -> None:
    """Make the pool's Node rows say what its swarm's manager listed: CPUs,
    memory, address, availability, and whether each node is ready. A node that
    left the swarm stays, unreachable, until an operator removes it (its
    instances' rows may point at it). A node that joins a dedicated pool's
    swarm later takes its owner's quota as an added engine would; when that
    does not fit, it is recorded disabled, saying why. Safe to repeat."""
    with transaction.atomic():
        known = {node.swarm_node_id: node for node in Node.objects.select_for_update().filter(pool=pool)}
        for listed in nodes:
            fields = {
                "docker_host": pool.manager_url,
                "cpu_count": listed.cpu_count,
                "memory_mib": listed.memory_mib,
                "address": listed.address[:100],
                "availability": listed.availability[:16],
                "is_reachable": listed.state == "ready",
                "last_error": "" if listed.state == "ready" else f"the swarm says the node is {listed.state}",
                "checked_at": now,
            }
            row = known.pop(listed.node_id, None)
            if row is not None:
                if not row.is_enabled and row.last_error.startswith(OVER_QUOTA_REASON):
                    del fields["last_error"]
                Node.objects.filter(id=row.id).update(**fields)
                continue
            over_quota = _swarm_node_over_quota(pool, listed)
            if over_quota:
                fields["last_error"] = over_quota[:300]
            Node.objects.create(
                pool=pool,
                name=_swarm_node_name(pool, listed),
                swarm_node_id=listed.node_id,
                is_enabled=not over_quota,
                **fields,
            )
        for gone in known.values():
            Node.objects.filter(id=gone.id).update(
                is_reachable=False, last_error="the node is no longer in the swarm", checked_at=now
            )


def _swarm_node_over_quota(pool: ResourcePool, listed: swarm.SwarmNode) -> str:
    """Why a newly listed node of a dedicated pool may not take its owner's quota ("" when it may)."""
    if pool.is_public or pool.owner is None:
        return ""
    owner_lock(pool.owner)
    problems = limits_problems(pool.owner, is_public=False, node_vcpus=listed.cpu_count, for_operator=True)
    if not problems:
        return ""
    return (
        f"{OVER_QUOTA_REASON} its {listed.cpu_count} vCPUs would pass {pool.owner.get_username()}'s quota. "
        f"{problems[0]} Enable it once there is room."
    )


def swarm_pool_unreachable(*, pool: ResourcePool, reason: str, now: datetime) -> None:
    """The manager did not answer: the pool's nodes are not offered until it does."""
    Node.objects.filter(pool=pool).update(is_reachable=False, last_error=reason[:300], checked_at=now)


def _swarm_node_name(pool: ResourcePool, listed: swarm.SwarmNode) -> str:
    """`<pool>-<hostname>`, with the swarm's node ID added when that is taken."""
    base = slugify(f"{pool.name}-{listed.hostname}")[:64] or f"{pool.name}-node"
    if not Node.objects.filter(name=base).exists():
        return base
    return f"{base[: 64 - 13]}-{listed.node_id[:12].lower()}"


# --- Nodes -----------------------------------------------------------------------------


def node_add(*, pool: ResourcePool, request: NodeRequest) -> Node:
    """Read the engine's CPU and memory, then store the node, enabled and
    reachable. Nothing is stored when the engine does not answer. Not
    repeatable: node names, and engines, are unique."""
    if pool.is_swarm:
        raise ActionRefused(f"Pool {pool.name} is a Swarm pool: its nodes are the swarm's, read from its manager.")
    errors: dict[str, list[str]] = {}
    if (named := Node.objects.filter(name=request.name).select_related("pool").first()) is not None:
        errors["name"] = [
            f"A node named {request.name} exists already (in pool {named.pool.name}); node names are unique."
        ]
    if (same := Node.objects.filter(docker_host=request.docker_host).select_related("pool").first()) is not None:
        # Two nodes on one engine would offer its CPU and memory twice.
        errors["docker_host"] = [
            f"This engine is node {same.name} of pool {same.pool.name} already; an engine can be one node only."
        ]
    if errors:
        raise RequestInvalid(errors)
    try:
        info = runtime.engine_info(request.docker_host)
    except runtime.EngineError as exc:
        raise RequestInvalid(
            {
                "docker_host": [
                    f"{exc}. Nothing was saved: check the URL and that the engine runs, then add the node again."
                ]
            }
        ) from None
    try:
        with transaction.atomic():
            if pool.owner is not None:
                # A dedicated pool takes its owner's quota for its nodes.
                owner_lock(pool.owner)
                problems = limits_problems(
                    pool.owner,
                    is_public=False,
                    node_vcpus=info.cpu_count,
                    node_gpus=request.gpu_count,
                    for_operator=True,
                )
                if problems:
                    owner = pool.owner.get_username()
                    raise RequestInvalid(
                        {"docker_host": [f"The pool's owner {owner} is short of quota. {problems[0]}"]}
                    )
            return Node.objects.create(
                pool=pool,
                name=request.name,
                docker_host=request.docker_host,
                gpu_count=request.gpu_count,
                cpu_count=info.cpu_count,
                memory_mib=info.memory_mib,
                is_reachable=True,
                is_enabled=True,
                checked_at=timezone.now(),
            )
    except IntegrityError:
        raise RequestInvalid({"name": [f"A node named {request.name} exists already; choose another name."]}) from None


def node_update(*, node: Node, change: NodeChange) -> Node:
    """Enable or disable a node and set its declared GPUs. Safe to repeat.

    The GPUs cannot drop below what its instances use: those instances would
    hold GPUs the node no longer declares."""
    with transaction.atomic():
        locked = Node.objects.select_for_update(of=("self",)).select_related("pool").get(id=node.id)
        used = node_capacity_list([locked])[0].used.gpus
        if change.gpu_count < used:
            raise RequestInvalid(
                {
                    "gpu_count": [
                        f"The instances on {locked.name} use {used} GPU{'s' if used != 1 else ''}; "
                        "declare at least that many."
                    ]
                }
            )
        updates: dict[str, object] = {"is_enabled": change.is_enabled, "gpu_count": change.gpu_count}
        if change.is_enabled and not locked.is_enabled and locked.swarm_node_id and locked.pool.owner is not None:
            # A Swarm node held back by the quota (swarm_nodes_record) takes it when enabled.
            owner = locked.pool.owner
            owner_lock(owner)
            if problems := limits_problems(owner, is_public=False, node_vcpus=locked.cpu_count, for_operator=True):
                raise RequestInvalid({"is_enabled": [f"{owner.get_username()} is short of quota. {problems[0]}"]})
            if locked.last_error.startswith(OVER_QUOTA_REASON):
                updates["last_error"] = ""
        Node.objects.filter(id=locked.id).update(**updates)
    locked.is_enabled, locked.gpu_count = change.is_enabled, change.gpu_count
    return locked


def node_remove(*, node: Node) -> None:
    """Delete a node, or refuse while instances are placed on it, naming their services."""
    with transaction.atomic():
        locked = Node.objects.select_for_update().filter(id=node.id).first()
        if locked is None:
            raise ActionRefused(f"Node {node.name} was already removed.")
        services = list(
            Service.objects.filter(instances__node=locked).select_related("owner").distinct().order_by("name")
        )
        if services:
            raise ActionRefused(
                f"Node {locked.name} still holds instances of {_service_names(services)}; they stay placed "
                "until their services are deleted. Disable the node so that no new instance lands on it."
            )
        try:
            locked.delete()
        except ProtectedError:
            raise ActionRefused(f"Node {locked.name} just got an instance; reload the page to see it.") from None
