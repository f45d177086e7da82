"""The gateway as users meet it: a real `python -m gateway` subprocess on the
test database, in front of real demo-model containers.

Services are deployed inline (service_create + service_deploy_run); the gateway
only learns about them by reloading its table, so every first call polls.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.utils import timezone

from access.actions import access_token_create, access_token_revoke, app_code_create, app_code_revoke
from access.models import AccessToken
from services.actions import service_create, service_stop
from services.choices import ServiceStatus
from services.lifecycle import service_deploy_run, service_stop_run
from services.models import Instance, Service, ServiceCallStat
from services.reconcile import reconcile
from services.validation import parse_deploy_request
from tests.conftest import free_port, start_gateway, stop_gateway, wait_for_gateway_reload
from tests.factories import deploy_data, make_version
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

SMALL_BODY_LIMIT = 1024
PREDICT_BODY = b'{"data": [1, 2, 3]}'
LARGE_PATTERN = b"0123456789abcdef"


# --- HTTP helpers -------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def json(self):
        return json.loads(self.body)


def call(base_url: str, path: str, *, method: str = "POST", headers: dict | None = None, body=None) -> Reply:
    """One HTTP/1.1 call on a fresh connection; `path` is sent exactly as given."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
    started = time.monotonic()
    try:
        connection.request(
            method, path, body=body, headers=headers or {}, encode_chunked=not isinstance(body, (bytes, type(None)))
        )
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, response.reason, response.getheaders(), data, time.monotonic() - started)
    finally:
        connection.close()


def poll(make_call, until, timeout: float = 5.0, interval: float = 0.05) -> Reply:
    """Repeat a call until `until(reply)` holds; fail with the last reply after `timeout`."""
    last: list[Reply] = []

    def answered() -> Reply | None:
        last[:] = [make_call()]
        return last[0] if until(last[0]) else None

    return eventually(
        answered,
        timeout=timeout,
        interval=interval,
        message=lambda: f"the last reply was {last[0].status} {last[0].body[:300]!r}",
    )


def assert_gateway_error(reply: Reply, status: int, *, message_contains: str = "") -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.header("Content-Type").startswith("application/json")
    payload = reply.json()
    assert set(payload) == {"error_code", "error_msg", "request_id"}
    assert payload["request_id"] and payload["request_id"] == reply.header("X-Request-Id")
    assert payload["error_code"].startswith("RTS.") and payload["error_msg"]
    assert message_contains in payload["error_msg"]
    return payload


def token_headers(token: str) -> dict:
    return {"X-Auth-Token": token, "Content-Type": "application/json"}


# --- Fixtures --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_queue(enqueued):
    """Deploys and stops run inline here; nothing is left queued for a worker."""


@pytest.fixture(scope="module")
def strict_gateway(django_db_setup):
    """A gateway with a 1 s call timeout, a 1 KiB body limit and the default reload period."""
    process, url = start_gateway(
        GATEWAY_CALL_TIMEOUT_SECONDS="1",
        GATEWAY_MAX_BODY_BYTES=str(SMALL_BODY_LIMIT),
        GATEWAY_REFRESH_SECONDS=str(settings.GATEWAY_REFRESH_SECONDS),
    )
    yield process, url
    stop_gateway(process)


@pytest.fixture
def strict_url(strict_gateway, transactional_db) -> str:
    process, url = strict_gateway
    assert process.poll() is None, "the strict gateway has exited (log: test-artifacts/gateway.log)"
    return url


@dataclass
class Deployed:
    service: Service
    token: str

    @property
    def id(self) -> str:
        return str(self.service.id)

    def ports(self) -> list[int]:
        return sorted(Instance.objects.filter(service=self.service).values_list("host_port", flat=True))


def deploy(owner, version, *, name: str = "svc-gw", instance_count: int = 1) -> Deployed:
    request = parse_deploy_request(owner=owner, data=deploy_data(version, name=name, instance_count=instance_count))
    service = service_create(owner=owner, request=request)
    assert service_deploy_run(service_id=service.id) == "running"
    token = access_token_create(owner=owner, name="tests", days=1).secret
    return Deployed(Service.objects.get(id=service.id), token)


