"""Several versions in the Deploy wizard, in real Chromium: rows are added and
removed in place, a 70/30 gray launch deploys and runs, a broken rule is shown
on its row and field with every row kept. The screenshots of the form with two
rows are the ones in docs/ (test-artifacts/docs-deploy*.png)."""

from __future__ import annotations

import pytest

from pools.models import ResourcePool
from services.choices import ServiceStatus
from services.models import Service
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import DEMO_IMAGE_V2, add_node, make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RATIO_SUM_MESSAGE = "Traffic ratios must add up to 100%; they add up to 90%."


@pytest.fixture
def second_version(owner, demo_version):
    return make_version(owner, version="2.0.0", image=DEMO_IMAGE_V2)


def open_deploy_form(page, live_server) -> None:
    log_in(page, live_server)
    page.goto(f"{live_server.url}/services/deploy/")


def add_version_row(page) -> None:
    count = page.locator(".version-row").count()
    page.click("#add-version-row")
    page.wait_for_function(f"document.querySelectorAll('.version-row').length === {count + 1}")


def fill_two_rows(page, first, second, weights=("70", "30")) -> None:
    """Name the service, choose `first` on a paid specification, add a row for `second`, split the traffic."""
    page.fill("#id_name", "gray-launch")
    page.select_option("#id_app_version", str(first.id))
    page.check("#flavor-options input[value='cpu.1u512m']")
    add_version_row(page)
    page.select_option("#id_r2-app_version", str(second.id))
    page.fill("#id_weight", weights[0])
    page.fill("#id_r2-weight", weights[1])


@pytest.mark.docker
def test_a_70_30_gray_launch_deploys_through_the_wizard_and_runs(
    celery_stack, live_server, page, owner, pool, flavors, demo_version, second_version
):
    open_deploy_form(page, live_server)
    # One row takes all the traffic: no ratio, no row heading, nothing to remove.
    assert page.locator("#weight-field").is_hidden()
    assert page.locator(".version-row-head").is_hidden()

    fill_two_rows(page, demo_version, second_version)
    row2 = page.locator("#r2-version-row")
    assert page.locator("#weight-field").is_visible()
    assert row2.locator("h3").inner_text() == "Row 2"
    # The added row starts with no version chosen for the user, on a paid specification.
    assert row2.locator("input[name='r2-flavor']:checked").get_attribute("value") == "cpu.1u512m"
    row2.locator("[data-add-env]").click()
    row2.locator(".env-row").nth(1).locator("input").first.fill("MODE")
    row2.locator(".env-row").nth(1).locator("input").nth(1).fill("canary")
    assert page.inner_text("#ratio-total output") == "100"

    page.click("#deploy-submit")
    page.wait_for_url(f"{live_server.url}/")

    service = Service.objects.get(owner=owner, name="gray-launch")
    assert page.locator(f"tr#service-{service.id}").is_visible()
    assert page.locator(".message.success").inner_text() == "Service gray-launch is deploying."
    page.wait_for_selector(f"tr#service-{service.id}[data-status=running]", timeout=60_000)
    assert page.inner_text(f"#service-{service.id} .instances-cell").strip() == "2/2"
    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING
    configs = list(service.configs.order_by("position"))
    assert [(c.app_version, c.weight, c.flavor.code, c.envs) for c in configs] == [
        (demo_version, 70, "cpu.1u512m", {}),
        (second_version, 30, "cpu.1u512m", {"MODE": "canary"}),
    ]


def test_a_ratio_sum_off_100_is_shown_on_the_second_rows_ratio_and_every_row_is_kept(
    live_server, page, owner, pool, flavors, demo_version, second_version
):
    open_deploy_form(page, live_server)
    fill_two_rows(page, demo_version, second_version, weights=("60", "30"))
    assert page.inner_text("#ratio-total output") == "90"
    assert "off" in page.get_attribute("#ratio-total", "class")

    page.click("#deploy-submit")
    page.wait_for_load_state()

    assert page.url == f"{live_server.url}/services/deploy/"
    ratio = page.locator("#r2-weight-field")
    assert "invalid" in ratio.get_attribute("class")
    assert ratio.locator(".field-error").inner_text() == RATIO_SUM_MESSAGE
    assert page.locator(".field.invalid").count() == 1
    assert page.inner_text(".form-errors .row-error") == f"Row 2 · Traffic ratio: {RATIO_SUM_MESSAGE}"
    # Every row as the user left it.
    assert page.locator(".version-row").count() == 2
    assert page.input_value("#id_app_version") == str(demo_version.id)
    assert page.input_value("#id_r2-app_version") == str(second_version.id)
    assert (page.input_value("#id_weight"), page.input_value("#id_r2-weight")) == ("60", "30")
    assert page.locator("#r2-version-row input[name='r2-flavor']:checked").get_attribute("value") == "cpu.1u512m"
    assert not Service.objects.exists()
    page.screenshot(path=ARTIFACTS / "deploy-versions-invalid.png", full_page=True)

    # The link in the summary leads to the field; fixing the ratio deploys.
    page.click(".form-errors .row-error a")
    assert page.url.endswith("#r2-weight-field")
    page.fill("#id_weight", "70")
    page.click("#deploy-submit")
    page.wait_for_url(f"{live_server.url}/")
    assert [c.weight for c in Service.objects.get().configs.order_by("position")] == [70, 30]


