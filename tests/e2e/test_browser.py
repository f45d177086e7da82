"""The console in real Chromium: deploy through the wizard and watch the list update."""

import pytest

from services.choices import ServiceStatus
from services.models import Service
from tests.e2e.conftest import ARTIFACTS, log_in

pytestmark = pytest.mark.browser

INVALID_NAME_MESSAGE = "Name must start with a letter and contain only letters, digits, '-' and '_'."


def open_wizard(page, live_server) -> None:
    page.click("a.button.primary:has-text('Deploy')")
    page.wait_for_url(f"{live_server.url}/services/deploy/")


@pytest.mark.docker
def test_deploy_through_the_wizard_and_the_list_turns_running_without_reload(
    celery_stack, live_server, page, owner, pool, flavors, demo_version
):
    log_in(page, live_server)
    open_wizard(page, live_server)

    page.fill("#id_name", "wizard-svc")
    page.check(f"input[name=pool][value='{pool.id}']")
    page.wait_for_load_state("networkidle")  # a pool change fetches its flavors
    page.select_option("#id_app_version", str(demo_version.id))
    page.check("input[name=flavor][value='cpu.1u1g.free']")
    page.fill("#id_instance_count", "1")
    page.click("#add-env")
    rows = page.locator("#env-rows .env-row")
    assert rows.count() == 2
    # The server takes two seconds to start, so the list shows Deploying first.
    rows.nth(1).locator("input[name=env_key]").fill("STARTUP_DELAY_SECONDS")
    rows.nth(1).locator("input[name=env_value]").fill("2")
    page.screenshot(path=ARTIFACTS / "browser-deploy-form.png", full_page=True)

    page.click("#deploy-submit")
    page.wait_for_url(f"{live_server.url}/")
    service = Service.objects.get(owner=owner, name="wizard-svc")
    status_cell = f"#service-{service.id} .status-cell"
    first_seen = page.inner_text(status_cell).strip()
    assert page.locator(".message.success.transient").inner_text() == "Service wizard-svc is deploying."
    page.evaluate("window.__noReload = 1")

    page.wait_for_selector(f"tr#service-{service.id}[data-status=running]", timeout=30_000)

    assert first_seen == "Deploying"
    assert page.evaluate("window.__noReload") == 1  # htmx swapped the rows; the page never reloaded
    assert page.inner_text(status_cell).strip() == "Running"
    assert page.inner_text(f"#service-{service.id} .instances-cell").strip() == "1/1"
    # Nothing is transitional any more, so the rows stopped polling.
    assert page.get_attribute("#list-poller", "hx-get") is None
    # The banner that announced the deploy went with the Deploying it announced.
    assert page.locator(".message.success").count() == 0
    page.screenshot(path=ARTIFACTS / "browser-service-list.png", full_page=True)

    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING
    (config,) = service.configs.all()
    assert config.flavor.code == "cpu.1u1g.free"
    assert config.instance_count == 1
    assert config.envs == {"STARTUP_DELAY_SECONDS": "2"}

    page.click(f"#service-{service.id} a")
    page.wait_for_url(f"{live_server.url}/services/{service.id}/")
    assert page.inner_text("#detail-status").strip() == "Running"
    assert "Running: 1/1 instance(s) healthy" in page.inner_text(".timeline")
    assert "STARTUP_DELAY_SECONDS=2" in page.inner_text("body")
    assert "listening on :8080" in page.inner_text("pre.logs")
    page.screenshot(path=ARTIFACTS / "browser-service-detail.png", full_page=True)


def test_wizard_shows_the_error_of_an_invalid_name(live_server, page, owner, pool, flavors, demo_version):
    log_in(page, live_server)
    open_wizard(page, live_server)

    page.fill("#id_name", "9 lives!")
    page.select_option("#id_app_version", str(demo_version.id))
    page.check("input[name=flavor][value='cpu.1u1g.free']")
    page.click("#deploy-submit")
    page.wait_for_load_state()

    name_field = page.locator(".field.invalid", has=page.locator("#id_name"))
    assert name_field.locator(".field-error").inner_text() == INVALID_NAME_MESSAGE
    assert page.input_value("#id_name") == "9 lives!"  # what the user typed is kept
    assert page.input_value("#id_app_version") == str(demo_version.id)
    assert page.url == f"{live_server.url}/services/deploy/"
    assert page.locator(".field.invalid").count() == 1
    assert not Service.objects.exists()
    page.screenshot(path=ARTIFACTS / "browser-deploy-invalid.png", full_page=True)
