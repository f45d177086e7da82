"""A pool of kind Swarm on a real swarm (the `swarm_manager` fixture: an engine
of its own, never the main one): its nodes are read from the manager, a
drained node is shown and not offered, and nodes cannot be added by hand.
Services on such a pool: tests/services/test_swarm_lifecycle.py."""

from __future__ import annotations

import docker
import pytest
from django.test import Client

from pools.models import Node, PoolKind, ResourcePool, UserQuota
from pools.quotas import holding_of
from pools.selectors import pool_list_for
from services.reconcile import nodes_refresh
from services.runtime import swarm
from tests.factories import make_staff
from tests.pools.test_pool_pages import page_of, pool_form

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


@pytest.fixture
def staff_client(db):
    client = Client()
    client.force_login(make_staff("operator"))
    return client


def swarm_form(**changes) -> dict:
    return pool_form(access="dedicated", owner="owner", kind="swarm", **changes)


@pytest.fixture
def swarm_pool(staff_client, swarm_manager, flavors, owner) -> ResourcePool:
    response = staff_client.post("/pools/new/", swarm_form(name="swarm-a", manager_url=swarm_manager))
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


def test_an_operator_creates_a_swarm_pool_whose_nodes_come_from_the_swarm(staff_client, swarm_pool, owner, other_user):
    (listed,) = swarm.swarm_nodes(swarm_pool.manager_url)
    (node,) = swarm_pool.nodes.all()

    assert swarm_pool.kind == PoolKind.SWARM
    assert (node.swarm_node_id, node.address, node.availability) == (listed.node_id, "127.0.0.1", "active")
    assert (node.cpu_count, node.memory_mib) == (listed.cpu_count, listed.memory_mib)
    assert node.cpu_count >= 1 and node.memory_mib > 0
    assert node.is_reachable and node.is_offered
    page = page_of(staff_client.get(f"/pools/{swarm_pool.id}/"))
    assert "Docker Swarm, manager" in page and "Ready" in page
    # What the console cannot set on a Swarm task is the operator's to set on each node, and the page says so.
    assert "<dt>On every node</dt>" in page and "dockerd --no-new-privileges" in page
    assert "Docker Swarm" in page_of(staff_client.get("/pools/"))
    assert f"/pools/{swarm_pool.id}/nodes/new/" not in page
    # Offered to its owner, as any dedicated pool, and to no one else.
    assert pool_list_for(owner).filter(id=swarm_pool.id).exists()
    assert not pool_list_for(other_user).filter(id=swarm_pool.id).exists()


def test_a_public_swarm_pool_is_offered_to_every_user_and_its_nodes_take_no_ones_quota(
    staff_client, swarm_manager, flavors, owner, other_user
):
    # Its services' tasks get networks of their own (tests/services/test_swarm_network_isolation.py).
    response = staff_client.post("/pools/new/", pool_form(name="swarm-pub", kind="swarm", manager_url=swarm_manager))

    assert response.status_code == 302, page_of(response)
    pool = ResourcePool.objects.get(name="swarm-pub")
    assert pool.is_public and pool.owner is None and pool.nodes.count() == 1
    assert pool_list_for(owner).filter(id=pool.id).exists()
    assert pool_list_for(other_user).filter(id=pool.id).exists()
    assert holding_of(owner).vcpus == 0 and holding_of(other_user).vcpus == 0


def test_a_swarm_pools_nodes_are_not_added_by_hand_and_a_swarm_is_one_pool(staff_client, swarm_pool):
    response = staff_client.post(
        f"/pools/{swarm_pool.id}/nodes/new/", {"name": "extra", "docker_host": "unix:///var/run/docker.sock"}
    )
    assert response.status_code == 302
    assert "its nodes are the swarm" in page_of(staff_client.get(response["Location"]))
    assert swarm_pool.nodes.count() == 1

    again = staff_client.post("/pools/new/", swarm_form(name="swarm-b", manager_url=swarm_pool.manager_url))
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


def test_a_dedicated_swarm_pool_takes_its_owners_quota_for_the_swarms_nodes(
    staff_client, swarm_manager, flavors, owner
):
    (listed,) = swarm.swarm_nodes(swarm_manager)
    UserQuota.objects.create(user=owner, vcpus=listed.cpu_count - 1)

    response = staff_client.post("/pools/new/", swarm_form(name="swarm-q", manager_url=swarm_manager))

    assert response.status_code == 400
    assert f"have {listed.cpu_count} vCPUs; owner is short of quota" in page_of(response)
    assert not ResourcePool.objects.filter(name="swarm-q").exists() and not Node.objects.exists()


def test_a_node_that_joins_later_beyond_the_quota_is_held_back_until_enabled_with_room(staff_client, swarm_pool, owner):
    (listed,) = swarm.swarm_nodes(swarm_pool.manager_url)
    # The console has not seen the node yet (as when it joins the swarm later),
    # and the owner's quota has no room for it any more.
    Node.objects.filter(pool=swarm_pool).delete()
    quota = UserQuota.objects.create(user=owner, vcpus=listed.cpu_count - 1)

    nodes_refresh()

    (node,) = swarm_pool.nodes.all()
    assert not node.is_enabled and not node.is_offered
    assert node.last_error.startswith("Not used: it joined the swarm after the pool was created")
    assert "vCPU quota exceeded" in node.last_error
    assert holding_of(owner).vcpus == 0
    nodes_refresh()  # the reason stays while it is held back
    node.refresh_from_db()
    assert not node.is_enabled and "vCPU quota exceeded" in node.last_error
    assert "vCPU quota exceeded" in page_of(staff_client.get(f"/pools/nodes/{node.id}/edit/"))

    enable = {"is_enabled": "on", "gpu_count": "0"}
    refused = staff_client.post(f"/pools/nodes/{node.id}/edit/", enable)
    assert refused.status_code == 400 and "owner is short of quota" in page_of(refused)
    assert not Node.objects.get(id=node.id).is_enabled

    quota.vcpus = listed.cpu_count
    quota.save()
    assert staff_client.post(f"/pools/nodes/{node.id}/edit/", enable).status_code == 302
    node.refresh_from_db()
    assert node.is_enabled and node.is_offered and node.last_error == ""
    assert holding_of(owner).vcpus == listed.cpu_count
