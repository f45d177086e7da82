"""The service list in Chromium while a service moves: the poll replaces only
the row that is transitional (and the counts), leaves settled rows alone, the
columns keep their place, and the polling stops once nothing moves."""

from __future__ import annotations

import pytest

from services.choices import ServiceStatus
from services.models import Service
from tests.e2e.conftest import log_in
from tests.factories import make_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

COLUMN_LEFTS = "Array.from(document.querySelectorAll('table.services th')).map(th => th.getBoundingClientRect().left)"


def test_only_the_moving_row_is_refreshed_and_the_columns_stay_put(
    live_server, page, owner, pool, flavors, demo_version
):
    steady = make_service(owner, pool, version=demo_version, flavor=flavors["small"], name="steady-svc")
    moving = make_service(
        owner,
        pool,
        version=demo_version,
        flavor=flavors["small"],
        name="a-service-with-a-rather-long-name-that-wraps",
        status=ServiceStatus.DEPLOYING,
    )
    log_in(page, live_server)
    assert page.get_attribute("#list-poller", "hx-trigger") == "every 1s [!document.hidden]"
    page.evaluate(
        f"""() => {{
            document.getElementById('service-{steady.id}').__original = true;
            document.getElementById('service-{moving.id}').__original = true;
        }}"""
    )
    lefts_before = page.evaluate(COLUMN_LEFTS)
    # Wait for at least one poll to land, the row still Deploying.
    page.wait_for_function(f"!document.getElementById('service-{moving.id}').__original", timeout=10_000)
    assert page.evaluate(f"document.getElementById('service-{steady.id}').__original === true")

    Service.objects.filter(id=moving.id).update(status=ServiceStatus.RUNNING)
    page.wait_for_selector(f"tr#service-{moving.id}[data-status=running]", timeout=10_000)

    assert page.evaluate(COLUMN_LEFTS) == lefts_before
    assert page.evaluate(f"document.getElementById('service-{steady.id}').__original === true")
    assert page.inner_text("#list-counts").strip() == "Running 2"
    page.wait_for_function("!document.getElementById('list-poller').hasAttribute('hx-trigger')", timeout=5_000)
