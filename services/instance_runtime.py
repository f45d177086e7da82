"""Where an instance runs, whatever kind its pool is: the engine calls of the
lifecycle and the reconcile loop, by Instance row.

A pool of Docker engines runs one container per instance, which the console
places, starts and restarts (services.runtime). A Swarm pool runs one Swarm
service per version configuration, with replicas = its compute nodes
(services.runtime.swarm): Swarm places and restarts the tasks, and the
instance of index i is the task in slot i + 1, wherever Swarm put it. Its row
follows the task: node, port, container. Nothing above this module asks which
kind a pool is.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from django.conf import settings
from django.db import connections

from pools.models import Node, PoolKind
from services import runtime
from services.models import Instance, Service, ServiceVersionConfig
from services.placement import container_name_for
from services.runtime import swarm

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

# Tasks of one slot that failed before a deploy gives up on it (Swarm would
# go on replacing them for as long as the service exists).
SWARM_FAILED_TASKS_LIMIT = 3
_FAILED_TASK_STATES = ("failed", "rejected")


def in_parallel(function: Callable[[Item], Result], items: list[Item]) -> list[Result]:
    """function(item) for every item, on up to 16 threads; results in the items' order."""
    if len(items) <= 1:
        return [function(item) for item in items]

    def run(item: Item) -> Result:
        try:
            return function(item)
        finally:
            # A pool thread that touched the database has its own connection;
            # close it, or it stays open until garbage collection finds it.
            connections.close_all()

    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(run, items))


# --- Specs ---------------------------------------------------------------------------


def container_hardening() -> runtime.ContainerHardening:
    """The operator's container limits (settings CONTAINER_*)."""
    return runtime.ContainerHardening(
        pids_limit=settings.CONTAINER_PIDS_LIMIT,
        capabilities=tuple(settings.CONTAINER_CAPABILITIES),
        no_new_privileges=settings.CONTAINER_NO_NEW_PRIVILEGES,
        tmp_mib=settings.CONTAINER_TMP_MIB,
        log_max_size_mib=settings.CONTAINER_LOG_MAX_SIZE_MIB,
        log_max_files=settings.CONTAINER_LOG_MAX_FILES,
    )


def _labels(service_id: uuid.UUID | str, config: ServiceVersionConfig) -> dict[str, str]:
    version = config.app_version
    return {
        runtime.LABEL_MANAGED: "1",
        runtime.LABEL_CONSOLE: settings.CONSOLE_ID,
        runtime.LABEL_SERVICE: str(service_id),
        runtime.LABEL_CONFIG: str(config.id),
        runtime.LABEL_VERSION: f"{version.application.name}:{version.version}",
    }


def container_spec(service: Service, instance: Instance) -> runtime.ContainerSpec:
    """What an engine should run for one instance: image, limits, labels, port."""
    config = instance.config
    version = config.app_version
    return runtime.ContainerSpec(
        name=instance.container_name,
        image=version.image,
        container_port=version.container_port,
        cpus=float(config.flavor.cpus),
        memory_mib=config.flavor.memory_mib,
        environment={str(k): str(v) for k, v in (config.envs or {}).items()},
        labels={**_labels(service.id, config), runtime.LABEL_INSTANCE: str(instance.index)},
        publish_host=settings.INSTANCE_HOST,
        hardening=container_hardening(),
        network=service_network_spec(service.id, instance.node.docker_host),
    )


def service_network_spec(service_id: uuid.UUID | str, docker_host: str = "") -> runtime.NetworkSpec:
    """The service's own bridge network on each engine it runs on: one name on
    every engine, and a Linux bridge named after the engine too, since two
    engines on one host share one set of interfaces (a bridge of the same name
    would be taken over by the second). The bridge's name says the egress
    policy (`rtsa…` may reach the outside world, `rtsd…` may not), which
    scripts/engine-firewall.sh enforces on each engine host."""
    name = f"rts-{settings.CONSOLE_ID}-{service_id}"
    prefix = "rtsd" if settings.CONTAINER_EGRESS == "deny" else "rtsa"
    return runtime.NetworkSpec(
        name=name,
        bridge_name=prefix + hashlib.sha256(f"{name} {docker_host}".encode()).hexdigest()[:11],
        labels={
            runtime.LABEL_MANAGED: "1",
            runtime.LABEL_CONSOLE: settings.CONSOLE_ID,
            runtime.LABEL_SERVICE: str(service_id),
        },
    )


def swarm_service_name(service_id: uuid.UUID | str, config_id: int) -> str:
    """The Swarm service a configuration creates: its instances' container names without the index."""
    return f"rts-{service_id}-{config_id}"


