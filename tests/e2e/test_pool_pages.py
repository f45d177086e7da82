"""An operator in Chromium: a pool created from the Pools page (a bad
overcommit first, refused on its field), the local Docker engine added as its
node with the capacity read from it, and the capacity bars on the pool's page
and the list. Screenshots: /tmp/pool-*.png."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from pools.models import Node, ResourcePool
from services import runtime
from services.choices import ServiceStatus
from tests.factories import add_node, make_pool, make_service, make_staff, make_version, place_instance

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path("/tmp")


def log_in_as(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def bar_width(locator) -> float:
    """How much of its bar a meter fills, 0-1, as drawn."""
    return locator.evaluate(
        "meter => [...meter.children].reduce((sum, part) => sum + part.getBoundingClientRect().width, 0)"
        " / meter.getBoundingClientRect().width"
    )


def test_an_operator_creates_a_pool_adds_the_local_engine_and_sees_the_capacity_bars(
    live_server, page, owner, other_user, flavors
):
    make_staff("operator")
    engine = runtime.engine_info(settings.DOCKER_HOST)
    log_in_as(page, live_server, "operator")

    page.click(".topbar nav >> text=Pools")
    page.wait_for_url("**/pools/")
    page.click("text=New pool")
    page.fill("#id_name", "e2e-pool")
    page.fill("#id_description", "Pool made in the browser test")
    page.fill("#id_cpu_overcommit", "0.5")
    page.fill("#id_memory_overcommit", "4")
    page.click("form.pool-form button[type=submit]")
    page.wait_for_selector(".field.invalid #id_cpu_overcommit")
    assert "CPU overcommit must be from 1.0 (none) to 16.0. 0.5 is out of that range." in page.content()
    assert not ResourcePool.objects.filter(name="e2e-pool").exists()
    page.screenshot(path=str(SCREENSHOTS / "pool-form-invalid.png"), full_page=True)

    page.fill("#id_cpu_overcommit", "8")
    page.click("form.pool-form button[type=submit]")
    pool = None
    page.wait_for_selector("h1:has-text('e2e-pool')")
    pool = ResourcePool.objects.get(name="e2e-pool")
    assert page.url == f"{live_server.url}/pools/{pool.id}/"

    page.click("#head-actions >> text=Add node")
    page.fill("#id_name", "local-e2e")
    page.fill("#id_docker_host", settings.DOCKER_HOST)
    page.fill("#id_gpu_count", "0")
    page.screenshot(path=str(SCREENSHOTS / "pool-node-add.png"), full_page=True)
    page.click("form.node-form button[type=submit]")
    page.wait_for_selector("#pool-nodes table.nodes")
    node = Node.objects.get(name="local-e2e")
    assert (node.pool_id, node.cpu_count, node.memory_mib) == (pool.id, engine.cpu_count, engine.memory_mib)
    assert f"Added node local-e2e: its engine has {engine.cpu_count} vCPUs" in page.inner_text(".messages")
    cpu_total = engine.cpu_count * 8
    assert f"0 / {cpu_total} vCPU" in page.inner_text(f"#node-{node.id}")

    # Three services' instances on the node: the bars fill, one segment each.
    version = make_version(owner)
    other_version = make_version(other_user)
    for user, service_version, name, flavor, count in (
        (owner, version, "fraud-check", flavors["small"], 3),
        (owner, version, "churn-score", flavors["free"], 1),
        (other_user, other_version, "ocr-invoices", flavors["small"], 2),
    ):
        service = make_service(user, pool, version=service_version, flavor=flavor, name=name, instance_count=count)
        for index in range(count):
            place_instance(service, node, index=index)
    make_service(other_user, pool, version=other_version, name="idle-one", status=ServiceStatus.STOPPED)
    page.reload()

    row = page.locator(f"#node-{node.id}")
    assert row.locator(".meter-segment").count() == 12  # 6 instances, in the vCPU and the memory bar
    assert "6.3 / " in row.inner_text()  # 6 x 1.05 vCPU
    assert "Answering" in row.inner_text()
    expected_cpu = 6.3 / cpu_total
    assert bar_width(row.locator(".meter").first) == pytest.approx(expected_cpu, abs=0.02)
    summary_cpu = page.locator("#pool-capacity .meter").first
    assert bar_width(summary_cpu) == pytest.approx(expected_cpu, abs=0.02)
    assert page.locator("#pool-services tbody tr").count() == 4
    row.locator("summary").click()
    assert "ocr-invoices #1 (other)" in row.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "pool-detail.png"), full_page=True)

    # A dedicated pool whose (made-up) engine stopped answering, beside it on the list.
    dedicated = make_pool("alice-gpu", owner=owner, local_node=None)
    down = add_node(dedicated, "gpu-a", cpus=16, memory_mib=65536, gpus=2, is_reachable=False)
    Node.objects.filter(id=down.id).update(last_error="Docker engine at tcp://gpu-a:2375 does not answer")
    page.click("text=← Resource pools")
    page.wait_for_url("**/pools/")
    assert "1 not answering" in page.locator(f"#pool-{dedicated.id}").inner_text()
    pool_row = page.locator(f"#pool-{pool.id}")
    assert "6.3 / " in pool_row.locator(".cpu-cell").inner_text()
    assert bar_width(pool_row.locator(".cpu-cell .meter")) == pytest.approx(expected_cpu, abs=0.02)
    assert pool_row.locator(".services-cell").inner_text() == "4"
    page.screenshot(path=str(SCREENSHOTS / "pool-list.png"), full_page=True)

    page.click(f"#pool-{pool.id} >> text=Edit")
    page.wait_for_selector("form.pool-form")
    page.screenshot(path=str(SCREENSHOTS / "pool-edit.png"), full_page=True)
    page.goto(f"{live_server.url}/pools/nodes/{node.id}/edit/")
    page.screenshot(path=str(SCREENSHOTS / "pool-node-edit.png"), full_page=True)

    # On a phone, nothing makes the pages wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    for path, name in ((f"/pools/{pool.id}/", "pool-detail-phone.png"), ("/pools/", "pool-list-phone.png")):
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Deleting the pool is refused while it has services, naming them.
    page.goto(f"{live_server.url}/pools/{pool.id}/")
    page.click("#head-actions button:has-text('Delete')")
    with page.expect_navigation():
        page.locator("#confirm-dialog button.confirm-ok").click()
    assert "still has 4 services: churn-score (owner), fraud-check (owner)" in page.inner_text(".messages")
    assert ResourcePool.objects.filter(id=pool.id).exists()
