"""The one package that speaks to Docker: this module to standalone engines, `swarm` to Swarm managers.

Everything else in the project calls these functions with plain values and
gets plain dataclasses back; no Docker SDK object leaves this module.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

LABEL_MANAGED = "rts.managed"
LABEL_CONSOLE = "rts.console"
LABEL_SERVICE = "rts.service"
LABEL_CONFIG = "rts.config"
LABEL_VERSION = "rts.version"
LABEL_INSTANCE = "rts.instance"

_clients: dict[str, docker.DockerClient] = {}
_clients_lock = threading.Lock()


class EngineError(Exception):
    """The engine could not do what was asked; the message is fit for a user."""


@dataclass(frozen=True)
class EngineInfo:
    cpu_count: int
    memory_mib: int
    server_version: str


@dataclass(frozen=True)
class ContainerHardening:
    """Limits every model container runs under: its code is its owner's, and may be hostile."""

    pids_limit: int = 256
    # Kept capabilities; every other one is dropped.
    capabilities: tuple[str, ...] = ("CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE")
    no_new_privileges: bool = True
    tmp_mib: int = 64
    log_max_size_mib: int = 10
    log_max_files: int = 3


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    container_port: int
    cpus: float
    memory_mib: int
    environment: dict[str, str]
    labels: dict[str, str]
    publish_host: str = "127.0.0.1"
    hardening: ContainerHardening = field(default_factory=ContainerHardening)
    # The service's own network (see NetworkSpec); None: the engine's default bridge.
    network: NetworkSpec | None = None


@dataclass(frozen=True)
class NetworkSpec:
    """A bridge network of one service on one engine: its instances reach each
    other on it, and nothing else of the platform (scripts/engine-firewall.sh
    drops what leaves an `rts*` bridge for the host, link-local addresses, and,
    for `rtsd*` bridges, everything outside the bridge)."""

    name: str
    # The Linux bridge's name (at most 15 characters): the firewall matches its prefix.
    bridge_name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    container_id: str
    state: str  # created, running, paused, restarting, removing, exited, dead
    labels: dict[str, str] = field(default_factory=dict)
    host_port: int | None = None
    exit_code: int | None = None
    error: str = ""

    @property
    def is_running(self) -> bool:
        return self.state == "running"


def engine_client(docker_host: str, timeout: int = 30) -> docker.DockerClient:
    """The cached SDK client of an engine or Swarm manager (`timeout` applies when it is first made)."""
    with _clients_lock:
        client = _clients.get(docker_host)
        if client is None:
            client = docker.DockerClient(base_url=docker_host, version="auto", timeout=timeout)
            _clients[docker_host] = client
        return client


def _engine_error(docker_host: str, exc: Exception) -> EngineError:
    # The SDK wraps a failed connection while negotiating the API version in a
    # plain DockerException; the cause says what really happened.
    unreachable = (RequestsConnectionError, ReadTimeout, FileNotFoundError)
    if isinstance(exc, unreachable) or isinstance(exc.__cause__, unreachable):
        return EngineError(f"Docker engine at {docker_host} does not answer")
    if isinstance(exc, APIError):
        return EngineError(str(exc.explanation or exc))
    return EngineError(f"Docker engine at {docker_host}: {exc}")


def forget_client(docker_host: str) -> None:
    """Drop a cached client, e.g. after the engine restarted or in a forked worker."""
    with _clients_lock:
        client = _clients.pop(docker_host, None)
    if client is not None:
        client.close()


def engine_info(docker_host: str) -> EngineInfo:
    try:
        info = engine_client(docker_host).info()
    except (DockerException, RequestsConnectionError, ReadTimeout, FileNotFoundError) as exc:
        forget_client(docker_host)
        raise _engine_error(docker_host, exc) from exc
    return EngineInfo(
        cpu_count=int(info.get("NCPU", 0)),
        memory_mib=int(info.get("MemTotal", 0)) // (1024 * 1024),
        server_version=str(info.get("ServerVersion", "")),
    )


def image_exists(docker_host: str, image: str) -> bool:
    try:
        engine_client(docker_host).api.inspect_image(image)
        return True
    except ImageNotFound:
        return False
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc


def _info_from_summary(summary: dict) -> ContainerInfo:
    """Build ContainerInfo from one entry of the engine's container list call."""
    host_port = None
    for port in summary.get("Ports") or []:
        if port.get("PublicPort"):
            host_port = int(port["PublicPort"])
            break
    names = summary.get("Names") or ["/"]
    return ContainerInfo(
        name=names[0].lstrip("/"),
        container_id=summary.get("Id", ""),
        state=summary.get("State", ""),
        labels=summary.get("Labels") or {},
        host_port=host_port,
    )


def _info_from_inspect(attrs: dict) -> ContainerInfo:
    state = attrs.get("State") or {}
    host_port = None
    for bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if binding.get("HostPort"):
                host_port = int(binding["HostPort"])
                break
    return ContainerInfo(
        name=attrs.get("Name", "").lstrip("/"),
        container_id=attrs.get("Id", ""),
        state=state.get("Status", ""),
        labels=(attrs.get("Config") or {}).get("Labels") or {},
        host_port=host_port,
        exit_code=state.get("ExitCode"),
        error=state.get("Error", ""),
    )


def list_managed_containers(docker_host: str, console_id: str) -> list[ContainerInfo]:
    """All containers of this console on one engine, in a single list call."""
    try:
        summaries = engine_client(docker_host).api.containers(
            all=True, filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_CONSOLE}={console_id}"]}
        )
    except (DockerException, RequestsConnectionError, ReadTimeout, FileNotFoundError) as exc:
        forget_client(docker_host)
        raise _engine_error(docker_host, exc) from exc
    return [_info_from_summary(summary) for summary in summaries]


