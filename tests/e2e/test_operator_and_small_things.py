"""Operators' admin pages and a few small things of the console, in real
Chromium (issue 11, items 8 and 9)."""

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from pools.models import Flavor, Node, ResourcePool
from services.models import AIApplication, AIApplicationVersion
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import add_node, make_pool, make_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ENGINE_ERROR = (
    "Error while fetching server API version: ('Connection aborted.', "
    "ConnectionRefusedError(111, 'Connection refused'))"
)


def words(text: str) -> str:
    return " ".join(text.split())


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.fixture
def operator(db):
    return get_user_model().objects.create_superuser("operator", password="operator-pass-123")


def admin_log_in(page, live_server) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-pass-123")
    with page.expect_navigation():
        page.click("input[type=submit]")


# --- Item 8: operators --------------------------------------------------------------------


def test_the_pool_page_with_three_nodes_fits_1280_pixels(live_server, page, operator):
    pool = make_pool("gpu-pool-in-the-second-rack", local_node=None)
    for number in range(3):
        add_node(pool, f"rack-2-node-{number}", docker_host=f"tcp://10.20.0.{number}:2376", gpus=number)
    Node.objects.update(checked_at=timezone.now())
    Node.objects.filter(name="rack-2-node-2").update(is_reachable=False, last_error=ENGINE_ERROR)
    admin_log_in(page, live_server)

    page.goto(f"{live_server.url}/admin/pools/resourcepool/{pool.id}/change/")

    assert page.viewport_size["width"] == 1280
    page.screenshot(path=ARTIFACTS / "admin-pool-three-nodes-1280.png", full_page=True)
    assert no_horizontal_overflow(page)
    headers = [text.strip() for text in page.locator(".inline-group thead th").all_inner_texts()]
    assert [text for text in headers if text] == [
        "NAME",
        "DOCKER HOST",
        "ENABLED",
        "GPUS",
        "CAPACITY",
        "ENGINE",
        "DELETE?",
    ]
    assert page.locator("#nodes-0 td.field-capacity").inner_text() == "2 vCPUs · 8 GiB"
    assert words(page.locator("#nodes-0 td.field-engine_state").inner_text()) == "Answering checked just now"
    assert words(page.locator("#nodes-2 td.field-engine_state").inner_text()) == (
        f"Not answering checked just now {ENGINE_ERROR}"
    )


def test_a_pool_is_public_without_an_owner_and_dedicated_with_one(live_server, page, operator, owner):
    admin_log_in(page, live_server)

    page.goto(f"{live_server.url}/admin/pools/resourcepool/add/")
    # No "Is public" box to contradict the owner: the owner decides.
    assert page.locator("#id_is_public").count() == 0
    assert "Leave empty for a public pool" in page.inner_text(".field-owner")
    page.fill("#id_name", "owners-pool")
    page.select_option("#id_owner", label="owner")
    page.screenshot(path=ARTIFACTS / "admin-pool-add.png", full_page=True)
    with page.expect_navigation():
        page.click("input[name=_save]")
    page.goto(f"{live_server.url}/admin/pools/resourcepool/add/")
    page.fill("#id_name", "everyones-pool")
    with page.expect_navigation():
        page.click("input[name=_save]")

    assert dict(ResourcePool.objects.values_list("name", "is_public")) == {
        "owners-pool": False,
        "everyones-pool": True,
    }
    page.screenshot(path=ARTIFACTS / "admin-pool-list.png", full_page=True)
    assert "owner (dedicated)" in page.inner_text("#result_list")
    assert "every user (public)" in page.inner_text("#result_list")


def test_a_flavor_with_negative_cpus_gets_the_message_under_the_field(live_server, page, operator):
    admin_log_in(page, live_server)
    page.goto(f"{live_server.url}/admin/pools/flavor/add/")

    page.fill("#id_code", "cpu.bad")
    page.fill("#id_display_name", "Bad")
    page.fill("#id_cpus", "-1")
    page.fill("#id_memory_mib", "1024")
    with page.expect_navigation():
        page.click("input[name=_save]")

    page.screenshot(path=ARTIFACTS / "admin-flavor-negative-cpus.png", full_page=True)
    assert page.inner_text(".field-cpus .errorlist") == "A flavor needs more than 0 vCPUs."
    assert page.locator(".field-memory_mib .errorlist").count() == 0
    assert "flavor_cpus_positive" not in page.inner_text("body")
    assert not Flavor.objects.exists()


