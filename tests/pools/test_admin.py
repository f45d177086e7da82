"""The operators' admin pages for pools, nodes and flavors: messages on the
field, not a database constraint; forms that cannot contradict themselves."""

from datetime import timedelta

import pytest
from django.utils import timezone

from pools.models import Flavor, Node, ResourcePool
from tests.factories import add_node, make_pool, make_service

pytestmark = pytest.mark.django_db


def test_a_flavor_with_negative_cpus_gets_a_message_on_the_field(admin_client):
    response = admin_client.post(
        "/admin/pools/flavor/add/",
        {"code": "cpu.bad", "display_name": "Bad", "cpus": "-1", "memory_mib": "8", "gpus": "0", "sort_order": "0"},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "A flavor needs more than 0 vCPUs." in page
    assert "A flavor needs at least 16 MiB of memory." in page
    assert "flavor_cpus_positive" not in page
    assert not Flavor.objects.filter(code="cpu.bad").exists()


# --- Pools: whether a pool is public follows from its owner ------------------------------------


def pool_form(**changes) -> dict:
    return {
        "name": "gpu-pool",
        "description": "",
        "owner": "",
        "nodes-TOTAL_FORMS": "0",
        "nodes-INITIAL_FORMS": "0",
        "nodes-MIN_NUM_FORMS": "0",
        "nodes-MAX_NUM_FORMS": "1000",
        **changes,
    }


def test_the_pool_form_asks_for_an_owner_and_no_public_box(admin_client):
    page = admin_client.get("/admin/pools/resourcepool/add/").content.decode()

    assert 'name="owner"' in page
    assert 'name="is_public"' not in page
    assert "Leave empty for a public pool, offered to every user" in page


def test_a_pool_without_an_owner_is_saved_public(admin_client):
    response = admin_client.post("/admin/pools/resourcepool/add/", pool_form())

    assert response.status_code == 302
    assert ResourcePool.objects.values_list("is_public", "owner").get() == (True, None)


def test_a_pool_with_an_owner_is_saved_dedicated_whatever_is_public_says(admin_client, owner):
    response = admin_client.post("/admin/pools/resourcepool/add/", pool_form(owner=owner.id, is_public="on"))

    assert response.status_code == 302
    assert ResourcePool.objects.values_list("is_public", "owner").get() == (False, owner.id)


def test_giving_a_public_pool_an_owner_makes_it_dedicated_and_taking_it_away_public(admin_client, owner):
    pool = make_pool("gpu-pool", local_node=None)
    url = f"/admin/pools/resourcepool/{pool.id}/change/"

    assert admin_client.post(url, pool_form(owner=owner.id)).status_code == 302
    pool.refresh_from_db()
    assert (pool.is_public, pool.owner) == (False, owner)

    assert admin_client.post(url, pool_form()).status_code == 302
    pool.refresh_from_db()
    assert (pool.is_public, pool.owner) == (True, None)


def test_the_admin_dedicates_a_pool_by_the_pool_pages_rules(admin_client, owner, other_user, settings):
    pool = make_pool("gpu-pool", local_node=None)
    add_node(pool, "big", cpus=16, memory_mib=512)
    settings.QUOTA_VCPUS = 15
    url = f"/admin/pools/resourcepool/{pool.id}/change/"

    page = admin_client.post(url, pool_form(owner=owner.id)).content.decode()

    assert "Pool gpu-pool&#x27;s nodes have 16 vCPUs, which would take owner&#x27;s vCPU quota to 16 of 15." in page
    pool.refresh_from_db()
    assert (pool.is_public, pool.owner) == (True, None)

    settings.QUOTA_VCPUS = 16
    make_service(other_user, pool, name="theirs")
    page = admin_client.post(url, pool_form(owner=owner.id)).content.decode()
    assert "Pool gpu-pool has services of other users: theirs (other)." in page
    pool.refresh_from_db()
    assert (pool.is_public, pool.owner) == (True, None)


def test_the_pool_list_says_whom_each_pool_is_offered_to(admin_client, owner):
    make_pool("everyones", local_node=None)
    make_pool("owners", owner=owner, local_node=None)

    page = admin_client.get("/admin/pools/resourcepool/").content.decode()

    assert "every user (public)" in page
    assert "owner (dedicated)" in page


# --- Nodes: capacity and the engine's state, read-only and short ---------------------------------


def test_the_pool_page_shows_each_nodes_capacity_and_engine_state_compactly(admin_client):
    pool = make_pool("gpu-pool", local_node=None)
    add_node(pool, "answering", cpus=4, memory_mib=512)
    add_node(pool, "refusing", is_reachable=False)
    add_node(pool, "new")
    Node.objects.exclude(name="new").update(checked_at=timezone.now() - timedelta(minutes=5))
    Node.objects.filter(name="refusing").update(last_error="connection refused")

    page = admin_client.get(f"/admin/pools/resourcepool/{pool.id}/change/").content.decode()

    assert "4 vCPUs · 512 MiB" in page
    assert "2 vCPUs · 8 GiB" in page
    assert "not read yet" in page and "Not checked yet" in page
    assert 'Answering<div class="engine-checked">checked 5\xa0minutes ago</div>' in page
    assert '<div class="engine-error">connection refused</div>' in page
    # The raw fields the two columns summarise are not columns of their own.
    for column in ("cpu_count", "memory_mib", "is_reachable", "last_error", "checked_at"):
        assert f"column-{column}" not in page


def test_the_node_pages_show_capacity_and_engine_state(admin_client):
    pool = make_pool("gpu-pool", local_node=None)
    node = add_node(pool, "answering")

    assert "not read yet" in admin_client.get("/admin/pools/node/").content.decode()
    assert "Not checked yet" in admin_client.get(f"/admin/pools/node/{node.id}/change/").content.decode()
