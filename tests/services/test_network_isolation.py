"""A model container reaches the containers of its own service and nothing else
of the platform. Proved from inside real containers.

Every target here is this machine's own: containers the test deploys, a
listener the test opens on the host, and a network namespace the test creates
(with a link-local and a documentation-range address) and removes afterwards.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from services.instance_runtime import service_network_spec
from services.lifecycle import service_deploy_run
from services.models import Service
from tests.conftest import free_port
from tests.factories import create_service, make_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

NAMESPACE = "rtsisotest"
HOST_SIDE, NS_SIDE = "tnveth0", "tnveth1"
# Outside the machine's own networks: a link-local address (where clouds serve
# metadata) and one of the benchmarking range, both only inside our namespace.
LINK_LOCAL_TARGET = "169.254.124.2"
OUTSIDE_TARGET = "198.18.124.2"
TARGET_PORT = 8099

PROBE = """
import json, socket, sys
results = {}
for name, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=1.5).close()
        results[name] = "open"
    except OSError as exc:
        results[name] = type(exc).__name__
print(json.dumps(results))
"""


def sh(*commands: str) -> None:
    for command in commands:
        subprocess.run(command, shell=True, check=True, capture_output=True)


@pytest.fixture
def outside_namespace() -> Iterator[None]:
    """A network namespace behind a veth pair, with a TCP listener on a link-local
    and on a documentation-range address, as if it were a host out there."""
    sh(f"ip netns del {NAMESPACE} 2>/dev/null || true", f"ip link del {HOST_SIDE} 2>/dev/null || true")
    sh(
        f"ip netns add {NAMESPACE}",
        f"ip link add {HOST_SIDE} type veth peer name {NS_SIDE}",
        f"ip link set {NS_SIDE} netns {NAMESPACE}",
        f"ip addr add 169.254.124.1/24 dev {HOST_SIDE}",
        f"ip addr add 198.18.124.1/24 dev {HOST_SIDE}",
        f"ip link set {HOST_SIDE} up",
        f"ip netns exec {NAMESPACE} ip addr add {LINK_LOCAL_TARGET}/24 dev {NS_SIDE}",
        f"ip netns exec {NAMESPACE} ip addr add {OUTSIDE_TARGET}/24 dev {NS_SIDE}",
        f"ip netns exec {NAMESPACE} ip link set {NS_SIDE} up",
        f"ip netns exec {NAMESPACE} ip link set lo up",
        f"ip netns exec {NAMESPACE} ip route add default via 198.18.124.1",
    )
    listener = subprocess.Popen(
        [
            "ip", "netns", "exec", NAMESPACE, "python3", "-c",
            "import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {TARGET_PORT})); s.listen(16)\n"
            "while True:\n    s.accept()[0].close()\n",
        ]
    )  # fmt: skip
    try:
        for target in (LINK_LOCAL_TARGET, OUTSIDE_TARGET):  # the targets are real: the host reaches both
            for _ in range(50):
                try:
                    socket.create_connection((target, TARGET_PORT), timeout=1).close()
                    break
                except OSError:
                    threading.Event().wait(0.05)
            else:
                raise AssertionError(f"the namespace's listener on {target} never answered")
        yield
    finally:
        listener.kill()
        listener.wait()
        sh(f"ip netns del {NAMESPACE} 2>/dev/null || true", f"ip link del {HOST_SIDE} 2>/dev/null || true")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A platform-like component listening on every address of the host."""
    port = free_port()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join()
    server.close()


def deployed(owner, version, name: str, instance_count: int = 1) -> Service:
    service = create_service(owner, version, name=name, instance_count=instance_count)
    assert service_deploy_run(service_id=service.id) == "running"
    return Service.objects.get(id=service.id)


def probe_from(docker_client, container_name: str, targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    rows = [[name, host, port] for name, (host, port) in targets.items()]
    result = docker_client.containers.get(container_name).exec_run(["python3", "-c", PROBE, json.dumps(rows)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.decode().strip().splitlines()[-1])


def network_of(docker_client, service: Service) -> tuple[str, dict]:
    network = docker_client.networks.get(service_network_spec(service.id).name)
    return network.attrs["IPAM"]["Config"][0]["Gateway"], network.attrs


def container_ip(docker_client, container_name: str, network_name: str) -> str:
    container = docker_client.containers.get(container_name)
    return container.attrs["NetworkSettings"]["Networks"][network_name]["IPAddress"]


def test_a_container_reaches_its_peers_and_nothing_else_of_the_platform(
    engine, docker_client, owner, pool, flavors, host_listener, outside_namespace
):
    version = make_version(owner)
    mine = deployed(owner, version, "svc-mine", instance_count=2)
    theirs = deployed(owner, version, "svc-theirs")
    first, peer = (instance.container_name for instance in mine.instances.order_by("index"))
    other = theirs.instances.get()
    gateway_ip, attrs = network_of(docker_client, mine)
    assert attrs["Options"]["com.docker.network.bridge.name"].startswith("rtsa")
    other_network = service_network_spec(theirs.id).name

    results = probe_from(
        docker_client,
        first,
        {
            "peer by name": (peer, 8080),
            "peer by address": (container_ip(docker_client, peer, service_network_spec(mine.id).name), 8080),
            "other service by address": (container_ip(docker_client, other.container_name, other_network), 8080),
            "other service by name": (other.container_name, 8080),
            "other service's published port": (gateway_ip, other.host_port),
            "a component listening on the host": (gateway_ip, host_listener),
            "postgresql": (gateway_ip, 5432),
            "redis": (gateway_ip, 6379),
            "link-local address": (LINK_LOCAL_TARGET, TARGET_PORT),
            "the outside world": (OUTSIDE_TARGET, TARGET_PORT),
        },
    )

    assert results.pop("peer by name") == "open"
    assert results.pop("peer by address") == "open"
    assert results.pop("the outside world") == "open"  # CONTAINER_EGRESS defaults to allow
    assert results["other service by name"] == "gaierror"
    assert {name: outcome for name, outcome in results.items() if outcome == "open"} == {}
    # The listener is really there for the host itself: only the container is kept out.
    socket.create_connection((gateway_ip, host_listener), timeout=1).close()


def test_with_egress_denied_a_container_reaches_only_its_own_network(
    engine, docker_client, owner, pool, flavors, settings, outside_namespace
):
    settings.CONTAINER_EGRESS = "deny"
    service = deployed(owner, make_version(owner), "svc-fenced", instance_count=2)
    first, peer = (instance.container_name for instance in service.instances.order_by("index"))
    _, attrs = network_of(docker_client, service)
    assert attrs["Options"]["com.docker.network.bridge.name"].startswith("rtsd")

    results = probe_from(
        docker_client,
        first,
        {
            "peer": (peer, 8080),
            "outside": (OUTSIDE_TARGET, TARGET_PORT),
            "link-local": (LINK_LOCAL_TARGET, TARGET_PORT),
        },
    )

    assert results == {"peer": "open", "outside": "TimeoutError", "link-local": "TimeoutError"}


def test_deleting_a_service_removes_its_network(engine, docker_client, owner, pool, flavors, enqueued):
    from services.actions import service_delete
    from services.lifecycle import service_delete_run

    service = deployed(owner, make_version(owner), "svc-gone")
    name = service_network_spec(service.id).name
    assert docker_client.networks.list(names=[name])

    service_delete(service=service)
    assert service_delete_run(service_id=service.id) == "deleted"

    assert docker_client.networks.list(names=[name]) == []
