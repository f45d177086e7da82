"""Where things sit on the list and the details page, at 1440 and 390 px (issue
11, item 9): Deploy at the list's upper left, Stop/Delete beside the service's
title, "Status" said once on the Overview. The screenshots it takes are the
ones in docs/ (test-artifacts/docs-*.png)."""

from __future__ import annotations

import pytest

from services.choices import ServiceStatus
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import add_event, add_instance, make_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def services(owner, pool, flavors, demo_version):
    running = make_service(
        owner,
        pool,
        version=demo_version,
        flavor=flavors["small"],
        name="fraud-detector",
        description="Scores card payments",
        instance_count=2,
    )
    for index in range(2):
        add_instance(running, index=index, host_port=32770 + index)
    add_event(running, "Deployment queued: 2 instance(s) on pool public-cpu")
    add_event(running, "Running: 2/2 instance(s) healthy")
    make_service(
        owner, pool, version=demo_version, flavor=flavors["small"], name="churn-model", status=ServiceStatus.STOPPED
    )
    make_service(
        owner,
        pool,
        version=demo_version,
        flavor=flavors["small"],
        name="sentiment-v2",
        status=ServiceStatus.FAILED,
        status_reason="GET /health on port 8080: HTTP 500, 180 s of 180",
    )
    return running


def box(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, selector
    return found


@pytest.mark.parametrize("width", [1440, 390])
def test_deploy_sits_at_the_lists_upper_left_and_stop_beside_the_title(live_server, page, services, width):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server)

    deploy = box(page, ".list-toolbar a:has-text('Deploy')")
    first_row = box(page, "table.services tbody tr")
    assert deploy["x"] < box(page, "input[name=q]")["x"] or deploy["y"] < box(page, "input[name=q]")["y"]
    assert deploy["y"] < first_row["y"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(ARTIFACTS / f"docs-list-{width}.png"), full_page=True)

    page.click("text=fraud-detector")
    page.wait_for_url(f"**/services/{services.id}/")
    title = box(page, ".title-row h1")
    stop = box(page, "#head-actions button:has-text('Stop')")
    if width >= 1000:
        # On the title's line, at the right; on a phone it may wrap under it.
        assert title["y"] <= stop["y"] + stop["height"] / 2 <= title["y"] + title["height"] + 4
    assert stop["y"] < box(page, ".tabs")["y"]
    labels = page.locator("main h2, main dt, main .facts > div > span:first-child").all_inner_texts()
    assert [label.strip() for label in labels].count("Status") <= 1
    assert page.locator(".title-row .badge").inner_text().strip() == "Running"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    # Nor does any card scroll sideways: on a phone, the instances and versions tables stack.
    assert page.locator("#service-instances tbody tr").count() >= 1
    for card in page.locator("main .card").all():
        assert card.evaluate("element => element.scrollWidth <= element.clientWidth"), card.inner_text()[:80]
    page.screenshot(path=str(ARTIFACTS / f"docs-details-{width}.png"), full_page=True)
