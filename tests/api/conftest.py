import functools
import json
from typing import Any

import pytest
from django.test import Client

from access.actions import access_token_create
from pools.models import Node
from services.choices import InstanceState, ServiceStatus
from services.models import Instance, Service, ServiceEvent, ServiceVersionConfig

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
def _limits(settings):
    # Pin the limits the messages under test quote, whatever the environment sets.
    settings.MAX_INSTANCES_PER_VERSION = 128
    settings.MAX_SERVICES_PER_USER = 20
    settings.SERVICE_TIMEOUT_MIN_MINUTES = 3
    settings.SERVICE_TIMEOUT_MAX_MINUTES = 120
    settings.GATEWAY_URL = "http://gateway.test:8001"


@pytest.fixture
def api(owner) -> ApiClient:
    return ApiClient(access_token_create(owner=owner, name="test", days=1).secret)


@pytest.fixture
def other_api(other_user) -> ApiClient:
    return ApiClient(access_token_create(owner=other_user, name="test", days=1).secret)


def make_service(owner, pool, version, flavor, *, name: str = "svc-one", status: str = ServiceStatus.RUNNING, **fields):
    """A stored service with one version configuration, as a deploy leaves it."""
    service = Service.objects.create(owner=owner, name=name, pool=pool, status=status, **fields)
    ServiceVersionConfig.objects.create(
        service=service, app_version=version, flavor=flavor, weight=100, instance_count=1, envs={"MODE": "fast"}
    )
    return service


def add_instance(service, *, index: int = 0, host_port: int = 32768, is_healthy: bool = True) -> Instance:
    config = service.configs.get()
    return Instance.objects.create(
        service=service,
        config=config,
        index=index,
        node=Node.objects.get(pool=service.pool),
        container_name=f"rts-{service.id}-0-{index}",
        host_port=host_port,
        state=InstanceState.RUNNING,
        is_healthy=is_healthy,
    )


def add_event(service, message: str, **fields) -> ServiceEvent:
    return ServiceEvent.objects.create(service=service, message=message, **fields)
