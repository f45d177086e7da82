"""Fuzz every operation of /api/v1/openapi.json with schemathesis: whatever a
client sends, the API answers with a 2xx or a 4xx, never a 5xx.

The requests go to a real server (pytest-django's live server) on the test
database, authenticated with a real token; deploys are recorded, not run.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from access.actions import access_token_create

pytestmark = pytest.mark.django_db(transaction=True)


def api_operations() -> list:
    from api.openapi import openapi_document

    schema = schemathesis.openapi.from_dict(openapi_document())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture
def api_session(live_server, owner, pool, flavors, demo_version, enqueued):
    """The live server's API URL and a token's header, with a pool, flavors and a Normal version to use."""
    issued = access_token_create(owner=owner, name="fuzz", days=1)
    return f"{live_server.url}/api/v1", {"X-Auth-Token": issued.secret}


@pytest.mark.parametrize("operation", api_operations(), ids=lambda operation: operation.label)
def test_no_request_makes_the_api_answer_5xx(operation, api_session):
    base_url, headers = api_session

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def call(case):
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}\n"
            f"body sent: {case.body!r}\nquery: {case.query!r}\nanswer: {response.text[:500]}"
        )

    call()
