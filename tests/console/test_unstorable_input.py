"""A NUL byte in any form field or query parameter of the console is a 400 page
naming the field, never a 500 from the database."""

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import User

from console.middleware import unstorable_reason
from services.models import Service


def test_unstorable_reason_names_nul_and_surrogates():
    assert unstorable_reason("plain text, tabs\tand ünïcödé") is None
    assert unstorable_reason("a\x00b") == "must not contain NUL characters"
    assert "surrogate" in unstorable_reason("\ud800")


@pytest.mark.django_db
def test_a_nul_byte_in_the_login_form_is_a_400_naming_the_field(client):
    form = urlencode({"username": "ali\x00ce", "password": "x"})
    response = client.post("/login/", form, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert "username must not contain NUL characters" in response.content.decode()
    # Sent as multipart, the login form's own validation refuses it.
    response = client.post("/login/", {"username": "ali\x00ce", "password": "x"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert User.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_byte_in_the_deploy_form_stores_nothing(owner_client):
    form = urlencode({"name": "svc", "description": "bad\x00"})
    response = owner_client.post("/services/deploy/", form, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert "description must not contain NUL characters" in response.content.decode()
    # As multipart it reaches the Deploy rules, which name the field too.
    response = owner_client.post("/services/deploy/", {"name": "svc", "description": "bad\x00"})
    assert response.status_code == 400
    assert "Description must be printable text" in response.content.decode()
    assert Service.objects.count() == 0


@pytest.mark.django_db
def test_a_nul_byte_in_a_query_string_is_a_400(owner_client):
    response = owner_client.get("/services/deploy/flavors/", {"pool": "x\x00"})
    assert response.status_code == 400
    assert "pool must not contain NUL characters" in response.content.decode()
