"""An operator in Chromium creates a Swarm pool by its manager's URL and sees
the swarm's node on the pool's page; the
owner's service on it shows each instance as a Swarm task on its node.
Screenshots: /tmp/swarm-*.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from pools.models import PoolKind, ResourcePool
from services.choices import ServiceStatus
from services.lifecycle import service_deploy_run
from services.runtime import swarm
from tests.e2e.test_pool_pages import log_in_as
from tests.factories import create_service, make_staff, make_version
from tests.services.test_swarm_lifecycle import deploy_settled

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path("/tmp")


def test_an_operator_creates_a_swarm_pool_and_a_service_on_it_shows_its_tasks(
    live_server, page, owner, flavors, swarm_manager, enqueued, settings
):
    make_staff("operator")
    log_in_as(page, live_server, "operator")
    page.goto(f"{live_server.url}/pools/new/")
    page.fill("#id_name", "swarm-e2e")
    page.check("input[name=kind][value=swarm]")
    page.fill("#id_manager_url", swarm_manager)
    page.fill("#id_cpu_overcommit", "8")
    page.check("input[name=access][value=dedicated]")
    page.fill("#id_owner", "owner")
    page.screenshot(path=str(SCREENSHOTS / "swarm-pool-form.png"), full_page=True)
    page.click("form.pool-form button[type=submit]")
    page.wait_for_selector("h1:has-text('swarm-e2e')")
    pool = ResourcePool.objects.get(name="swarm-e2e")
    node = pool.nodes.get()
    (listed,) = swarm.swarm_nodes(swarm_manager)
    assert pool.kind == PoolKind.SWARM
    assert "Created Swarm pool swarm-e2e with its 1 node." in page.inner_text(".messages")
    assert "Docker Swarm, manager" in page.inner_text("#pool-kind")
    row = page.inner_text(f"#node-{node.id}")
    assert "Ready" in row and f"{listed.cpu_count} CPUs" in row and "127.0.0.1" in row
    assert page.locator("#head-actions >> text=Add node").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "swarm-pool.png"), full_page=True)

    service = create_service(owner, make_version(owner), pool="swarm-e2e", name="on-swarm", instance_count=2)
    service_deploy_run(service_id=service.id)
    assert deploy_settled(service.id).status == ServiceStatus.RUNNING
    page.context.clear_cookies()
    log_in_as(page, live_server, "owner")
    page.goto(f"{live_server.url}/services/{service.id}/")
    instances = page.inner_text("section.card:has(h2:text('Instances'))")
    assert instances.count("Swarm task, slot") == 2
    assert instances.count(node.name) == 2
    for instance in service.instances.all():
        assert f"127.0.0.1:{instance.host_port}" in instances
    page.screenshot(path=str(SCREENSHOTS / "swarm-service.png"), full_page=True)
    swarm.remove_version_service(swarm_manager, f"rts-{service.id}-{service.configs.get().id}")


def test_a_node_held_back_by_the_quota_says_why_and_cannot_be_enabled_without_room(
    live_server, page, owner, flavors, swarm_manager
):
    from pools.models import Node, UserQuota
    from services.reconcile import nodes_refresh

    make_staff("operator")
    pool = ResourcePool.objects.create(
        name="swarm-held", kind=PoolKind.SWARM, manager_url=swarm_manager, is_public=False, owner=owner
    )
    (listed,) = swarm.swarm_nodes(swarm_manager)
    UserQuota.objects.create(user=owner, vcpus=listed.cpu_count - 1)
    nodes_refresh()
    node = Node.objects.get(pool=pool)
    assert not node.is_enabled

    log_in_as(page, live_server, "operator")
    page.goto(f"{live_server.url}/pools/{pool.id}/")
    row = page.inner_text(f"#node-{node.id}")
    assert "Disabled" in row and "joined the swarm after the pool was created" in row
    page.goto(f"{live_server.url}/pools/nodes/{node.id}/edit/")
    page.check("input[name=is_enabled]")
    page.click("form.node-form button[type=submit]")
    page.wait_for_selector(".field.invalid input[name=is_enabled]")
    assert "owner is short of quota" in page.inner_text("form.node-form")
    page.screenshot(path=str(SCREENSHOTS / "swarm-node-held.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SCREENSHOTS / "swarm-node-held-phone.png"), full_page=True)
    assert not Node.objects.get(id=node.id).is_enabled
