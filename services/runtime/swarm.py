"""Docker Swarm managers: one Swarm service per version configuration of a console service.

Every call goes to a manager's API (`manager_url`), which knows every node,
service and task of its swarm. Services publish their port in host mode, so
each task answers on its node's address at a port of its own (SwarmTask.host_port):
the routing mesh is not used. Each console service has an overlay network of
its own (ServiceNetwork), which its Swarm services join. See docs/swarm-notes.md
for what was measured.

What a Swarm service cannot carry of ContainerHardening (Docker 20.10, API 1.41):
`no_new_privileges` (the field is dropped; only `dockerd --no-new-privileges` on
every node gives it), no swap beyond the memory limit, and a `/tmp` that is
executable (Swarm mounts it noexec).
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
from docker import types as docker_types
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from services.runtime import (
    LABEL_CONFIG,
    LABEL_CONSOLE,
    LABEL_MANAGED,
    ContainerHardening,
    EngineError,
    engine_client,
    forget_client,
)

NANOS_PER_SECOND = 1_000_000_000
BYTES_PER_MIB = 1024 * 1024
STOP_GRACE_SECONDS = 10
# The health check (VersionServiceSpec.health_path): a task counts as running
# only once it passed, and one never healthy is replaced (and fails an update).
HEALTH_INTERVAL_SECONDS = 1
HEALTH_TIMEOUT_SECONDS = 3
HEALTH_RETRIES = 3
HEALTH_START_PERIOD_SECONDS = 30

# How long Swarm watches a new task of a rolling update for a failure (which
# rolls the update back) before it counts it as updated.
ROLLING_UPDATE_MONITOR_SECONDS = 2.0

# Every manager call measured answered within 20 ms (docs/swarm-notes.md); one
# that takes this long is a manager in trouble, reported as not answering.
MANAGER_TIMEOUT_SECONDS = 15

_UNREACHABLE = (RequestsConnectionError, ReadTimeout, FileNotFoundError)
# States of a task whose container has run and exited.
_ENDED_TASK_STATES = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


@dataclass(frozen=True)
class SwarmNode:
    node_id: str
    hostname: str
    # Where the node's host-mode ports answer (its advertise address).
    address: str
    cpu_count: int
    memory_mib: int
    availability: str  # active, pause, drain
    state: str  # ready, down, unknown, disconnected
    is_manager: bool

    @property
    def is_usable(self) -> bool:
        return self.availability == "active" and self.state == "ready"


@dataclass(frozen=True)
class ServiceNetwork:
    """The overlay network of one console service on a swarm: its tasks, of
    every version, reach each other there (the service's name resolves to their
    addresses) and no other service's. Each task also joins the node's
    docker_gwbridge, where its host-mode port is published (Docker sets no
    inter-container traffic on that bridge; scripts/engine-firewall.sh keeps
    tasks there from the host's own addresses)."""

    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class VersionServiceSpec:
    """One Swarm service: the instances of one version configuration of a console service."""

    name: str
    image: str
    container_port: int
    replicas: int
    # Limits (the flavor).
    cpus: float
    memory_mib: int
    # What the scheduler sets aside on a node (the flavor, divided by the pool's overcommit).
    cpu_reservation: float
    memory_reservation_mib: int
    environment: dict[str, str]
    # Put on the service (what task filters match) and on its containers.
    labels: dict[str, str]
    hardening: ContainerHardening = field(default_factory=ContainerHardening)
    restart_delay_seconds: float = 1.0
    # A path answering 200 when the model is ready, e.g. "/health"; None: no
    # health check, and a task is running as soon as its process started.
    # Swarm runs the check inside the container (_health_command says how);
    # an image with a HEALTHCHECK of its own keeps that one.
    health_path: str | None = None
    # None: the engine's default bridge, shared with every other task on the node.
    network: ServiceNetwork | None = None


@dataclass(frozen=True)
class SwarmTask:
    task_id: str
    service_name: str
    # The labels of its service, as the task's container spec carries them.
    labels: dict[str, str]
    # 1…replicas, kept by the task that replaces this one; None outside replicated mode.
    slot: int | None
    node_id: str  # "" while not yet scheduled
    state: str  # new, pending, assigned, …, starting, running, complete, failed, shutdown, rejected, orphaned
    desired_state: str
    error: str
    message: str
    # The published port of IPv4 (the first listed), on the node's address.
    host_port: int | None
    container_id: str
    exit_code: int | None

    @property
    def is_running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class SwarmServiceInfo:
    service_id: str
    name: str
    labels: dict[str, str]
    replicas: int
    # The last rolling update's state, "" when there was none: updating, paused,
    # completed, rollback_started, rollback_paused, rollback_completed.
    update_state: str
    update_message: str

    @property
    def is_rolled_back(self) -> bool:
        return self.update_state in ("rollback_started", "rollback_paused", "rollback_completed")


@contextmanager
def _manager_api(manager_url: str) -> Iterator[docker.APIClient]:
    """The manager's API client; Docker and connection errors leave as EngineError."""
    try:
        yield engine_client(manager_url, timeout=MANAGER_TIMEOUT_SECONDS).api
    except (DockerException, RequestsConnectionError, ReadTimeout, FileNotFoundError) as exc:
        # The SDK wraps a failed connection while negotiating the API version
        # in a plain DockerException; its cause says what really happened.
        if isinstance(exc, _UNREACHABLE) or isinstance(exc.__cause__, _UNREACHABLE):
            forget_client(manager_url)
            raise EngineError(f"Swarm manager at {manager_url} does not answer") from exc
        if isinstance(exc, APIError):
            raise EngineError(f"Swarm manager at {manager_url}: {exc.explanation or exc}") from exc
        raise EngineError(f"Swarm manager at {manager_url}: {exc}") from exc


def _managed_filter(console_id: str) -> list[str]:
    return [f"{LABEL_MANAGED}=1", f"{LABEL_CONSOLE}={console_id}"]


# --- Nodes ---------------------------------------------------------------------------


def swarm_nodes(manager_url: str) -> list[SwarmNode]:
    with _manager_api(manager_url) as api:
        nodes = api.nodes()
    return [_node_from(node) for node in nodes]


def _node_from(node: dict[str, Any]) -> SwarmNode:
    spec = node.get("Spec") or {}
    status = node.get("Status") or {}
    description = node.get("Description") or {}
    resources = description.get("Resources") or {}
    address = status.get("Addr", "")
    manager_address = (node.get("ManagerStatus") or {}).get("Addr", "")
    if address in ("", "0.0.0.0") and manager_address:
        # A manager listening on every address reports 0.0.0.0 here; its
        # manager address ("ip:2377") names the one it advertises.
        address = manager_address.rpartition(":")[0]
    return SwarmNode(
        node_id=node.get("ID", ""),
        hostname=description.get("Hostname", ""),
        address=address,
        cpu_count=int(resources.get("NanoCPUs", 0)) // NANOS_PER_SECOND,
        memory_mib=int(resources.get("MemoryBytes", 0)) // BYTES_PER_MIB,
        availability=spec.get("Availability", ""),
        state=status.get("State", ""),
        is_manager=spec.get("Role") == "manager",
    )


# --- Services --------------------------------------------------------------------------


def _image_facts(api: docker.APIClient, image: str) -> tuple[str, bool]:
    """The image's ID when the manager has it (a task of an image named by tag
    makes its engine ask the registry first, and that can hang where DNS does),
    and whether the image has a HEALTHCHECK of its own."""
    try:
        inspected = api.inspect_image(image)
    except ImageNotFound:
        return image, False
    own_check = ((inspected.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return str(inspected["Id"]), bool(own_check) and own_check[0] != "NONE"


def _health_command(port: int, path: str) -> list[str]:
    """A GET of the health path from inside the container, with whichever of
    python3, curl and wget the image has; any status but 2xx/3xx fails it. An
    image with none of them passes at once, as with no check at all (the
    console's own probe still holds its traffic back until the model answers)."""
    url = f"http://127.0.0.1:{port}{path}"
    python = shlex.quote(f"import urllib.request as r; r.urlopen({url!r}, timeout=1)")
    script = (
        f"if command -v python3 >/dev/null 2>&1; then exec python3 -c {python}; "
        f"elif command -v curl >/dev/null 2>&1; then exec curl -fsS -m 1 -o /dev/null {shlex.quote(url)}; "
        f"elif command -v wget >/dev/null 2>&1; then exec wget -q -T 1 -O /dev/null {shlex.quote(url)}; fi"
    )
    return ["CMD-SHELL", script]


def _task_template(api: docker.APIClient, spec: VersionServiceSpec) -> docker_types.TaskTemplate:
    hardening = spec.hardening
    image, has_own_check = _image_facts(api, spec.image)
    healthcheck = None
    if spec.health_path is not None and not has_own_check:
        healthcheck = docker_types.Healthcheck(
            test=_health_command(spec.container_port, spec.health_path),
            interval=HEALTH_INTERVAL_SECONDS * NANOS_PER_SECOND,
            timeout=HEALTH_TIMEOUT_SECONDS * NANOS_PER_SECOND,
            retries=HEALTH_RETRIES,
            start_period=HEALTH_START_PERIOD_SECONDS * NANOS_PER_SECOND,
        )
    container_spec = docker_types.ContainerSpec(
        image=image,
        env=spec.environment,
        labels=spec.labels,
        init=True,
        cap_drop=["ALL"],
        cap_add=list(hardening.capabilities),
        mounts=[
            docker_types.Mount(target="/tmp", source=None, type="tmpfs", tmpfs_size=hardening.tmp_mib * BYTES_PER_MIB)
        ],
        healthcheck=healthcheck,
        stop_grace_period=STOP_GRACE_SECONDS * NANOS_PER_SECOND,
    )
    resources = docker_types.Resources(
        cpu_limit=int(spec.cpus * NANOS_PER_SECOND),
        mem_limit=spec.memory_mib * BYTES_PER_MIB,
        cpu_reservation=int(spec.cpu_reservation * NANOS_PER_SECOND),
        mem_reservation=spec.memory_reservation_mib * BYTES_PER_MIB,
    )
    resources["Limits"]["Pids"] = hardening.pids_limit  # no SDK keyword for it
    return docker_types.TaskTemplate(
        container_spec=container_spec,
        networks=[docker_types.NetworkAttachmentConfig(spec.network.name)] if spec.network is not None else None,
        resources=resources,
        restart_policy=docker_types.RestartPolicy(
            condition="any", delay=int(spec.restart_delay_seconds * NANOS_PER_SECOND), max_attempts=0
        ),
        log_driver=docker_types.DriverConfig(
            "json-file", {"max-size": f"{hardening.log_max_size_mib}m", "max-file": str(hardening.log_max_files)}
        ),
    )


def _endpoint_spec(spec: VersionServiceSpec) -> docker_types.EndpointSpec:
    # The list form: the SDK's dict form wants a fixed published port, and the
    # engine picks a free one for each task here. DNS round robin: the
    # service's name resolves to its tasks' own addresses (a virtual IP would
    # need IPVS on every node, and nothing here calls through one).
    return docker_types.EndpointSpec(
        mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": spec.container_port, "PublishMode": "host"}]
    )


def _network_ensure(api: docker.APIClient, network: ServiceNetwork) -> None:
    """Create the service's overlay network unless it exists (safe to repeat)."""
    if api.networks(names=[network.name]):
        return
    try:
        api.create_network(network.name, driver="overlay", labels=network.labels, check_duplicate=True)
    except APIError as exc:
        # Another run made it in between: keep theirs.
        if not api.networks(names=[network.name]):
            raise EngineError(f"could not create the overlay network {network.name}: {exc.explanation or exc}") from exc


def _update_config(monitor_seconds: float, parallelism: int) -> docker_types.UpdateConfig:
    """A rolling update that starts each new task before stopping an old one,
    and rolls the whole service back at the first task that fails within `monitor_seconds`."""
    return docker_types.UpdateConfig(
        parallelism=parallelism,
        delay=0,
        order="start-first",
        failure_action="rollback",
        monitor=int(monitor_seconds * NANOS_PER_SECOND),
        max_failure_ratio=0,
    )


def _rollback_config(monitor_seconds: float, parallelism: int) -> docker_types.UpdateConfig:
    return docker_types.UpdateConfig(
        parallelism=parallelism,
        delay=0,
        order="start-first",
        failure_action="pause",
        monitor=int(monitor_seconds * NANOS_PER_SECOND),
    )


def _service_info(service: dict[str, Any]) -> SwarmServiceInfo:
    spec = service.get("Spec") or {}
    update_status = service.get("UpdateStatus") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated") or {}
    return SwarmServiceInfo(
        service_id=service.get("ID", ""),
        name=spec.get("Name", ""),
        labels=spec.get("Labels") or {},
        replicas=int(replicated.get("Replicas", 0)),
        update_state=update_status.get("State", ""),
        update_message=update_status.get("Message", ""),
    )


def _inspect_service(api: docker.APIClient, name: str) -> dict[str, Any] | None:
    try:
        return dict(api.inspect_service(name))
    except NotFound:
        return None


def _scale(api: docker.APIClient, service: dict[str, Any], replicas: int) -> None:
    """Change the number of replicas and nothing else: the update call replaces the
    whole spec, so every part of the current one goes back with it."""
    spec = copy.deepcopy(service["Spec"])
    spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    api.update_service(
        service["ID"],
        service["Version"]["Index"],
        task_template=spec["TaskTemplate"],
        name=spec["Name"],
        labels=spec.get("Labels"),
        mode=spec["Mode"],
        endpoint_spec=spec.get("EndpointSpec"),
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
    )


def ensure_version_service(manager_url: str, spec: VersionServiceSpec) -> SwarmServiceInfo:
    """Create the service named spec.name unless it exists; an existing one is
    only scaled to spec.replicas (update_version_service changes the rest).

    Safe to repeat and to race: a retried deploy never makes a second service.
    Swarm starts the tasks afterwards; list_managed_tasks shows how far it got.
    """
    with _manager_api(manager_url) as api:
        service = _inspect_service(api, spec.name)
        if service is None:
            if spec.network is not None:
                _network_ensure(api, spec.network)
            try:
                api.create_service(
                    _task_template(api, spec),
                    name=spec.name,
                    labels=spec.labels,
                    mode=docker_types.ServiceMode("replicated", replicas=spec.replicas),
                    endpoint_spec=_endpoint_spec(spec),
                    # Also what a later update_version_service uses, and a `docker service update` would.
                    update_config=_update_config(monitor_seconds=3.0, parallelism=1),
                    rollback_config=_rollback_config(monitor_seconds=3.0, parallelism=1),
                )
            except APIError as exc:
                # Lost a race with another run creating the same name: use theirs.
                if exc.status_code != 409:
                    raise
            service = _inspect_service(api, spec.name)
            if service is None:
                raise EngineError(f"Swarm service {spec.name} vanished as it was created")
        if _service_info(service).replicas != spec.replicas:
            _scale(api, service, spec.replicas)
            service = _inspect_service(api, spec.name) or service
    return _service_info(service)


def update_version_service(
    manager_url: str, spec: VersionServiceSpec, *, monitor_seconds: float = 3.0, parallelism: int = 1
) -> SwarmServiceInfo:
    """Start a rolling update of the existing service spec.name to `spec` (image,
    environment, limits, replicas…); returns at once. version_service(…).update_state
    says how it goes: `completed`, or `rollback_completed` once Swarm has put the
    previous spec back because a new task failed within `monitor_seconds`. A spec
    the service already runs replaces no task, and update_state stays as it was.
    Another writer's change between the read and the write fails the call
    ("update out of sequence"): try again."""
    with _manager_api(manager_url) as api:
        service = _inspect_service(api, spec.name)
        if service is None:
            raise EngineError(f"Swarm service {spec.name} does not exist on {manager_url}")
        if spec.network is not None:
            # A service made before services had networks of their own joins one here.
            _network_ensure(api, spec.network)
        api.update_service(
            service["ID"],
            service["Version"]["Index"],
            task_template=_task_template(api, spec),
            name=spec.name,
            labels=spec.labels,
            mode=docker_types.ServiceMode("replicated", replicas=spec.replicas),
            endpoint_spec=_endpoint_spec(spec),
            update_config=_update_config(monitor_seconds, parallelism),
            rollback_config=_rollback_config(monitor_seconds, parallelism),
        )
        updated = _inspect_service(api, spec.name)
    if updated is None:
        raise EngineError(f"Swarm service {spec.name} vanished during its update")
    return _service_info(updated)


def rolling_update_start(manager_url: str, spec: VersionServiceSpec, *, parallelism: int) -> SwarmServiceInfo:
    """Start Swarm's rolling update of the existing service spec.name to `spec`,
    the configuration (its LABEL_CONFIG) that takes the service over from the
    one it runs now: start-first, `parallelism` tasks at a time, rolled back by
    Swarm at the first new task that fails.

    Safe to repeat: a service already on spec's configuration is only scaled
    to spec.replicas, and a missing one (the service was stopped since) is
    created. A rollback leaves no trace of the spec it rolled back from, so a
    repeat after one starts the update again: the lifecycle asks first
    (services.lifecycle records the rollback instead)."""
    current = version_service(manager_url, spec.name)
    if current is None or current.labels.get(LABEL_CONFIG) == spec.labels.get(LABEL_CONFIG):
        return ensure_version_service(manager_url, spec)
    return update_version_service(
        manager_url, spec, monitor_seconds=ROLLING_UPDATE_MONITOR_SECONDS, parallelism=parallelism
    )


def version_service(manager_url: str, name: str) -> SwarmServiceInfo | None:
    with _manager_api(manager_url) as api:
        service = _inspect_service(api, name)
    return None if service is None else _service_info(service)


def remove_version_service(manager_url: str, name: str) -> None:
    """Remove a service; its tasks' containers stop and go shortly after. A missing one is already removed."""
    with _manager_api(manager_url) as api:
        try:
            api.remove_service(name)
        except NotFound:
            return


def list_managed_services(manager_url: str, console_id: str) -> list[SwarmServiceInfo]:
    """Every service of this console on the swarm, in one call."""
    with _manager_api(manager_url) as api:
        services = api.services(filters={"label": _managed_filter(console_id)})
    return [_service_info(service) for service in services]


def list_managed_networks(manager_url: str, console_id: str) -> list[str]:
    """Names of this console's service networks on the swarm, in one call."""
    with _manager_api(manager_url) as api:
        networks = api.networks(filters={"label": _managed_filter(console_id), "driver": "overlay"})
    return [network["Name"] for network in networks]


def remove_network(manager_url: str, name: str) -> None:
    """Remove a service's overlay network; a missing one is already removed.
    Fails (EngineError) while a task on it is still stopping."""
    with _manager_api(manager_url) as api:
        try:
            api.remove_network(name)
        except NotFound:
            return


# --- Tasks ---------------------------------------------------------------------------


def list_managed_tasks(
    manager_url: str,
    console_id: str,
    *,
    running_only: bool = True,
    services: list[SwarmServiceInfo] | None = None,
) -> list[SwarmTask]:
    """The tasks of this console's services on every node.

    running_only keeps the tasks Swarm wants running: a task it is about to stop
    (an update, a drain, a removal) leaves this list before its container stops,
    so calls routed by it are not sent to a stopping instance. Without it, the
    history Swarm keeps (failed and shut-down tasks, a few per slot) comes too.
    """
    filters: dict[str, Any] = {"label": _managed_filter(console_id)}
    if running_only:
        filters["desired-state"] = "running"
    with _manager_api(manager_url) as api:
        tasks = api.tasks(filters=filters)
        # Tasks name their service by ID only; the names come from the caller's
        # list_managed_services, or from one more call.
        if services is not None:
            names = {service.service_id: service.name for service in services}
        else:
            names = {
                service["ID"]: service["Spec"]["Name"] for service in api.services(filters={"label": filters["label"]})
            }
    return [_task_from(task, names.get(task.get("ServiceID", ""), "")) for task in tasks]


def _task_from(task: dict[str, Any], service_name: str) -> SwarmTask:
    status = task.get("Status") or {}
    container_status = status.get("ContainerStatus") or {}
    ports = (status.get("PortStatus") or {}).get("Ports") or []
    # Each port is listed twice, IPv4 then IPv6, and the two numbers can differ.
    host_port = ports[0].get("PublishedPort") if ports else None
    state = status.get("State", "")
    # The engine reports 0 while the container still runs.
    exit_code = container_status.get("ExitCode") if state in _ENDED_TASK_STATES else None
    return SwarmTask(
        task_id=task.get("ID", ""),
        service_name=service_name,
        labels=((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {},
        slot=task.get("Slot"),
        node_id=task.get("NodeID", ""),
        state=state,
        desired_state=task.get("DesiredState", ""),
        error=status.get("Err", ""),
        message=status.get("Message", ""),
        host_port=int(host_port) if host_port else None,
        container_id=container_status.get("ContainerID", ""),
        exit_code=int(exit_code) if exit_code is not None else None,
    )


def version_service_logs(manager_url: str, name: str, tail: int = 50) -> str:
    """The last `tail` lines of each of the service's tasks, on every node, each
    line prefixed with its task's name (`<service>.<slot>`); "" for a missing service."""
    with _manager_api(manager_url) as api:
        try:
            chunks = api.service_logs(name, details=True, stdout=True, stderr=True, tail=tail, is_tty=False)
            raw = b"".join(chunks)
            slots = {task["ID"]: task.get("Slot") for task in api.tasks(filters={"service": name})}
        except NotFound:
            return ""
    lines = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        # details=True starts each line with "com.docker.swarm.node.id=…,…,com.docker.swarm.task.id=… ".
        details, _, text = line.partition(" ")
        fields = dict(pair.partition("=")[::2] for pair in details.split(","))
        task_id = fields.get("com.docker.swarm.task.id")
        if task_id is None:
            lines.append(line)
            continue
        slot = slots.get(task_id)
        lines.append(f"{name}.{slot if slot is not None else task_id[:12]} | {text}")
    return "".join(f"{line}\n" for line in lines)
