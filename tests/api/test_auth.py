"""Token authentication of every endpoint, POST /auth/tokens, wrong methods
and unknown paths: always a JSON answer with an error code."""

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from access.actions import access_token_create, access_token_revoke
from access.forms import TokenRequestInvalid, token_request_parse
from access.models import AccessToken
from services.contract import secret_hash
from tests.api.conftest import API, ApiClient

pytestmark = pytest.mark.django_db

PROTECTED = [
    ("get", "/models"),
    ("post", "/models"),
    ("get", "/models/1"),
    ("delete", "/models/1"),
    ("get", "/services"),
    ("post", "/services"),
    ("get", "/services/specifications"),
    ("get", f"/services/{uuid.uuid4()}"),
    ("put", f"/services/{uuid.uuid4()}"),
    ("delete", f"/services/{uuid.uuid4()}"),
]


def call(client: ApiClient, method: str, path: str):
    if method in ("post", "put"):
        return getattr(client, method)(path, {})
    return getattr(client, method)(path)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error_code"] == code
    assert body["error_msg"]
    return body


# --- Tokens in requests ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_endpoint_without_a_token_is_401(method, path):
    response = call(ApiClient(None), method, path)

    assert_error(response, 401, "RTS.4010")
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_endpoint_with_an_unknown_token_is_401(method, path):
    assert_error(call(ApiClient("rts_not-a-real-token"), method, path), 401, "RTS.4011")


def test_an_expired_token_is_401(owner):
    issued = access_token_create(owner=owner, name="old", days=1)
    AccessToken.objects.filter(id=issued.record.id).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert_error(ApiClient(issued.secret).get("/services"), 401, "RTS.4011")


def test_a_revoked_token_is_401(owner):
    issued = access_token_create(owner=owner, name="gone", days=1)
    access_token_revoke(token=issued.record)

    assert_error(ApiClient(issued.secret).get("/services"), 401, "RTS.4011")


def test_a_token_of_a_deactivated_user_is_401(owner):
    issued = access_token_create(owner=owner, name="t", days=1)
    owner.is_active = False
    owner.save()

    assert_error(ApiClient(issued.secret).get("/services"), 401, "RTS.4011")


@pytest.mark.parametrize("header", ["X-Auth-Token", "Authorization"])
def test_a_valid_token_works_in_either_header(owner, header):
    issued = access_token_create(owner=owner, name="t", days=1)

    response = ApiClient(issued.secret, header=header).get("/services")

    assert response.status_code == 200
    assert response.json() == {"total_count": 0, "services": []}


def test_the_bearer_scheme_is_case_insensitive(owner, client):
    issued = access_token_create(owner=owner, name="t", days=1)

    response = client.get(f"{API}/services", headers={"Authorization": f"bearer {issued.secret}"})

    assert response.status_code == 200


def test_an_authorization_header_of_another_scheme_is_no_token(owner, client):
    issued = access_token_create(owner=owner, name="t", days=1)

    response = client.get(f"{API}/services", headers={"Authorization": f"Basic {issued.secret}"})

    assert_error(response, 401, "RTS.4010")


def test_a_console_session_does_not_authenticate_the_api(owner_client):
    # The API is CSRF-exempt, so it must never act on the session cookie alone.
    assert_error(owner_client.get(f"{API}/services"), 401, "RTS.4010")
    assert_error(owner_client.post(f"{API}/services", "{}", content_type="application/json"), 401, "RTS.4010")


# --- POST /auth/tokens ---------------------------------------------------------------------


def test_create_token_with_the_right_password_returns_a_working_token(owner):
    anonymous = ApiClient(None)

    response = anonymous.post("/auth/tokens", {"username": "owner", "password": "owner-pass-123"})

    assert response.status_code == 201
    body = response.json()
    assert response["X-Subject-Token"] == body["token"]
    assert response["Cache-Control"] == "no-store"
    stored = AccessToken.objects.get()
    # Named after the client when the request names it not (Django's test client sends no User-Agent).
    assert (stored.owner, stored.kind, stored.name) == (owner, AccessToken.Kind.API, "API")
    assert stored.token_hash == secret_hash(body["token"])
    assert body["token"] not in (stored.token_hash, stored.prefix)
    assert body["expires_at"] == stored.expires_at.isoformat()
    assert abs(stored.expires_at - (timezone.now() + timedelta(days=90))) < timedelta(minutes=1)
    assert ApiClient(body["token"]).get("/services").status_code == 200


