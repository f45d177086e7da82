"""Small things users tripped over (issue 11, item 9)."""

import pytest
from django.test import Client

from services.choices import ServiceStatus
from tests.factories import make_service

pytestmark = pytest.mark.django_db


def test_a_failed_login_keeps_the_user_name(owner):
    page = Client().post("/login/", {"username": "owner", "password": "wrong"}).content.decode()
    assert "did not match" in page
    assert 'value="owner"' in page


def test_the_version_field_says_its_format_before_any_error(owner_client):
    assert "Three numbers, e.g. 1.0.0." in owner_client.get("/applications/register/").content.decode()


def test_the_overview_tab_shows_the_status_badge_by_the_title(owner_client, owner, pool, flavors, demo_version):
    service = make_service(owner, pool, version=demo_version, status=ServiceStatus.RUNNING)
    page = owner_client.get(f"/services/{service.id}/").content.decode()
    title = page.split("<h1>", 1)[1].split("</h1>", 1)[0]
    assert "Running" in title