def test_rows_are_removed_in_place_down_to_the_last_which_takes_all_the_traffic(
    live_server, page, owner, pool, flavors, demo_version, second_version
):
    third = make_version(owner, version="3.0.0")
    open_deploy_form(page, live_server)
    page.evaluate("window.__samePage = true")
    fill_two_rows(page, demo_version, second_version)
    add_version_row(page)
    page.select_option("#id_r3-app_version", str(third.id))
    assert page.locator(".version-row h3").all_inner_texts() == ["Row 1", "Row 2", "Row 3"]

    page.locator("#r2-version-row [data-remove-row]").click()
    assert page.locator(".version-row h3").all_inner_texts() == ["Row 1", "Row 2"]
    assert page.input_value("#id_r3-app_version") == str(third.id)

    page.locator("#version-row [data-remove-row]").click()
    # One row left: it takes all the traffic, and cannot be removed.
    assert page.locator(".version-row").count() == 1
    assert page.input_value("#id_r3-weight") == "100"
    assert page.locator("#r3-weight-field").is_hidden()
    assert page.locator("#r3-version-row [data-remove-row]").is_hidden()
    assert page.evaluate("window.__samePage === true")  # no reload on the way

    page.check("#r3-flavor-options input[value='cpu.1u1g.free']")  # free is fine for one version
    page.click("#deploy-submit")
    page.wait_for_url(f"{live_server.url}/")
    (config,) = Service.objects.get().configs.all()
    assert (config.app_version, config.weight, config.flavor.code) == (third, 100, "cpu.1u1g.free")


def test_a_pool_change_refreshes_the_specifications_of_every_row(
    live_server, page, owner, pool, flavors, demo_version, second_version
):
    big = ResourcePool.objects.create(name="big-one", is_public=False, owner=owner)
    add_node(big, "big-1", cpus=65, memory_mib=65536)
    open_deploy_form(page, live_server)
    fill_two_rows(page, demo_version, second_version)
    assert page.locator("#r2-flavor-options input[value='cpu.64u8g']").is_disabled()

    page.check(f"input[name=pool][value='{big.id}']")

    page.wait_for_function("!document.querySelector(\"#r2-flavor-options input[value='cpu.64u8g']\").disabled")
    assert page.locator("#flavor-options input[value='cpu.64u8g']").is_enabled()
    # Each row keeps the specification it had.
    assert page.locator("#flavor-options input:checked").get_attribute("value") == "cpu.1u512m"
    assert page.locator("#r2-flavor-options input:checked").get_attribute("value") == "cpu.1u512m"


@pytest.mark.parametrize(
    ("width", "height", "name"), [(1440, 900, "docs-deploy.png"), (390, 844, "docs-deploy-phone.png")]
)
def test_the_form_with_two_rows_fits_the_screen(
    live_server, page, owner, pool, flavors, demo_version, second_version, width, height, name
):
    page.set_viewport_size({"width": width, "height": height})
    open_deploy_form(page, live_server)
    page.fill("#id_description", "Fraud scores: 2.0.0 takes 30 % of the calls")
    fill_two_rows(page, demo_version, second_version)
    page.fill("#version-row input[name=env_key]", "THREADS")
    page.fill("#version-row input[name=env_value]", "4")

    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for card in page.locator(".card").all():
        assert card.evaluate("element => element.scrollWidth <= element.clientWidth")
    page.evaluate("document.activeElement.blur()")  # no focus ring in the docs
    page.screenshot(path=ARTIFACTS / name, full_page=True)
