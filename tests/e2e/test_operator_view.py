"""An operator in Chromium: every user's services with their owners and the
overview line, another user's service opened and stopped (the event names the
operator), and the page fits a phone."""

from __future__ import annotations

import pytest

from services.choices import ServiceStatus
from services.models import Instance, Service, ServiceEvent
from tests.e2e.conftest import ARTIFACTS
from tests.factories import add_node, make_service, make_user, make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def operators_world(owner, other_user, pool, flavors):
    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    add_node(pool, "gpu-node-2", is_reachable=False)
    local = pool.nodes.get(name="local")
    for user, names in ((owner, ["fraud-check", "churn-score"]), (other_user, ["ocr-invoices"])):
        version = make_version(user)
        for name in names:
            service = make_service(user, pool, version=version, flavor=flavors["small"], name=name)
            Instance.objects.create(
                service=service,
                config=service.configs.get(),
                index=0,
                node=local,
                container_name=f"{name}-0",
                is_healthy=True,
            )
    return operator


def log_in_as(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pass-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def test_an_operator_sees_every_users_services_and_stops_one(live_server, page, operators_world):
    page.set_viewport_size({"width": 1440, "height": 900})
    log_in_as(page, live_server, "operator")
    page.click("text=All users (operators)")
    page.wait_for_url("**/?scope=all")

    rows = page.locator("table.services tbody tr")
    assert rows.count() == 3
    assert page.locator("table.services th", has_text="Owner").count() == 1
    overview = page.locator("#operator-overview").inner_text()
    assert "local 3" in overview and "gpu-node-2 0" in overview
    assert "engines not answering: gpu-node-2" in overview
    page.screenshot(path=str(ARTIFACTS / "operators-list.png"), full_page=True)

    page.select_option("select[name=owner]", label="other")
    page.click("#list-controls button[type=submit]")
    page.wait_for_url("**owner=*")
    assert page.locator("table.services tbody tr").count() == 1

    page.click("text=ocr-invoices")
    assert "Owner: other" in page.locator(".operator-note").inner_text()
    assert page.locator("#tab-prediction").count() == 0
    assert [b.strip() for b in page.locator("#head-actions button").all_inner_texts()] == ["Stop"]
    page.screenshot(path=str(ARTIFACTS / "operators-service.png"), full_page=True)
    page.click("#head-actions button:has-text('Stop')")
    with page.expect_navigation():
        page.locator("#confirm-dialog button.confirm-ok").click()

    service = Service.objects.get(name="ocr-invoices")
    assert service.status == ServiceStatus.STOPPING
    assert ServiceEvent.objects.filter(service=service, message="Stop requested by operator").exists()
    assert "Stop requested by operator" in page.content()


def test_the_operators_list_fits_a_phone(live_server, page, operators_world):
    page.set_viewport_size({"width": 390, "height": 844})
    log_in_as(page, live_server, "operator")
    page.goto(f"{live_server.url}/?scope=all")

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide"
