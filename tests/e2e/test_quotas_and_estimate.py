"""The Quotas page and the Deploy wizard's estimate in real Chromium: the
estimate follows the rows as they are edited, and says when the quota is short."""

from __future__ import annotations

import pytest

from pools.models import UserQuota
from tests.e2e.conftest import ARTIFACTS, log_in
from tests.factories import make_service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_estimate_follows_the_rows_and_the_quotas_page_shows_the_use(
    live_server, page, owner, pool, flavors, demo_version
):
    UserQuota.objects.create(user=owner, vcpus=4)
    make_service(owner, pool, version=demo_version, name="running-one", instance_count=2)
    log_in(page, live_server)

    page.goto(f"{live_server.url}/services/deploy/?version={demo_version.id}")
    page.check("#flavor-options input[value='cpu.1u512m']")
    page.wait_for_function("(document.querySelector('#deploy-estimate') || {}).innerText?.includes('544 MiB')")
    assert "1 instance: 1.05 vCPU and 544 MiB" in page.inner_text("#deploy-estimate")
    assert "1 vCPU of your quota (2 of 4 used now)" in page.inner_text("#deploy-estimate")

    page.fill("#id_instance_count", "3")
    page.wait_for_function(
        "(document.querySelector('#deploy-estimate') || {}).innerText?.includes('3 instances')"
        " && !document.querySelector('#deploy-estimate').classList.contains('htmx-added')"
    )
    estimate = page.locator("#deploy-estimate")
    assert "3 instances: 3.15 vCPU" in estimate.inner_text()
    assert "over your quota" in estimate.inner_text()
    assert "off" in estimate.get_attribute("class").split()
    page.screenshot(path=ARTIFACTS / "deploy-estimate.png", full_page=True)

    page.goto(f"{live_server.url}/quotas/")
    lines = page.locator("#quota-lines tbody tr")
    assert lines.nth(0).inner_text().split("\t")[:2] == ["vCPUs", "2 / 4"]
    assert "running-one" in page.inner_text("#quota-takers")
    page.screenshot(path=ARTIFACTS / "quotas.png", full_page=True)
