"""Each bad input a tester found gives 400 (or 413) naming the field, never a 500,
and stores nothing."""

from __future__ import annotations

import json

import pytest

from access.models import AccessToken
from services.models import Service, ServiceVersionConfig
from tests.api.conftest import ApiClient
from tests.factories import make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(owner, pool, flavors):
    return make_version(owner)


def service_body(version, **top) -> dict:
    body = {
        "service_name": "svc-one",
        "description": "",
        "pool_name": "public-cpu",
        "config": [{"model_id": version.id, "specification": "cpu.1u512m", "instance_count": 1, "weight": 100}],
    }
    body.update(top)
    return body


def assert_refused(response, field: str | None = None, status: int = 400) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    if field is not None:
        assert field in body["errors"], body
    assert Service.objects.count() == 0 and ServiceVersionConfig.objects.count() == 0
    return body


def test_a_nul_byte_in_a_description_is_refused(api, version):
    assert_refused(api.post("/services", service_body(version, description="bad\x00byte")), "description")


def test_a_lone_surrogate_is_refused(api, version):
    raw = json.dumps(service_body(version, description="x")).replace('"x"', '"\\ud800"')
    assert_refused(api.post("/services", raw), "description")


def test_json_nested_50000_deep_is_refused(api):
    raw = '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"
    body = assert_refused(api.post("/services", raw))
    assert body["error_code"] in ("RTS.4000", "RTS.4001")


def test_a_nul_byte_or_a_surrogate_in_a_login_is_refused(db):
    anonymous = ApiClient(None)
    for username in ("ali\x00ce", "\ud800"):
        raw = json.dumps({"username": username, "password": "whatever"})
        response = anonymous.post("/auth/tokens", raw)
        assert response.status_code == 400, response.content
        assert "username" in response.json()["errors"]
    assert AccessToken.objects.count() == 0


def test_a_nul_byte_in_a_query_string_is_refused(api):
    response = api.get("/services/specifications", {"pool_name": "public\x00cpu"})
    assert response.status_code == 400
    assert "pool_name" in response.json()["errors"]


@pytest.mark.parametrize("value", [{"x": 1}, ["a"], 5, True])
def test_env_values_must_be_strings(api, version, value):
    body = service_body(version)
    body["config"][0]["envs"] = {"K": value}
    assert_refused(api.post("/services", body), "config[0].envs")


def test_env_values_must_be_printable(api, version):
    body = service_body(version)
    body["config"][0]["envs"] = {"K": "escape\x1b[31m"}
    assert_refused(api.post("/services", body), "config[0].envs")


def test_more_config_rows_than_allowed_are_refused_before_any_is_read(api, version, django_assert_max_num_queries):
    body = service_body(version)
    body["config"] = body["config"] * 3000
    with django_assert_max_num_queries(12):
        response = api.post("/services", body)
    refused = assert_refused(response, "config")
    assert "At most 10 AI application versions" in refused["errors"]["config"][0]


def test_many_bad_rows_get_a_short_answer(api, version):
    body = service_body(version)
    body["config"][0]["envs"] = [{"key": f"bad-{n}", "value": "x"} for n in range(100)]
    response = api.post("/services", body)
    refused = assert_refused(response, "config[0].envs")
    assert len(refused["errors"]["config[0].envs"]) <= 6
    assert len(response.content) < 4096
