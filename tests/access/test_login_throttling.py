"""Wrong passwords are throttled per account and per client address, on the
console login, the admin login and POST /api/v1/auth/tokens (django-axes)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

LIMIT = 5


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(seconds=300)


def api_login(client: Client, username: str, password: str, address: str = "127.0.0.1"):
    return client.post(
        "/api/v1/auth/tokens",
        json.dumps({"username": username, "password": password}),
        content_type="application/json",
        REMOTE_ADDR=address,
    )


def test_the_api_refuses_an_account_after_too_many_wrong_passwords(owner):
    client = Client()
    for _ in range(LIMIT - 1):
        assert api_login(client, "owner", "wrong").status_code == 401

    locked = api_login(client, "owner", "wrong")
    assert locked.status_code == 429
    assert locked["Retry-After"] == "300"
    assert locked.json()["error_code"] == "RTS.4290"
    # The right password does not open a locked account until the cool-off ends,
    # not even from another address.
    assert api_login(client, "owner", "owner-pass-123", address="10.9.9.9").status_code == 429


def test_one_address_trying_many_accounts_is_refused(owner, other_user):
    client = Client()
    for n in range(LIMIT - 1):
        assert api_login(client, f"nobody-{n}", "wrong", address="10.1.1.1").status_code == 401
    assert api_login(client, "nobody-x", "wrong", address="10.1.1.1").status_code == 429
    # Another address is not held back by it.
    assert api_login(client, "other", "other-pass-123", address="10.2.2.2").status_code == 201


def test_the_lockout_ends_after_the_cool_off(owner, settings):
    client = Client()
    for _ in range(LIMIT):
        api_login(client, "owner", "wrong")
    assert api_login(client, "owner", "owner-pass-123").status_code == 429

    settings.AXES_COOLOFF_TIME = timedelta(seconds=0)

    assert api_login(client, "owner", "owner-pass-123").status_code == 201


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_the_console_and_admin_logins_are_throttled_too(owner, path):
    client = Client()
    for _ in range(LIMIT - 1):
        response = client.post(path, {"username": "owner", "password": "wrong"})
        assert response.status_code == 200  # the form again, with its error

    locked = client.post(path, {"username": "owner", "password": "wrong"})
    assert locked.status_code == 429
    assert locked["Retry-After"] == "300"
    assert "Too many failed logins" in locked.content.decode()


def test_behind_a_trusted_proxy_clients_are_told_apart_by_x_forwarded_for(owner, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    client = Client()

    def login_via_proxy(username: str, client_address: str):
        return client.post(
            "/api/v1/auth/tokens",
            json.dumps({"username": username, "password": "wrong"}),
            content_type="application/json",
            REMOTE_ADDR="127.0.0.1",
            HTTP_X_FORWARDED_FOR=client_address,
        )

    for n in range(LIMIT - 1):
        assert login_via_proxy(f"nobody-{n}", "203.0.113.7").status_code == 401
    assert login_via_proxy("nobody-x", "203.0.113.7").status_code == 429
    # Another client behind the same proxy is not held back.
    assert login_via_proxy("nobody-y", "203.0.113.8").status_code == 401
