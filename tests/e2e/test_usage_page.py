"""The Usage page in Chromium: the per-day chart and the table, with a service
running now (its open interval grows), past days of public and dedicated
usage, a narrower range picked in the form, and the CSV link."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import add_instance, make_service
from tests.metering.test_selectors import instance_usage, node_usage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

from tests.e2e.conftest import ARTIFACTS, log_in  # noqa: E402


@pytest.fixture
def usage_history(owner, pool, flavors, demo_version):
    """A service running now (through the triggers), and a week of past usage."""
    running = make_service(owner, pool, version=demo_version, flavor=flavors["small"], name="fraud-detector")
    add_instance(running)
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    for days_ago in range(1, 8):
        day = midnight - timedelta(days=days_ago)
        instance_usage(owner, day + timedelta(hours=1), day + timedelta(hours=1 + days_ago), name="churn-model")
        instance_usage(
            owner,
            day + timedelta(hours=2),
            day + timedelta(hours=5),
            instance_id=2,
            service_id=uuid.UUID(int=2),
            name="ocr-invoices",
            flavor_code="cpu.1u1g",
            cpus=1,
            memory_mib=1024,
        )
        if days_ago % 2:
            node_usage(owner, day, day + timedelta(hours=6), pool_name="team-dedicated")
    return midnight.date()


def test_the_usage_page_shows_the_chart_and_the_table(live_server, page, usage_history):
    today = usage_history
    log_in(page, live_server)
    page.click(".topbar nav >> text=Usage")
    page.wait_for_url("**/usage/")

    assert page.locator(".topbar nav a.active").inner_text() == "Usage"
    chart = page.locator("svg#usage-chart")
    assert chart.is_visible()
    # Seven past days and today (the running service) have bars; the other 22 days none.
    bars = chart.locator("g.bar")
    assert bars.count() == 8
    assert chart.locator("rect.bar-nodes").count() == 4
    assert chart.locator("text.axis-label").count() >= 5
    days = [bars.nth(n).get_attribute("data-day") for n in range(bars.count())]
    assert days == sorted(days) and days[-1] == today.isoformat()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 900 and box["height"] > 150

    rows = page.locator("#usage-rows tbody tr")
    assert rows.count() == 7 * 2 + 4 + 1
    assert page.locator("#usage-rows tbody tr[data-kind=dedicated_pool]").count() == 4
    last = rows.last
    assert last.get_attribute("data-day") == today.isoformat()
    assert "fraud-detector" in last.inner_text() and "cpu.1u512m" in last.inner_text()
    assert float(page.locator("#total-node-hours").inner_text()) == 24.0
    page.screenshot(path="/tmp/usage.png", full_page=True)
    page.screenshot(path=str(ARTIFACTS / "usage.png"), full_page=True)
    # On a phone the page keeps to the screen's width (the table scrolls in its card).
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "usage-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # A narrower range through the form; the CSV link follows it.
    page.fill("#id_from", (today - timedelta(days=3)).isoformat())
    page.fill("#id_to", (today - timedelta(days=2)).isoformat())
    page.click("#usage-filters button[type=submit]")
    page.wait_for_url("**/usage/?from=*")
    assert page.locator("svg#usage-chart g.bar").count() == 2
    assert page.locator("#usage-rows tbody tr").count() == 2 * 2 + 1
    href = page.locator("#usage-csv").get_attribute("href")
    assert href == f"/usage/usage.csv?from={today - timedelta(days=3)}&to={today - timedelta(days=2)}"

    # A bad range says what is wrong under the field.
    page.fill("#id_from", today.isoformat())
    page.fill("#id_to", (today - timedelta(days=1)).isoformat())
    page.click("#usage-filters button[type=submit]")
    assert "is before From" in page.locator(".field.invalid .field-error").inner_text()
    assert page.locator("svg#usage-chart").count() == 0
    page.screenshot(path=str(ARTIFACTS / "usage-error.png"), full_page=True)


def test_an_operator_sees_every_users_usage_and_picks_one(live_server, page, usage_history, other_user):
    from tests.e2e.test_operator_view import log_in_as
    from tests.factories import make_user

    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    instance_usage(
        other_user,
        timezone.now() - timedelta(days=2),
        timezone.now() - timedelta(days=2) + timedelta(hours=9),
        instance_id=3,
        service_id=uuid.UUID(int=3),
        name="theirs",
    )
    log_in_as(page, live_server, "operator")
    page.goto(f"{live_server.url}/usage/")

    assert page.locator("#usage-rows th", has_text="User").count() == 1
    users = set(page.locator("#usage-rows tbody tr td:nth-child(2)").all_inner_texts())
    assert users == {"owner", "other"}
    page.screenshot(path=str(ARTIFACTS / "usage-operator.png"), full_page=True)

    page.select_option("#id_user", label="other")
    page.click("#usage-filters button[type=submit]")
    page.wait_for_url("**user=*")
    # One user's usage: no User column, only their rows.
    assert page.locator("#usage-rows th", has_text="User").count() == 0
    assert set(page.locator("#usage-rows tbody tr td:nth-child(2)").all_inner_texts()) == {"theirs on public-cpu"}
    assert "user=" in (page.locator("#usage-csv").get_attribute("href") or "")
