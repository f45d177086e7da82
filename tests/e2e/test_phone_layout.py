"""At a phone's width (390 px) no page is wider than the screen."""

from __future__ import annotations

import pytest

from services.choices import ServiceStatus
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import add_event, add_instance, make_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_no_page_is_wider_than_a_phone(browser, live_server, owner, pool, flavors, demo_version):
    service = make_service(
        owner, pool, version=demo_version, name="a-service-with-a-long-name", status=ServiceStatus.RUNNING
    )
    add_instance(service)
    add_event(service, "Running: 1/1 instance(s) healthy")
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        log_in(page, live_server)
        widths = {}
        for name, path in [
            ("list", "/"),
            ("deploy", "/services/deploy/"),
            ("details", f"/services/{service.id}/"),
            ("prediction", f"/services/{service.id}/?tab=prediction"),
            ("usage", f"/services/{service.id}/?tab=usage"),
            ("monitoring", f"/services/{service.id}/?tab=monitoring"),
            ("applications", "/applications/"),
            ("access keys", "/access/keys/"),
        ]:
            page.goto(live_server.url + path)
            widths[name] = page.evaluate("document.documentElement.scrollWidth")
            page.screenshot(path=str(ARTIFACTS / f"phone-{name.replace(' ', '-')}.png"), full_page=True)
        assert {name: width for name, width in widths.items() if width > 390} == {}
    finally:
        context.close()