def config_swarm_name(config: ServiceVersionConfig) -> str:
    """The Swarm service that runs the configuration's instances: its own, or
    the one it took over by a rolling update (and keeps for the next one)."""
    return config.swarm_service or swarm_service_name(config.service_id, config.id)


def rolls_over(service: Service, replaced: ServiceVersionConfig) -> str:
    """The Swarm service a configuration replacing `replaced` (the same
    version, other settings) takes over by Swarm's own rolling update; "" when
    the service does not run on a Swarm pool, and the new one gets its own."""
    if service.pool.kind != PoolKind.SWARM or service.second_pool_id is not None:
        return ""
    return config_swarm_name(replaced)


def version_service_spec(service: Service, config: ServiceVersionConfig) -> swarm.VersionServiceSpec:
    """What a swarm should run for one configuration: the flavor as limits, and
    as reservations the flavor divided by the pool's overcommit (so a pool's
    overcommit means on Swarm what it means on engines)."""
    version = config.app_version
    flavor = config.flavor
    pool = service.pool
    return swarm.VersionServiceSpec(
        name=config_swarm_name(config),
        image=version.image,
        container_port=version.container_port,
        replicas=config.instance_count,
        cpus=float(flavor.cpus),
        memory_mib=flavor.memory_mib,
        cpu_reservation=float(flavor.cpus / pool.cpu_overcommit),
        memory_reservation_mib=int(Decimal(flavor.memory_mib) / pool.memory_overcommit),
        environment={str(k): str(v) for k, v in (config.envs or {}).items()},
        labels=_labels(service.id, config),
        hardening=container_hardening(),
        health_path=version.health_path,
        network=service_swarm_network(service.id),
    )


def service_swarm_network(service_id: uuid.UUID | str) -> swarm.ServiceNetwork:
    """The service's own overlay network on a swarm: the name and labels of its
    bridge network on engines (egress on a swarm is the node's firewall's, see
    scripts/engine-firewall.sh)."""
    network = service_network_spec(service_id)
    return swarm.ServiceNetwork(name=network.name, labels=network.labels)


# --- Where an instance is --------------------------------------------------------------


def is_on_swarm(instance: Instance) -> bool:
    # Only a Swarm pool's nodes have a swarm node ID: no query for the pool.
    return bool(instance.node.swarm_node_id)


def instance_address(instance: Instance) -> str:
    """Where the instance's published port answers: its Swarm node's address, or
    INSTANCE_HOST (engines publish on it)."""
    return instance.node.address or settings.INSTANCE_HOST


def _swarm_name_of(instance: Instance) -> str:
    return config_swarm_name(instance.config)


@dataclass(frozen=True)
class TaskPlace:
    """Where a Swarm instance's current task runs, as its row should say."""

    node: Node | None  # None: not scheduled yet, or on a node the console does not know
    info: runtime.ContainerInfo


def task_instance_name(task: swarm.SwarmTask) -> str:
    """The container name of the instance a task runs: the configuration its
    labels name, the index its slot gives. During a rolling update a slot has
    a task of the old configuration and one of the new, each its own instance."""
    service_id, config_id = task.labels.get(runtime.LABEL_SERVICE), task.labels.get(runtime.LABEL_CONFIG)
    if task.slot is None:
        return ""
    if service_id and config_id and config_id.isdigit():
        return container_name_for(service_id, int(config_id), task.slot - 1)
    return f"{task.service_name}-{task.slot - 1}"


def swarm_places(pool_id: int, tasks: list[swarm.SwarmTask], names: set[str]) -> dict[str, TaskPlace]:
    """The task Swarm wants running for each instance of the named Swarm
    services, by instance container name (task_instance_name), from one task list."""
    nodes = {node.swarm_node_id: node for node in Node.objects.filter(pool_id=pool_id).exclude(swarm_node_id="")}
    places: dict[str, TaskPlace] = {}
    for task in tasks:
        if task.service_name not in names or task.slot is None or task.desired_state != "running":
            continue
        name = task_instance_name(task)
        if name in places and places[name].info.is_running:
            continue  # the slot's running task wins over one still starting
        info = runtime.ContainerInfo(
            name=name,
            container_id=task.container_id,
            state="running" if task.is_running else (task.state or "pending"),
            labels=task.labels,
            host_port=task.host_port,
            error=task.error,
        )
        places[name] = TaskPlace(nodes.get(task.node_id), info)
    return places


