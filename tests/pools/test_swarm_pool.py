"""A pool of kind Swarm on a real swarm (the `swarm_manager` fixture: an engine
of its own, never the main one): its nodes are read from the manager, a
drained node is shown and not offered, nodes cannot be added by hand, and the
reconcile loop never treats the manager's task containers as orphans."""

from __future__ import annotations

import time
import uuid

import docker
import pytest
from django.conf import settings
from django.test import Client

from pools.models import Node, PoolKind, ResourcePool
from pools.selectors import pool_list_for
from services import runtime
from services.reconcile import nodes_refresh, reconcile
from services.runtime import swarm
from tests.factories import DEMO_IMAGE_V1, make_staff
from tests.pools.test_pool_pages import page_of, pool_form

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


@pytest.fixture
def staff_client(db):
    client = Client()
    client.force_login(make_staff("operator"))
    return client


@pytest.fixture
def swarm_pool(staff_client, swarm_manager, flavors) -> ResourcePool:
    response = staff_client.post("/pools/new/", pool_form(name="swarm-a", kind="swarm", manager_url=swarm_manager))
    assert response.status_code == 302, page_of(response)
    return ResourcePool.objects.get(name="swarm-a")


def node_availability_set(manager_url: str, availability: str) -> None:
    client = docker.DockerClient(base_url=manager_url, version="auto")
    try:
        (node,) = client.api.nodes()
        spec = dict(node["Spec"], Availability=availability)
        client.api.update_node(node["ID"], node["Version"]["Index"], spec)
    finally:
        client.close()


def test_an_operator_creates_a_swarm_pool_whose_nodes_come_from_the_swarm(staff_client, swarm_pool, owner):
    (listed,) = swarm.swarm_nodes(swarm_pool.manager_url)
    (node,) = swarm_pool.nodes.all()

    assert swarm_pool.kind == PoolKind.SWARM
    assert (node.swarm_node_id, node.address, node.availability) == (listed.node_id, "127.0.0.1", "active")
    assert (node.cpu_count, node.memory_mib) == (listed.cpu_count, listed.memory_mib)
    assert node.cpu_count >= 1 and node.memory_mib > 0
    assert node.is_reachable and node.is_offered
    page = page_of(staff_client.get(f"/pools/{swarm_pool.id}/"))
    assert "Docker Swarm, manager" in page and "Ready" in page
    assert f"/pools/{swarm_pool.id}/nodes/new/" not in page
    # Not yet offered to users: deploys follow once the lifecycle runs on Swarm.
    assert not pool_list_for(owner).filter(id=swarm_pool.id).exists()


def test_a_swarm_pools_nodes_are_not_added_by_hand_and_a_swarm_is_one_pool(staff_client, swarm_pool):
    response = staff_client.post(
        f"/pools/{swarm_pool.id}/nodes/new/", {"name": "extra", "docker_host": "unix:///var/run/docker.sock"}
    )
    assert response.status_code == 302
    assert "its nodes are the swarm" in page_of(staff_client.get(response["Location"]))
    assert swarm_pool.nodes.count() == 1

    again = staff_client.post(
        "/pools/new/", pool_form(name="swarm-b", kind="swarm", manager_url=swarm_pool.manager_url)
    )
    assert again.status_code == 400
    assert "This swarm is pool swarm-a already" in page_of(again)
    assert not ResourcePool.objects.filter(name="swarm-b").exists()


def test_a_drained_node_is_shown_and_not_offered_until_it_is_active_again(staff_client, swarm_pool):
    node = swarm_pool.nodes.get()
    try:
        node_availability_set(swarm_pool.manager_url, "drain")
        nodes_refresh()
        node.refresh_from_db()
        assert node.availability == "drain" and node.is_reachable and not node.is_offered
        assert "Drained" in page_of(staff_client.get(f"/pools/{swarm_pool.id}/"))
    finally:
        node_availability_set(swarm_pool.manager_url, "active")
    nodes_refresh()
    node.refresh_from_db()
    assert node.availability == "active" and node.is_offered


def test_a_manager_that_stops_answering_leaves_its_nodes_unreachable_not_gone(swarm_pool):
    ResourcePool.objects.filter(id=swarm_pool.id).update(manager_url="unix:///var/run/rts-no-such-manager.sock")

    nodes_refresh()

    node = Node.objects.get(pool=swarm_pool)
    assert not node.is_reachable and not node.is_offered
    assert "rts-no-such-manager.sock" in node.last_error or "answer" in node.last_error


def test_the_reconcile_loop_leaves_the_managers_task_containers_alone(swarm_pool):
    """A task container on the manager carries the console's labels; listing the
    manager as an engine would remove it as an orphan (no such service row)."""
    name = f"rts-swarmpool-{uuid.uuid4().hex[:8]}"
    spec = swarm.VersionServiceSpec(
        name=name,
        image=DEMO_IMAGE_V1,
        container_port=8080,
        replicas=1,
        cpus=0.25,
        memory_mib=128,
        cpu_reservation=0.25,
        memory_reservation_mib=128,
        environment={},
        labels={
            runtime.LABEL_MANAGED: "1",
            runtime.LABEL_CONSOLE: settings.CONSOLE_ID,
            runtime.LABEL_SERVICE: str(uuid.uuid4()),
            runtime.LABEL_CONFIG: "1",
        },
    )
    swarm.ensure_version_service(swarm_pool.manager_url, spec)
    try:
        deadline = time.monotonic() + 60
        while not (running := swarm.list_managed_tasks(swarm_pool.manager_url, settings.CONSOLE_ID)):
            assert time.monotonic() < deadline, "the task never ran"
            time.sleep(0.2)
        (task,) = running

        reconcile()

        assert [t.container_id for t in swarm.list_managed_tasks(swarm_pool.manager_url, settings.CONSOLE_ID)] == [
            task.container_id
        ]
    finally:
        swarm.remove_version_service(swarm_pool.manager_url, name)
