"""The Configuration Updates tab in real Chromium, with a real worker: the
rows show the running configuration, a second version is added and the
traffic split, the service goes Upgrading and back to Running on the new
configuration, and the history says so; a broken rule is shown on its row
and changes nothing."""

from __future__ import annotations

import pytest

from services.choices import ServiceStatus
from services.models import Service, ServiceUpdate
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import DEMO_IMAGE_V2, create_service, make_version
from tests.waiting import wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running(celery_stack, owner, pool, flavors, demo_version) -> Service:
    service = create_service(owner, demo_version, name="live-svc", timeout_minutes=3)
    wait_for_status(service.id, [ServiceStatus.RUNNING], timeout=60)
    return service


def test_adding_a_version_and_splitting_the_traffic_from_the_tab(live_server, page, owner, running, demo_version):
    second = make_version(owner, version="2.0.0", image=DEMO_IMAGE_V2)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/services/{running.id}/?tab=update")

    # One row, as deployed; its ratio is all the traffic and hidden.
    assert page.locator(".version-row").count() == 1
    assert page.locator("#id_app_version").input_value() == str(demo_version.id)
    assert page.locator("#flavor-options input[value='cpu.1u512m']").is_checked()
    assert "No update yet" in page.inner_text("#update-history")

    page.click("#add-version-row")
    page.wait_for_function("document.querySelectorAll('.version-row').length === 2")
    # Only the service's own AI application's versions are offered.
    options = page.locator("#id_r2-app_version option").all_inner_texts()
    assert [text.split(" (")[0] for text in options[1:]] == ["demo-model · 2.0.0", "demo-model · 1.0.0"]
    page.select_option("#id_r2-app_version", str(second.id))
    page.fill("#id_weight", "60")
    page.fill("#id_r2-weight", "40")
    assert page.inner_text("#ratio-total output") == "100"
    page.screenshot(path=ARTIFACTS / "update-tab-two-rows.png", full_page=True)
    page.click("#update-submit")

    page.wait_for_url(f"{live_server.url}/services/{running.id}/?tab=update")
    assert "is Upgrading" in page.inner_text(".message.success")
    wait_for_status(running.id, [ServiceStatus.RUNNING], timeout=60)
    page.reload()
    history = page.locator("#update-history tbody tr").first
    assert history.locator(".badge").inner_text() == "Succeeded"
    assert "demo-model 2.0.0 · 40%" in history.locator("td").nth(4).inner_text()
    assert "demo-model 1.0.0 · 100%" in history.locator("td").nth(3).inner_text()
    assert page.locator(".version-row").count() == 2
    page.screenshot(path=ARTIFACTS / "update-tab-history.png", full_page=True)
    configs = [(c.app_version.version, c.weight) for c in running.configs.order_by("position")]
    assert configs == [("1.0.0", 60), ("2.0.0", 40)]


def test_a_broken_rule_is_shown_on_its_row_and_changes_nothing(live_server, page, owner, running, demo_version):
    second = make_version(owner, version="2.0.0", image=DEMO_IMAGE_V2)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/services/{running.id}/?tab=update")
    page.click("#add-version-row")
    page.wait_for_function("document.querySelectorAll('.version-row').length === 2")
    page.select_option("#id_r2-app_version", str(second.id))
    page.fill("#id_weight", "60")
    page.fill("#id_r2-weight", "30")
    page.click("#update-submit")

    page.wait_for_selector("#r2-weight-field.invalid")
    assert "they add up to 90%" in page.inner_text("#r2-weight-field")
    # Both rows are kept as they were posted.
    assert page.locator(".version-row").count() == 2
    assert page.locator("#id_r2-weight").input_value() == "30"
    page.screenshot(path=ARTIFACTS / "update-tab-invalid.png", full_page=True)
    assert not ServiceUpdate.objects.exists()
    assert Service.objects.get(id=running.id).status == ServiceStatus.RUNNING
