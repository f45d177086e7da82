"""The details page's Start/Stop/Delete buttons follow the status as it
changes, without a reload (issue: after Stop finished there was no Start)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import create_service

pytestmark = [pytest.mark.browser, pytest.mark.docker]


def head_buttons(page) -> list[str]:
    return [text.strip() for text in page.locator("#head-actions button").all_inner_texts()]


def test_the_buttons_follow_the_status_without_a_reload(
    celery_stack, live_server, page, owner, pool, flavors, demo_version
):
    service = create_service(owner, demo_version, name="live-buttons")
    log_in(page, live_server)
    page.goto(f"{live_server.url}/services/{service.id}/")
    page.evaluate("window.__sameDocument = true")

    # Deploying: only Delete; once Running (polled in), Stop appears beside it.
    page.wait_for_function(
        "document.querySelector('#head-actions') && document.querySelector('#head-actions').innerText.includes('Stop')",
        timeout=60_000,
    )
    assert head_buttons(page) == ["Stop", "Delete"]
    assert page.evaluate("window.__sameDocument === true")  # no reload happened

    page.click("#head-actions button:has-text('Stop')")
    # One question, in the page, saying what Stop does; nothing is sent before the answer.
    dialog = page.locator("#confirm-dialog")
    assert "Its containers are stopped" in dialog.inner_text()
    assert head_buttons(page) == ["Stop", "Delete"]
    with page.expect_navigation():
        dialog.locator("button.confirm-ok").click()
    page.wait_for_load_state()
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function("document.querySelector('#head-actions').innerText.includes('Start')", timeout=60_000)

    assert head_buttons(page) == ["Start", "Delete"]
    assert page.evaluate("window.__sameDocument === true")
    page.screenshot(path=str(ARTIFACTS / "detail-live-buttons.png"))


@pytest.mark.django_db(transaction=True)
def test_the_deploy_form_chooses_no_version_unless_a_versions_deploy_link_did(live_server, page, owner, pool, flavors):
    from tests.factories import make_version

    first = make_version(owner, version="1.0.0")
    second = make_version(owner, version="2.0.0")
    log_in(page, live_server)

    page.goto(f"{live_server.url}/services/deploy/")
    assert page.input_value("#id_app_version") == ""
    assert page.locator("#id_app_version option:checked").inner_text() == "Select a Normal version…"

    page.goto(f"{live_server.url}/applications/")
    page.locator(f"a[href$='?version={second.id}']").click()
    page.wait_for_load_state()
    assert page.input_value("#id_app_version") == str(second.id)
    assert str(first.id) != str(second.id)


@pytest.mark.django_db(transaction=True)
def test_delete_asks_once_in_the_page_and_cancel_keeps_the_service(
    live_server, page, owner, pool, flavors, demo_version
):
    from services.choices import ServiceStatus
    from services.models import Service
    from tests.factories import make_service

    service = make_service(owner, pool, version=demo_version, name="keep-me", status=ServiceStatus.RUNNING)
    log_in(page, live_server)
    page.goto(f"{live_server.url}/services/{service.id}/")

    page.click("#head-actions button:has-text('Delete')")
    # A second click while the question is open (a double click) asks nothing more.
    page.evaluate("document.querySelector('#head-actions form[data-confirm-danger] button').click()")
    dialogs = page.locator("dialog#confirm-dialog[open]")
    assert dialogs.count() == 1
    assert "cannot be undone" in dialogs.inner_text()
    dialogs.locator("button[value=cancel]").click()

    assert page.locator("dialog#confirm-dialog[open]").count() == 0
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