def test_create_token_takes_a_name_and_a_lifetime(owner, settings):
    settings.ACCESS_TOKEN_MAX_DAYS = 365

    response = ApiClient(None).post(
        "/auth/tokens", {"username": "owner", "password": "owner-pass-123", "name": "ci", "expires_in_days": 365}
    )

    assert response.status_code == 201
    stored = AccessToken.objects.get()
    assert stored.name == "ci"
    assert abs(stored.expires_at - (timezone.now() + timedelta(days=365))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "owner", "password": "wrong"},
        {"username": "nobody", "password": "owner-pass-123"},
    ],
)
def test_create_token_with_bad_credentials_is_401_and_stores_nothing(owner, credentials):
    response = ApiClient(None).post("/auth/tokens", credentials)

    body = assert_error(response, 401, "RTS.4012")
    assert body["error_msg"] == "The username or password is incorrect."
    assert "X-Subject-Token" not in response
    assert not AccessToken.objects.exists()


def test_create_token_for_a_deactivated_user_is_401(owner):
    owner.is_active = False
    owner.save()

    assert_error(
        ApiClient(None).post("/auth/tokens", {"username": "owner", "password": "owner-pass-123"}), 401, "RTS.4012"
    )
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"password": ""}, "password", "Password is required."),
        ({"username": None}, "username", "Username is required."),
    ],
)
def test_create_token_without_credentials_is_400_naming_them(owner, changes, field, message):
    response = ApiClient(None).post("/auth/tokens", {"username": "owner", "password": "owner-pass-123", **changes})

    body = assert_error(response, 400, "RTS.4000")
    assert body["errors"] == {field: [message]}
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize(
    ("changes", "form_changes", "api_field", "form_field"),
    [
        ({"name": "x" * 65}, {"name": "x" * 65}, "name", "name"),
        ({"name": "a\tb"}, {"name": "a\tb"}, "name", "name"),
        ({"expires_in_days": 0}, {"days": 0}, "expires_in_days", "days"),
        ({"expires_in_days": 366}, {"days": 366}, "expires_in_days", "days"),
        ({"expires_in_days": "soon"}, {"days": "soon"}, "expires_in_days", "days"),
        ({"expires_in_days": 1.5}, {"days": 1.5}, "expires_in_days", "days"),
    ],
)
def test_create_token_rejects_what_the_access_keys_page_rejects(
    owner, settings, changes, form_changes, api_field, form_field
):
    settings.ACCESS_TOKEN_MAX_DAYS = 365
    with pytest.raises(TokenRequestInvalid) as form_error:
        token_request_parse({"name": "ci", "days": "30", **form_changes})

    response = ApiClient(None).post(
        "/auth/tokens", {"username": "owner", "password": "owner-pass-123", "name": "ci", **changes}
    )

    body = assert_error(response, 400, "RTS.4000")
    assert body["errors"] == {api_field: form_error.value.errors[form_field]}
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", ""])
def test_create_token_with_a_body_that_is_not_a_json_object_is_400(owner, raw):
    assert_error(ApiClient(None).post("/auth/tokens", raw), 400, "RTS.4001")


# --- Methods and paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", "/auth/tokens", "POST"),
        ("put", "/models", "GET, POST"),
        ("post", "/models/1", "GET, DELETE"),
        ("delete", "/services", "GET, POST"),
        ("post", f"/services/{uuid.uuid4()}", "GET, PUT, DELETE"),
        ("post", "/services/specifications", "GET"),
        ("delete", "/openapi.json", "GET"),
    ],
)
def test_a_wrong_method_is_405_naming_the_allowed_ones(api, method, path, allow):
    response = call(api, method, path)

    assert_error(response, 405, "RTS.4050")
    assert response["Allow"] == allow


@pytest.mark.parametrize("path", ["/nothing", "/models/1/extra", "/services/", "/"])
def test_an_unknown_path_is_a_json_404(api, path):
    assert_error(api.get(path), 404, "RTS.4040")


def test_a_token_without_a_name_is_named_after_its_client(owner):
    response = Client().post(
        "/api/v1/auth/tokens",
        '{"username": "owner", "password": "owner-pass-123"}',
        content_type="application/json",
        HTTP_USER_AGENT="curl/8.5.0 (x86_64-pc-linux-gnu)",
    )
    assert response.status_code == 201
    assert AccessToken.objects.get().name == "API: curl/8.5.0"