def inspect_container(docker_host: str, name: str) -> ContainerInfo | None:
    try:
        return _info_from_inspect(engine_client(docker_host).api.inspect_container(name))
    except NotFound:
        return None
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc


def ensure_container_running(docker_host: str, spec: ContainerSpec) -> ContainerInfo:
    """Create the container named spec.name unless it exists, and start it.

    Safe to repeat: an existing container with that name is reused (and started
    if it is not running), so a retried deploy never makes a second copy.
    """
    try:
        api = engine_client(docker_host).api
        try:
            attrs = api.inspect_container(spec.name)
        except NotFound:
            attrs = None
        if attrs is None:
            hardening = spec.hardening
            if spec.network is not None:
                _ensure_network(docker_host, api, spec.network)
            host_config = api.create_host_config(
                port_bindings={f"{spec.container_port}/tcp": (spec.publish_host, None)},
                nano_cpus=int(spec.cpus * 1_000_000_000),
                mem_limit=f"{spec.memory_mib}m",
                # No swap beyond the memory limit: a container cannot page the engine to a crawl.
                memswap_limit=f"{spec.memory_mib}m",
                pids_limit=hardening.pids_limit,
                cap_drop=["ALL"],
                cap_add=list(hardening.capabilities),
                security_opt=["no-new-privileges:true"] if hardening.no_new_privileges else [],
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={hardening.tmp_mib}m"},
                log_config={
                    "Type": "json-file",
                    "Config": {"max-size": f"{hardening.log_max_size_mib}m", "max-file": str(hardening.log_max_files)},
                },
                # Only the limits above and the values below come from users:
                # no mounts, devices, capabilities or host networking.
                privileged=False,
                network_mode=spec.network.name if spec.network is not None else "bridge",
                init=True,
            )
            try:
                api.create_container(
                    image=spec.image,
                    name=spec.name,
                    environment=spec.environment,
                    labels=spec.labels,
                    ports=[spec.container_port],
                    host_config=host_config,
                    detach=True,
                )
            except APIError as exc:
                # Lost a race with another run creating the same name: reuse it.
                if exc.status_code != 409:
                    raise
        attrs = api.inspect_container(spec.name)
        if not (attrs.get("State") or {}).get("Running"):
            api.start(spec.name)
            attrs = api.inspect_container(spec.name)
    except ImageNotFound as exc:
        raise EngineError(f"image {spec.image} not found on the engine") from exc
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc
    return _info_from_inspect(attrs)


# The instances of one deploy start on parallel threads, and each makes sure its
# service's network exists: one creates it, the others wait for that.
_network_locks: dict[str, threading.Lock] = {}
# How long a network another process is creating may take to be listed.
NETWORK_LISTED_WAIT_SECONDS = 3.0


def _ensure_network(docker_host: str, api: docker.APIClient, network: NetworkSpec) -> None:
    """Create the network unless it exists (safe to repeat, and to race)."""
    with _clients_lock:
        lock = _network_locks.setdefault(f"{docker_host} {network.name}", threading.Lock())
    with lock:
        if api.networks(names=[network.name]):
            return
        try:
            api.create_network(
                network.name,
                driver="bridge",
                labels=network.labels,
                options={"com.docker.network.bridge.name": network.bridge_name},
                check_duplicate=True,
            )
        except APIError:
            # Another process is creating it (a name or bridge-name conflict):
            # the engine lists it once that is done. Anything else is an error.
            deadline = time.monotonic() + NETWORK_LISTED_WAIT_SECONDS
            while not api.networks(names=[network.name]):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def list_managed_networks(docker_host: str, console_id: str) -> list[str]:
    """Names of this console's service networks on one engine."""
    try:
        networks = engine_client(docker_host).api.networks(
            filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_CONSOLE}={console_id}"]}
        )
    except (DockerException, RequestsConnectionError, ReadTimeout, FileNotFoundError) as exc:
        raise _engine_error(docker_host, exc) from exc
    return [network["Name"] for network in networks]


def remove_network(docker_host: str, name: str) -> None:
    """Remove a service network; a missing one is already removed. Its containers must be gone first."""
    try:
        engine_client(docker_host).api.remove_network(name)
    except NotFound:
        return
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc


def container_logs(docker_host: str, name: str, tail: int | str = 50) -> str:
    try:
        raw = engine_client(docker_host).api.logs(name, stdout=True, stderr=True, tail=tail, timestamps=False)
    except NotFound:
        return ""
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc
    return raw.decode("utf-8", errors="replace")


def container_log_excerpt(docker_host: str, name: str, head: int = 20, tail: int = 50) -> str:
    """The first and last lines of a container's log, so a failure report keeps
    both the server's start-up lines and what it said last."""
    text = container_logs(docker_host, name, tail="all")
    lines = text.splitlines()
    if len(lines) <= head + tail:
        return text
    skipped = len(lines) - head - tail
    return "\n".join([*lines[:head], f"… {skipped} line(s) skipped …", *lines[-tail:]]) + "\n"


def stop_container(docker_host: str, name: str, timeout: int = 10) -> None:
    try:
        engine_client(docker_host).api.stop(name, timeout=timeout)
    except NotFound:
        return
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc


def remove_container(docker_host: str, name: str) -> None:
    """Remove a container whatever its state; a missing one is already removed."""
    try:
        engine_client(docker_host).api.remove_container(name, force=True)
    except NotFound:
        return
    except APIError as exc:
        # 409: removal already in progress; the engine will finish it.
        if exc.status_code == 409:
            return
        raise _engine_error(docker_host, exc) from exc
    except (DockerException, RequestsConnectionError, ReadTimeout) as exc:
        raise _engine_error(docker_host, exc) from exc
