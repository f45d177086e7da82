import functools
import json
from typing import Any

import pytest
from django.test import Client

from access.actions import access_token_create

API = "/api/v1"


@functools.cache
def _shared_client() -> Client:
    # Each new Client builds its own middleware stack, and WhiteNoise scans the
    # static files every time: a third of this suite's run time. The API sets
    # no cookies, so every ApiClient can share one.
    return Client()


class ApiClient:
    """A test client that sends JSON and one API token in a header."""

    def __init__(self, token: str | None, header: str = "X-Auth-Token"):
        self.client = _shared_client()
        self.headers: dict[str, str] = {}
        if token is not None:
            self.headers = {header: token} if header == "X-Auth-Token" else {"Authorization": f"Bearer {token}"}

    def get(self, path: str, params: dict | None = None):
        return self.client.get(API + path, params or {}, headers=self.headers)

    def post(self, path: str, body: Any):
        return self._send("post", path, body)

    def put(self, path: str, body: Any):
        return self._send("put", path, body)

    def delete(self, path: str):
        return self.client.delete(API + path, headers=self.headers)

    def _send(self, method: str, path: str, body: Any):
        raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return getattr(self.client, method)(API + path, raw, content_type="application/json", headers=self.headers)


@pytest.fixture(autouse=True)
def _api_settings(pinned_limits, settings):
    settings.GATEWAY_URL = "http://gateway.test:8001"


@pytest.fixture
def api(owner) -> ApiClient:
    return ApiClient(access_token_create(owner=owner, name="test", days=1).secret)


@pytest.fixture
def other_api(other_user) -> ApiClient:
    return ApiClient(access_token_create(owner=other_user, name="test", days=1).secret)