def instance_follow(instance: Instance, place: TaskPlace) -> None:
    """Make a Swarm instance's row say where its task runs now (node, port, container)."""
    changes: dict[str, object] = {}
    if place.node is not None and place.node.id != instance.node_id:
        changes["node"] = place.node
        instance.node = place.node
    if place.info.host_port != instance.host_port:
        changes["host_port"] = place.info.host_port
        instance.host_port = place.info.host_port
    if place.info.container_id and place.info.container_id != instance.container_id:
        changes["container_id"] = place.info.container_id
        instance.container_id = place.info.container_id
    if changes:
        Instance.objects.filter(id=instance.id).update(**changes)


# --- Start, stop, remove -----------------------------------------------------------------


def instances_start(service: Service, instances: list[Instance]) -> list[runtime.ContainerInfo]:
    """Create (or adopt) and start every instance: a container each on engines;
    on Swarm, the configuration's Swarm service (Swarm starts the tasks; an
    instance whose task has no port yet comes back without one)."""
    on_engines = [instance for instance in instances if not is_on_swarm(instance)]
    on_swarm = [instance for instance in instances if is_on_swarm(instance)]
    started: dict[str, runtime.ContainerInfo] = {}

    def start(instance: Instance) -> runtime.ContainerInfo:
        return runtime.ensure_container_running(instance.node.docker_host, container_spec(service, instance))

    # Each start creates the service's network when it is missing; runtime
    # tolerates two starts racing to create it.
    for instance, info in zip(on_engines, in_parallel(start, on_engines), strict=True):
        started[instance.container_name] = info
    if on_swarm:
        manager_url = on_swarm[0].node.docker_host
        configs = {instance.config_id: instance.config for instance in on_swarm}
        for config in configs.values():
            spec = version_service_spec(service, config)
            if config.swarm_service:
                # Taken over from the configuration it replaces: Swarm rolls all
                # of its tasks at once, the old ones staying until their
                # replacements are healthy. (Started again after a stop, it is created.)
                swarm.rolling_update_start(manager_url, spec, parallelism=spec.replicas)
            else:
                swarm.ensure_version_service(manager_url, spec)
        tasks = swarm.list_managed_tasks(manager_url, settings.CONSOLE_ID)
        places = swarm_places(service.pool_id, tasks, {_swarm_name_of(i) for i in on_swarm})
        for instance in on_swarm:
            place = places.get(instance.container_name)
            if place is None:
                started[instance.container_name] = runtime.ContainerInfo(instance.container_name, "", "pending")
                continue
            instance_follow(instance, place)
            started[instance.container_name] = place.info
    return [started[instance.container_name] for instance in instances]


def instances_stop(instances: list[Instance]) -> None:
    """Stop every instance: engines keep the stopped containers; a swarm drops the Swarm services."""
    in_parallel(lambda i: runtime.stop_container(i.node.docker_host, i.container_name), _engines(instances))
    for manager_url, name in _swarm_services(instances):
        swarm.remove_version_service(manager_url, name)


def instances_remove(instances: list[Instance]) -> None:
    """Remove every instance's container (a swarm: each of their configurations'
    Swarm service, so pass every instance of a configuration). Raises EngineError."""
    in_parallel(lambda i: runtime.remove_container(i.node.docker_host, i.container_name), _engines(instances))
    for manager_url, name in _swarm_services(instances):
        swarm.remove_version_service(manager_url, name)


def instance_remove_one(instance: Instance) -> None:
    """Remove a single instance beyond its configuration's count. On Swarm the
    count is the Swarm service's replicas, which the next start sets."""
    if not is_on_swarm(instance):
        runtime.remove_container(instance.node.docker_host, instance.container_name)


def networks_remove(service_id: uuid.UUID | str, instances: list[Instance]) -> None:
    """Remove the service's own network from each engine it ran on. On a swarm,
    its overlay network goes only once the tasks Swarm is still stopping have
    left it: the reconcile loop removes it then, if it is not gone already."""
    network = service_network_spec(service_id).name
    for docker_host in sorted({instance.node.docker_host for instance in _engines(instances)}):
        runtime.remove_network(docker_host, network)
    for manager_url in sorted({instance.node.docker_host for instance in instances if is_on_swarm(instance)}):
        try:
            swarm.remove_network(manager_url, network)
        except runtime.EngineError as exc:
            log.info("the overlay network %s stays until its tasks have stopped: %s", network, exc)


def _engines(instances: Iterable[Instance]) -> list[Instance]:
    return [instance for instance in instances if not is_on_swarm(instance)]


