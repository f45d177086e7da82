"""GET /openapi.json: an OpenAPI 3.1 document, served without a token, that
describes every endpoint of api.urls with exactly the methods it accepts."""

import re

import pytest
from django.urls import URLPattern

from api import urls
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def document() -> dict:
    response = ApiClient(None).get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    return response.json()


def endpoints() -> dict[str, set[str]]:
    """OpenAPI path → the methods its view accepts, from api.urls itself."""
    found = {}
    for pattern in urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        if pattern.name == "not_found":
            continue
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        found[path] = {method.lower() for method in pattern.callback.allowed_methods}
    return found


def refs(node) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_document_is_openapi_3_1_served_without_a_token(document):
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "/api/v1"}]
    assert set(document["components"]["securitySchemes"]) == {"XAuthToken", "Bearer"}


def test_the_document_describes_every_endpoint_and_method(document):
    described = {
        path: {key for key in item if key in ("get", "post", "put", "patch", "delete")}
        for path, item in document["paths"].items()
    }

    assert described == endpoints()
    assert len(described) == 7


def test_every_operation_has_an_id_a_summary_and_responses(document):
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["summary"], (path, method)
            assert operation["responses"], (path, method)
            assert "405" in operation["responses"], (path, method)
            operation_ids.append(operation["operationId"])
    assert len(operation_ids) == len(set(operation_ids))


def test_operations_with_a_body_describe_it(document):
    for path, method in [
        ("/auth/tokens", "post"),
        ("/models", "post"),
        ("/services", "post"),
        ("/services/{service_id}", "put"),
    ]:
        schema = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        refs = [schema] if "$ref" in schema else schema.get("oneOf", [])
        assert refs and all("$ref" in ref for ref in refs), (path, method)


def test_only_the_token_and_document_endpoints_need_no_token(document):
    open_operations = {
        (path, method)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and operation.get("security") == []
    }

    assert open_operations == {("/auth/tokens", "post"), ("/openapi.json", "get")}


def test_every_reference_resolves(document):
    for ref in refs(document):
        node = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


def test_the_document_lists_every_service_status_word(document):
    enum = document["components"]["schemas"]["ServiceSummary"]["properties"]["status"]["enum"]

    assert sorted(enum) == sorted(
        ["deploying", "running", "concerning", "abnormal", "failed", "stopping", "stopped", "deleting", "upgrading"]
    )
