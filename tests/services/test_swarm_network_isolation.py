"""On a public Swarm pool, two users' services share a node: each service's
tasks reach each other over the service's own overlay network and nothing of
the other service or of the platform. Proved from inside real tasks on the
test swarm (the `swarm_manager` fixture: an engine of its own), whose node
carries scripts/engine-firewall.sh's rules as the bootstrap installed them."""

from __future__ import annotations

import socket

import docker
import pytest
from django.conf import settings

from services.actions import service_delete
from services.choices import ServiceStatus
from services.instance_runtime import config_swarm_name, service_network_spec
from services.lifecycle import service_delete_run, service_deploy_run
from services.models import Service
from services.reconcile import reconcile
from services.runtime import swarm
from tests.factories import create_service, make_version
from tests.services.test_network_isolation import host_listener, probe_from  # noqa: F401  (a fixture)
from tests.services.test_swarm_lifecycle import deploy_settled, swarm_pool_create, swarm_services_remove, until

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("enqueued")]

POOL = "swarm-public"
GATEWAY_BRIDGE = "docker_gwbridge"


@pytest.fixture
def public_swarm_pool(swarm_manager, flavors):
    yield swarm_pool_create(swarm_manager, POOL)
    swarm_services_remove(swarm_manager)


@pytest.fixture
def swarm_docker(swarm_manager):
    client = docker.DockerClient(base_url=swarm_manager, version="auto")
    yield client
    client.close()


def deployed(user, name: str, instance_count: int) -> Service:
    service = create_service(user, make_version(user), pool=POOL, name=name, instance_count=instance_count)
    service_deploy_run(service_id=service.id)
    service = deploy_settled(service.id)
    assert service.status == ServiceStatus.RUNNING, service.status_reason
    return service


def address_on(client, container_id: str, network: str) -> str:
    networks = client.containers.get(container_id).attrs["NetworkSettings"]["Networks"]
    return networks[network]["IPAddress"]


def test_two_users_services_on_a_public_swarm_pool_reach_their_own_tasks_and_nothing_else(
    public_swarm_pool,
    swarm_manager,
    swarm_docker,
    owner,
    other_user,
    host_listener,  # noqa: F811
):
    mine = deployed(owner, "svc-mine", instance_count=2)
    theirs = deployed(other_user, "svc-theirs", instance_count=1)
    first, peer = mine.instances.order_by("index")
    other = theirs.instances.get()
    my_network, their_network = service_network_spec(mine.id).name, service_network_spec(theirs.id).name

    # Each task is on its service's overlay network, not on the node's shared default bridge.
    for instance, network in ((first, my_network), (peer, my_network), (other, their_network)):
        networks = swarm_docker.containers.get(instance.container_id).attrs["NetworkSettings"]["Networks"]
        assert set(networks) == {network}, networks
    gateway_bridge = swarm_docker.networks.get(GATEWAY_BRIDGE).attrs
    assert gateway_bridge["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    node_address = gateway_bridge["IPAM"]["Config"][0]["Gateway"]
    # Where the other task sits on the gateway bridge (its host-mode port is published from there).
    their_bridge_address = gateway_bridge["Containers"][other.container_id]["IPv4Address"].split("/")[0]

    results = probe_from(
        swarm_docker,
        first.container_id,
        {
            "peer by the service's name": (config_swarm_name(peer.config), 8080),
            "peer by address": (address_on(swarm_docker, peer.container_id, my_network), 8080),
            "other service by name": (config_swarm_name(other.config), 8080),
            "other service by address": (address_on(swarm_docker, other.container_id, their_network), 8080),
            "other service on the gateway bridge": (their_bridge_address, 8080),
            "other service's published port": (node_address, other.host_port),
            "a component listening on the node": (node_address, host_listener),
            "postgresql": (node_address, 5432),
            "redis": (node_address, 6379),
        },
    )

    assert results.pop("peer by the service's name") == "open"
    assert results.pop("peer by address") == "open"
    assert results["other service by name"] == "gaierror"
    assert {name: outcome for name, outcome in results.items() if outcome == "open"} == {}
    # The targets are real: the node itself reaches the other task's port and the listener.
    for port in (other.host_port, host_listener):
        socket.create_connection((node_address, port), timeout=1).close()


def test_deleting_a_swarm_service_removes_its_overlay_network(public_swarm_pool, swarm_manager, owner):
    service = deployed(owner, "svc-gone", instance_count=1)
    network = service_network_spec(service.id).name
    assert network in swarm.list_managed_networks(swarm_manager, settings.CONSOLE_ID)

    service_delete(service=service)
    assert service_delete_run(service_id=service.id) == "deleted"

    # Swarm stops the tasks after the delete; the network goes once they are off it.
    def network_gone() -> bool:
        reconcile()
        return network not in swarm.list_managed_networks(swarm_manager, settings.CONSOLE_ID)

    until(network_gone, "the overlay network removed", timeout=30, every=0.5)