def _swarm_services(instances: Iterable[Instance]) -> list[tuple[str, str]]:
    """The Swarm services of the instances' configurations, but for one another
    configuration of the same service runs in too (a rolling update's old and new)."""
    on_swarm = [instance for instance in instances if is_on_swarm(instance)]
    leaving = {instance.config_id for instance in on_swarm}
    services = {instance.service_id for instance in on_swarm}
    staying = {
        config_swarm_name(config)
        for config in ServiceVersionConfig.objects.filter(service_id__in=services).exclude(id__in=leaving)
    }
    return sorted({(i.node.docker_host, _swarm_name_of(i)) for i in on_swarm if _swarm_name_of(i) not in staying})


def rolling_update_undo(service: Service, configs: list[ServiceVersionConfig]) -> None:
    """Put back, by another rolling update, the configuration each of `configs`
    (new ones that took a Swarm service over) replaced, unless Swarm has
    rolled back by itself already. Raises EngineError."""
    for config in configs:
        if not config.swarm_service:
            continue
        replaced = next(
            (
                other
                for other in service.configs.select_related("app_version__application", "flavor").exclude(id=config.id)
                if config_swarm_name(other) == config.swarm_service
            ),
            None,
        )
        if replaced is None:
            continue
        spec = version_service_spec(service, replaced)
        swarm.rolling_update_start(service.pool.manager_url, spec, parallelism=spec.replicas)


def rolling_update_verdict(service: Service, config: ServiceVersionConfig) -> swarm.SwarmServiceInfo | None:
    """What Swarm says of the rolling update that gave `config` its Swarm service now."""
    return swarm.version_service(service.pool.manager_url, config_swarm_name(config))


# --- Inspect and logs ---------------------------------------------------------------------


def instance_failure(instance: Instance) -> str:
    """Why the instance cannot come up, or "": its container exited or vanished
    (engines), or its slot's tasks keep failing (Swarm). A Swarm instance's row
    follows its task meanwhile, so the next probe uses its current port."""
    if not is_on_swarm(instance):
        info = runtime.inspect_container(instance.node.docker_host, instance.container_name)
        if info is None or info.state in ("exited", "dead"):
            how = "disappeared" if info is None else f"exited with code {info.exit_code}"
            return f"container {instance.container_name} {how}"
        return ""
    manager_url = instance.node.docker_host
    name = _swarm_name_of(instance)
    # Every task, not only the ones Swarm wants running: the slot's failed ones too.
    tasks = swarm.list_managed_tasks(manager_url, settings.CONSOLE_ID, running_only=False)
    place = swarm_places(instance.node.pool_id, tasks, {name}).get(instance.container_name)
    if place is not None and place.info.is_running:
        instance_follow(instance, place)
        return ""
    failed = [
        task
        for task in tasks
        if task.service_name == name
        and task_instance_name(task) == instance.container_name
        and task.state in _FAILED_TASK_STATES
    ]
    slot = instance.index + 1
    if len(failed) >= SWARM_FAILED_TASKS_LIMIT:
        last = failed[0]
        why = last.error or last.message or f"exit code {last.exit_code}"
        return f"Swarm task {name}.{slot} failed {len(failed)} times: {why}"
    current = swarm.version_service(manager_url, name)
    if current is None:
        return f"Swarm service {name} disappeared"
    return swarm_rollback_reason(instance.config, current)


def swarm_rollback_reason(config: ServiceVersionConfig, current: swarm.SwarmServiceInfo | None) -> str:
    """Swarm's reason when it rolled back the rolling update that gave `config`
    its Swarm service (`current`, as the manager lists it now), else "". A
    rollback puts the previous spec and labels back; a rolling update sets the
    new configuration's labels as it starts, so none of its own is mistaken for this."""
    if (
        current is None
        or not config.swarm_service
        or not current.is_rolled_back
        or current.labels.get(runtime.LABEL_CONFIG) == str(config.id)
    ):
        return ""
    return f"Swarm rolled the update of {current.name} back: {current.update_message or current.update_state}"


def instance_logs(instance: Instance, tail: int) -> str:
    """The last lines of the instance's log, read from its engine or its swarm's manager now."""
    if not is_on_swarm(instance):
        return runtime.container_logs(instance.node.docker_host, instance.container_name, tail=tail)
    text = swarm.version_service_logs(instance.node.docker_host, _swarm_name_of(instance), tail=tail)
    prefix = f"{_swarm_name_of(instance)}.{instance.index + 1} "
    return "\n".join(line for line in text.splitlines() if line.startswith(prefix))


def instance_log_excerpt(instance: Instance, tail: int) -> str:
    """The first and last lines of the instance's log, for a failure's event."""
    if not is_on_swarm(instance):
        return runtime.container_log_excerpt(instance.node.docker_host, instance.container_name, tail=tail)
    return instance_logs(instance, tail)