@pytest.fixture
def deployed(engine, pool, flavors, owner, demo_version) -> Deployed:
    """A Running 1-instance service of the demo image and a token of its owner."""
    return deploy(owner, demo_version)


def wait_until_routed(base_url: str, deployed: Deployed, path: str = "/echo") -> Reply:
    """Wait for the gateway's table to hold the service and the token."""
    return poll(
        lambda: call(
            base_url, f"/v1/infers/{deployed.id}{path}", method="GET", headers={"X-Auth-Token": deployed.token}
        ),
        lambda reply: reply.status == 200,
    )


def echo_port(reply: Reply) -> int:
    """The container's published port, from the Host header the model saw."""
    assert reply.status == 200, (reply.status, reply.body[:300])
    return int(reply.json()["headers"]["host"].rsplit(":", 1)[1])


# --- Authentication ---------------------------------------------------------------------


def test_authentication_matrix(gateway_url, deployed, owner, other_user, pool):
    service_id = deployed.id
    other_token = access_token_create(owner=other_user, name="other", days=1).secret
    expired = access_token_create(owner=owner, name="expired", days=1)
    AccessToken.objects.filter(id=expired.record.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = access_token_create(owner=owner, name="revoked", days=1)
    assert access_token_revoke(token=revoked.record)
    app_code = app_code_create(service=deployed.service).secret
    other_service = Service.objects.create(owner=owner, name="svc-other", pool=pool, status=ServiceStatus.RUNNING)
    other_code = app_code_create(service=other_service).secret
    revoked_code = app_code_create(service=deployed.service)
    assert app_code_revoke(code=revoked_code.record)

    wait_until_routed(gateway_url, deployed)
    # The table holds the other user's token and the other service's code
    # once it holds this service's code: they were all committed before it.
    poll(
        lambda: call(gateway_url, f"/v1/infers/{service_id}", headers={"X-Apig-AppCode": app_code}, body=PREDICT_BODY),
        lambda reply: reply.status == 200,
    )

    predict = f"/v1/infers/{service_id}"
    unknown = "/v1/infers/6a1e9f64-3b8e-4b4e-9d0c-0f0c2a7b9e11"
    cases = [
        ("no credentials", predict, {}, 401),
        ("empty token", predict, {"X-Auth-Token": ""}, 401),
        ("bad token", predict, {"X-Auth-Token": "rts_not-a-real-token"}, 401),
        ("bad bearer token", predict, {"Authorization": "Bearer rts_not-a-real-token"}, 401),
        ("basic auth is not a token", predict, {"Authorization": f"Basic {deployed.token}"}, 401),
        ("expired token", predict, {"X-Auth-Token": expired.secret}, 401),
        ("revoked token", predict, {"X-Auth-Token": revoked.secret}, 401),
        ("token in X-Auth-Token", predict, {"X-Auth-Token": deployed.token}, 200),
        ("token as a bearer", predict, {"Authorization": f"Bearer {deployed.token}"}, 200),
        ("another user's token", predict, {"X-Auth-Token": other_token}, 404),
        ("unknown service", unknown, {"X-Auth-Token": deployed.token}, 404),
        ("unknown service, not a UUID", "/v1/infers/nope", {"X-Auth-Token": deployed.token}, 404),
        ("app code of this service", predict, {"X-Apig-AppCode": app_code}, 200),
        ("app code of another service", predict, {"X-Apig-AppCode": other_code}, 404),
        ("revoked app code", predict, {"X-Apig-AppCode": revoked_code.secret}, 401),
        ("bad app code", predict, {"X-Apig-AppCode": "app_not-a-real-code"}, 401),
    ]
    outcomes = {}
    for label, path, headers, expected in cases:
        reply = call(gateway_url, path, headers={**headers, "Content-Type": "application/json"}, body=PREDICT_BODY)
        outcomes[label] = reply.status
        if expected == 200:
            assert reply.json()["prediction"] == 6, label
        else:
            assert_gateway_error(reply, expected)
    assert outcomes == {label: expected for label, _, _, expected in cases}

    # Another user's service and a missing one read the same, so a caller
    # cannot probe for services that are not theirs.
    theirs = call(gateway_url, predict, headers={"X-Auth-Token": other_token}, body=PREDICT_BODY).json()
    missing = call(gateway_url, unknown, headers={"X-Auth-Token": other_token}, body=PREDICT_BODY).json()
    assert theirs["error_code"] == missing["error_code"]

    # A deactivated user's tokens stop working too.
    type(owner).objects.filter(id=owner.id).update(is_active=False)
    reply = poll(
        lambda: call(gateway_url, predict, headers={"X-Auth-Token": deployed.token}, body=PREDICT_BODY),
        lambda r: r.status != 200,
    )
    assert_gateway_error(reply, 401)


def test_revoked_credentials_stop_working_at_the_next_table_reload(strict_url, deployed):
    app_code = app_code_create(service=deployed.service)
    wait_until_routed(strict_url, deployed)
    with_code = {"X-Apig-AppCode": app_code.secret}
    poll(lambda: call(strict_url, f"/v1/infers/{deployed.id}/echo", headers=with_code), lambda r: r.status == 200)

    for revoke, headers in (
        (
            lambda: access_token_revoke(token=AccessToken.objects.get(owner=deployed.service.owner)),
            {"X-Auth-Token": deployed.token},
        ),
        (lambda: app_code_revoke(code=app_code.record), with_code),
    ):
        assert call(strict_url, f"/v1/infers/{deployed.id}/echo", headers=headers).status == 200
        assert revoke()
        # The timed reload (every GATEWAY_REFRESH_SECONDS) is what drops it: the
        # first call after a reload that began after the revoke is refused.
        wait_for_gateway_reload(strict_url)
        reply = call(strict_url, f"/v1/infers/{deployed.id}/echo", headers=headers)
        assert_gateway_error(reply, 401)
        for _ in range(5):
            assert call(strict_url, f"/v1/infers/{deployed.id}/echo", headers=headers).status == 401


# --- Error paths --------------------------------------------------------------------------


def test_stopped_service_answers_503_naming_its_status(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    service_stop(service=deployed.service)
    assert service_stop_run(service_id=deployed.id) == "stopped"
    reply = poll(
        lambda: call(
            gateway_url, f"/v1/infers/{deployed.id}", headers=token_headers(deployed.token), body=PREDICT_BODY
        ),
        lambda r: b"Stopped" in r.body,
    )
    assert_gateway_error(reply, 503, message_contains="Stopped")


def test_running_service_without_a_healthy_instance_answers_503(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    Instance.objects.filter(service=deployed.service).update(is_healthy=False)
    reply = poll(
        lambda: call(
            gateway_url, f"/v1/infers/{deployed.id}", headers=token_headers(deployed.token), body=PREDICT_BODY
        ),
        lambda r: r.status != 200,
    )
    assert_gateway_error(reply, 503, message_contains="no healthy instance")
    assert Service.objects.get(id=deployed.id).status == ServiceStatus.RUNNING


def test_model_slower_than_the_call_timeout_answers_504(strict_url, deployed):
    wait_until_routed(strict_url, deployed)
    quick = call(
        strict_url,
        f"/v1/infers/{deployed.id}/sleep?seconds=0.2",
        method="GET",
        headers={"X-Auth-Token": deployed.token},
    )
    assert quick.status == 200 and quick.json()["slept"] == 0.2

    # The model would answer after 15 s: a reply before that is the gateway's
    # own, and not before its 1 s timeout.
    reply = call(
        strict_url, f"/v1/infers/{deployed.id}/sleep?seconds=15", method="GET", headers={"X-Auth-Token": deployed.token}
    )
    assert_gateway_error(reply, 504, message_contains="1 s")
    assert 0.9 <= reply.seconds < 15, f"answered after {reply.seconds:.2f}s with a 1 s call timeout"
    # A timeout is a failed call in the statistics.
    eventually(lambda: Service.objects.get(id=deployed.id).failed_times == 1, message="the failure was never counted")


def test_body_over_the_limit_answers_413(strict_url, deployed):
    wait_until_routed(strict_url, deployed)
    path = f"/v1/infers/{deployed.id}/echo"
    headers = {"X-Auth-Token": deployed.token}
    at_limit = call(strict_url, path, headers=headers, body=b"x" * SMALL_BODY_LIMIT)
    assert at_limit.status == 200 and at_limit.json()["body_length"] == SMALL_BODY_LIMIT

    over = call(strict_url, path, headers=headers, body=b"x" * (SMALL_BODY_LIMIT + 1))
    assert_gateway_error(over, 413, message_contains=str(SMALL_BODY_LIMIT))
    # Without a Content-Length the gateway counts while it reads.
    chunked = call(strict_url, path, headers=headers, body=iter([b"x" * 600, b"y" * 600]))
    assert_gateway_error(chunked, 413)
    chunked_small = call(strict_url, path, headers=headers, body=iter([b"x" * 300, b"y" * 300]))
    assert chunked_small.status == 200
    assert chunked_small.json()["body_sha256"] == hashlib.sha256(b"x" * 300 + b"y" * 300).hexdigest()


def test_connection_error_to_the_container_answers_502(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    closed_port = free_port()
    Instance.objects.filter(service=deployed.service).update(host_port=closed_port)
    reply = poll(
        lambda: call(
            gateway_url, f"/v1/infers/{deployed.id}", headers=token_headers(deployed.token), body=PREDICT_BODY
        ),
        lambda r: r.status != 200,
    )
    assert_gateway_error(reply, 502)
    # The instance is still the only one the table lists: the next call tries
    # it again rather than claiming the service has no healthy instance.
    again = call(gateway_url, f"/v1/infers/{deployed.id}", headers=token_headers(deployed.token), body=PREDICT_BODY)
    assert_gateway_error(again, 502)


def test_killed_container_answers_502_before_the_table_notices(strict_url, deployed, docker_client):
    wait_until_routed(strict_url, deployed)
    instance = Instance.objects.get(service=deployed.service)
    docker_client.containers.get(instance.container_name).kill()
    # The database still calls the instance healthy: the table keeps it.
    reply = call(strict_url, f"/v1/infers/{deployed.id}", headers=token_headers(deployed.token), body=PREDICT_BODY)
    assert_gateway_error(reply, 502)


def test_a_call_every_instance_refuses_waits_and_goes_round_again(gateway_url, deployed):
    """For a moment every instance may refuse (an engine restarting reprograms
    its port forwarding): the call reached no model, so the gateway waits and
    tries again, for up to GATEWAY_CONNECT_RETRY_SECONDS (1 s by default)."""
    wait_until_routed(gateway_url, deployed)
    port = free_port()
    Instance.objects.filter(service=deployed.service).update(host_port=port)
    path = f"/v1/infers/{deployed.id}"
    refused = poll(
        lambda: call(gateway_url, path, headers=token_headers(deployed.token), body=PREDICT_BODY),
        lambda r: r.status != 200,
    )
    assert_gateway_error(refused, 502)
    assert refused.seconds >= 0.7  # it went round for most of the second before giving up

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"answered": "late"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers: list[HTTPServer] = []

    def listen() -> None:
        servers.append(HTTPServer(("127.0.0.1", port), Answer))
        servers[0].serve_forever()

    threading.Timer(0.3, listen).start()
    try:
        reply = call(gateway_url, path, headers=token_headers(deployed.token), body=PREDICT_BODY)
    finally:
        eventually(lambda: servers, timeout=5)
        servers[0].shutdown()
        servers[0].server_close()
    assert reply.status == 200, reply.body
    assert reply.json() == {"answered": "late"}
    assert reply.seconds >= 0.25


def test_an_instance_that_closes_each_connection_at_once_is_retried_on_another(
    gateway_url, engine, pool, flavors, owner, demo_version
):
    """An instance dying under a docker-proxy accepts a connection and closes it
    before the call is written: nothing reached a model, so the call goes to
    another instance, never a 500."""
    deployed = deploy(owner, demo_version, instance_count=2)
    wait_until_routed(gateway_url, deployed)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    stop = threading.Event()

    def close_at_once() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_at_once, daemon=True).start()
    try:
        Instance.objects.filter(service=deployed.service, index=1).update(host_port=listener.getsockname()[1])
        path = f"/v1/infers/{deployed.id}"
        replies = [
            call(gateway_url, path, headers=token_headers(deployed.token), body=PREDICT_BODY) for _ in range(200)
        ]
    finally:
        stop.set()
        listener.close()
    failed = Counter((reply.status, reply.body[:80]) for reply in replies if reply.status != 200)
    assert not failed, failed


# --- Pass-through ------------------------------------------------------------------------------


def test_model_errors_pass_through_unchanged(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    port = deployed.ports()[0]
    for status in (418, 500, 503):
        via_gateway = call(
            gateway_url, f"/v1/infers/{deployed.id}/fail?status={status}", headers={"X-Auth-Token": deployed.token}
        )
        direct = call(f"http://127.0.0.1:{port}", f"/fail?status={status}")
        assert via_gateway.status == direct.status == status
        assert via_gateway.reason == direct.reason
        assert via_gateway.body == direct.body
        assert "error_code" not in via_gateway.json()
        # The gateway adds its request id; everything else is the model's.
        assert via_gateway.header("X-Request-Id")
        ignore = {"date", "connection", "keep-alive", "x-request-id"}
        assert [(k.lower(), v) for k, v in via_gateway.headers if k.lower() not in ignore] == [
            (k.lower(), v) for k, v in direct.headers if k.lower() not in ignore
        ]


def test_method_query_path_headers_and_body_pass_through(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    body = b'{"rows": [[1, 2], [3, 4]]}'
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        reply = call(
            gateway_url,
            f"/v1/infers/{deployed.id}/echo?a=1&a=2&b=x%20y&c=%2F&flag",
            method=method,
            headers={
                "X-Auth-Token": deployed.token,
                "X-Custom": "kept",
                "X-Forwarded-For": "10.9.8.7",
                "Content-Type": "application/json",
            },
            body=body,
        )
        assert reply.status == 200, (method, reply.body[:300])
        echo = reply.json()
        assert echo["method"] == method
        assert echo["path"] == "/echo"
        assert echo["query_string"] == "a=1&a=2&b=x%20y&c=%2F&flag"
        assert echo["body_length"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert echo["headers"]["x-custom"] == "kept"
        assert echo["headers"]["content-type"] == "application/json"
        assert echo["headers"]["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
        # The caller's credentials are the gateway's business, not the model's.
        assert "x-auth-token" not in echo["headers"]
        assert "authorization" not in echo["headers"] and "x-apig-appcode" not in echo["headers"]

    # HEAD answers keep the length of the body they do not carry.
    head = call(
        gateway_url,
        f"/v1/infers/{deployed.id}/large?bytes=1000",
        method="HEAD",
        headers={"X-Auth-Token": deployed.token},
    )
    assert (head.status, head.header("Content-Length"), head.body) == (200, "1000", b"")

    # The path goes through as it was encoded: %2F is not a path separator.
    reply = call(
        gateway_url, f"/v1/infers/{deployed.id}/echo%2Fx", method="GET", headers={"X-Auth-Token": deployed.token}
    )
    assert reply.status == 404
    assert reply.json()["error"] == "no such endpoint: /echo%2Fx"


def test_large_body_is_streamed_back_intact(gateway_url, deployed):
    wait_until_routed(gateway_url, deployed)
    size = 5_000_000
    reply = call(
        gateway_url,
        f"/v1/infers/{deployed.id}/large?bytes={size}",
        method="GET",
        headers={"X-Auth-Token": deployed.token},
    )
    assert reply.status == 200
    assert reply.header("Content-Length") == str(size)
    assert len(reply.body) == size
    expected = (LARGE_PATTERN * (size // len(LARGE_PATTERN) + 1))[:size]
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_bare_service_url_goes_to_the_versions_predict_path(gateway_url, engine, pool, flavors, owner):
    version = make_version(owner, version="1.0.1", predict_path="/echo")
    deployed = deploy(owner, version)
    wait_until_routed(gateway_url, deployed)
    reply = call(gateway_url, f"/v1/infers/{deployed.id}?x=1", headers=token_headers(deployed.token), body=PREDICT_BODY)
    assert reply.status == 200
    assert (reply.json()["path"], reply.json()["query_string"]) == ("/echo", "x=1")
    # A trailing slash is not the bare URL: it names the container's root.
    root = call(gateway_url, f"/v1/infers/{deployed.id}/", method="GET", headers={"X-Auth-Token": deployed.token})
    assert root.status == 200 and root.json()["model"] == "rts-demo-model"


# --- Load balancing --------------------------------------------------------------------------


def test_round_robin_across_three_instances(gateway_url, engine, pool, flavors, owner, demo_version):
    deployed = deploy(owner, demo_version, instance_count=3)
    wait_until_routed(gateway_url, deployed)
    ports = deployed.ports()
    assert len(set(ports)) == 3
    hits = Counter(
        echo_port(
            call(gateway_url, f"/v1/infers/{deployed.id}/echo", method="GET", headers={"X-Auth-Token": deployed.token})
        )
        for _ in range(30)
    )
    assert hits == {port: 10 for port in ports}


def test_gateway_follows_an_instance_that_dies_and_comes_back(
    gateway_url, engine, pool, flavors, owner, demo_version, docker_client
):
    deployed = deploy(owner, demo_version, instance_count=3)
    wait_until_routed(gateway_url, deployed)
    echo = f"/v1/infers/{deployed.id}/echo"
    headers = {"X-Auth-Token": deployed.token}
    victim = Instance.objects.filter(service=deployed.service).order_by("index").first()
    docker_client.containers.get(victim.container_name).kill()

    # Calls keep succeeding: a refused connection is retried on another instance.
    hits = Counter(echo_port(call(gateway_url, echo, method="GET", headers=headers)) for _ in range(30))
    assert victim.host_port not in hits
    assert len(hits) == 2

    # The reconcile loop restarts it (maybe on a new port) and, once it
    # answers its health check, marks it healthy again.
    reconcile()

    def healthy_after_a_cycle() -> bool:
        if Instance.objects.get(id=victim.id).is_healthy:
            return True
        reconcile()
        return False

    eventually(healthy_after_a_cycle, timeout=30, interval=0.2, message="the restarted instance never became healthy")
    back_port = Instance.objects.get(id=victim.id).host_port
    poll(lambda: call(gateway_url, echo, method="GET", headers=headers), lambda r: echo_port(r) == back_port)
    hits = Counter(echo_port(call(gateway_url, echo, method="GET", headers=headers)) for _ in range(30))
    assert hits == {port: 10 for port in deployed.ports()}
    assert back_port in hits


# --- Statistics --------------------------------------------------------------------------------


def test_statistics_reach_the_database(gateway_url, deployed):
    # Only routed calls count: the 404s before the table lists the service do
    # not, so the wait adds exactly one call (its final 200).
    wait_until_routed(gateway_url, deployed, path="/health")
    predict = f"/v1/infers/{deployed.id}"
    replies = [call(gateway_url, predict, headers=token_headers(deployed.token), body=PREDICT_BODY) for _ in range(7)]
    replies += [
        call(gateway_url, f"{predict}/fail?status=500", headers={"X-Auth-Token": deployed.token}) for _ in range(3)
    ]
    assert [reply.status for reply in replies] == [200] * 7 + [500] * 3

    # The gateway flushes its counts once a second.
    eventually(
        lambda: Service.objects.get(id=deployed.id).invocation_times == 11, message="the calls were never counted"
    )
    service = Service.objects.get(id=deployed.id)
    assert (service.invocation_times, service.failed_times) == (11, 3)
    stats = ServiceCallStat.objects.filter(service=deployed.service)
    assert {stat.config_id for stat in stats} == {deployed.service.configs.get().id}
    assert (sum(stat.calls for stat in stats), sum(stat.failed for stat in stats)) == (11, 3)
    assert sum(sum(stat.latency_hist) for stat in stats) == 11


def test_a_token_records_when_it_was_last_used(gateway_url, deployed):
    token = AccessToken.objects.get(owner=deployed.service.owner, name="tests")
    assert token.last_used_at is None
    before = timezone.now()
    wait_until_routed(gateway_url, deployed, path="/health")
    eventually(
        lambda: AccessToken.objects.get(id=token.id).last_used_at is not None, message="the use was never recorded"
    )
    assert AccessToken.objects.get(id=token.id).last_used_at >= before - timedelta(seconds=1)
