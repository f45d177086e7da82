"""A NUL byte in any form field or query parameter of the console is a 400 page
naming the field, never a 500 from the database."""

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User

from access.models import AccessToken
from console.middleware import unstorable_reason
from services.models import AIApplication, Service


def test_unstorable_reason_names_nul_and_surrogates():
    assert unstorable_reason("plain text, tabs\tand ünïcödé") is None
    assert unstorable_reason("a\x00b") == "must not contain NUL characters"
    assert "surrogate" in unstorable_reason("\ud800")


@pytest.mark.django_db
def test_a_nul_byte_in_the_login_form_is_a_400_naming_the_field(client):
    urlencoded = urlencode({"username": "ali\x00ce", "password": "x"})
    multipart = {"username": "ali\x00ce", "password": "x"}
    for response in (
        client.post("/login/", urlencoded, content_type="application/x-www-form-urlencoded"),
        client.post("/login/", multipart),
    ):
        assert response.status_code == 400
        assert "username must not contain NUL characters" in response.content.decode()
    assert User.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "form", "field"),
    [
        ("/services/deploy/", {"name": "svc", "description": "bad\x00"}, "description"),
        ("/applications/register/", {"application_name": "app\x00", "version": "1.0.0"}, "application_name"),
        ("/access/keys/", {"name": "key\x00", "days": "30"}, "name"),
    ],
)
def test_a_nul_byte_in_a_console_form_stores_nothing(owner_client, url, form, field):
    before = (Service.objects.count(), AIApplication.objects.count(), AccessToken.objects.count())
    for response in (
        owner_client.post(url, urlencode(form), content_type="application/x-www-form-urlencoded"),
        owner_client.post(url, form),  # multipart, as a browser sends a form with a file input
    ):
        assert response.status_code == 400
        assert f"{field} must not contain NUL characters" in response.content.decode()
    assert (Service.objects.count(), AIApplication.objects.count(), AccessToken.objects.count()) == before


@pytest.mark.django_db
def test_a_control_character_in_a_description_is_named_by_the_deploy_rules(owner_client):
    response = owner_client.post("/services/deploy/", {"name": "svc", "description": "bell\x07"})
    assert response.status_code == 400
    assert "Description must be printable text" in response.content.decode()
    assert Service.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_byte_in_a_query_string_is_a_400(owner_client):
    response = owner_client.get("/services/deploy/flavors/", {"pool": "x\x00"})
    assert response.status_code == 400
    assert "pool must not contain NUL characters" in response.content.decode()