# --- Item 9: small things -----------------------------------------------------------------


def test_a_failed_login_keeps_the_user_name_and_shows_the_error_above_the_form(live_server, page, owner):
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "owner")
    page.fill("#id_password", "not-the-password")
    with page.expect_navigation():
        page.click("button[type=submit]")

    page.screenshot(path=ARTIFACTS / "login-failed.png", full_page=True)
    assert page.input_value("#id_username") == "owner"
    assert page.input_value("#id_password") == ""
    assert page.evaluate("document.activeElement.id") == "id_password"
    error = page.locator("[role=alert]")
    assert error.inner_text() == "Your username and password did not match. Try again."
    # Above the form, with room before the first label, not inside a label.
    assert page.evaluate("document.querySelector('[role=alert]').closest('form, label') === null")
    error_box = error.bounding_box()
    label_box = page.locator("label[for=id_username]").bounding_box()
    assert error_box["y"] + error_box["height"] + 8 <= label_box["y"]

    page.fill("#id_password", "owner-pass-123")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url == f"{live_server.url}/"


def test_register_shows_the_version_format_before_any_error(live_server, page, owner):
    log_in(page, live_server)
    page.goto(f"{live_server.url}/applications/")

    with page.expect_navigation():
        page.click("a.button.primary:has-text('Register')")

    assert page.locator(".field-error").count() == 0
    assert page.locator("#version-help").is_visible()
    assert page.inner_text("#version-help") == "Three numbers, e.g. 1.0.0."
    assert page.get_attribute("#id_version", "aria-describedby") == "version-help"
    page.screenshot(path=ARTIFACTS / "application-register.png", full_page=True)

    page.fill("#id_application_name", "new-model")
    page.fill("#id_version", "1.0")
    page.fill("#id_image", "new-model:1.0")
    with page.expect_navigation():
        page.click("form.wizard button[type=submit]")
    # The help stays, and the error says what is wrong beneath it.
    assert page.inner_text("#version-help") == "Three numbers, e.g. 1.0.0."
    assert page.inner_text(".field.invalid .field-error") == (
        "Version must look like 1.0.0 (three numbers separated by dots)."
    )


def test_add_version_shows_the_applications_description_and_keeps_it(live_server, page, owner):
    make_version(owner, version="1.0.0")
    AIApplication.objects.filter(name="demo-model").update(description="Classifies the demo's inputs")
    log_in(page, live_server)
    page.goto(f"{live_server.url}/applications/")

    with page.expect_navigation():
        page.click("a:has-text('Add version')")

    page.screenshot(path=ARTIFACTS / "application-add-version.png", full_page=True)
    assert page.inner_text("h1") == "Add a version to demo-model"
    assert page.inner_text("#application-name") == "demo-model"
    assert page.inner_text("#application-description") == "Classifies the demo's inputs"
    assert page.inner_text("#version-help") == "Three numbers, e.g. 1.0.0. demo-model has 1.0.0."
    assert no_horizontal_overflow(page)

    page.fill("#id_version", "1.0.0")
    page.fill("#id_image", "rts-demo-model:1.1.0")
    with page.expect_navigation():
        page.click("form.wizard button[type=submit]")
    # A refused version keeps the page about the same application.
    assert page.inner_text("h1") == "Add a version to demo-model"
    assert page.inner_text(".field.invalid .field-error") == "demo-model already has a version 1.0.0."
    assert page.input_value("#id_image") == "rts-demo-model:1.1.0"

    page.fill("#id_version", "1.1.0")
    with page.expect_navigation():
        page.click("form.wizard button[type=submit]")
    assert page.url == f"{live_server.url}/applications/"
    assert sorted(AIApplicationVersion.objects.values_list("version", flat=True)) == ["1.0.0", "1.1.0"]
    assert AIApplication.objects.get().description == "Classifies the demo's inputs"
    assert "Classifies the demo's inputs" in page.inner_text("#application-table")
