"""Live updates with real containers behind the real gateway: while a client
calls the service in a loop, each kind of change (a new version, a version
removed, more compute nodes, another specification, other environment
variables) starts the new instances, moves the traffic once they are healthy
and removes the old ones after their calls in flight finished, and the client
sees no failed call. A version that never turns healthy is rolled back.

The update's task and the prober run inline here (services.lifecycle), as a
worker would run them."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest

from access.actions import access_token_create
from services.actions import service_create, service_update
from services.choices import ConfigPhase, ServiceStatus
from services.lifecycle import deploys_probe, service_deploy_run, service_update_run
from services.models import Service, ServiceEvent, ServiceUpdate, ServiceVersionConfig
from services.validation import parse_deploy_request, parse_update_request
from tests.conftest import containers_of
from tests.factories import DEMO_IMAGE_V2, make_version
from tests.waiting import eventually

pytestmark = pytest.mark.docker


class CallLoop:
    """A client calling the service through the gateway as fast as it answers,
    each call on a fresh connection; keeps every status and answering version."""

    def __init__(self, gateway_url: str, service_id: str, token: str) -> None:
        url = urlsplit(gateway_url)
        self.host, self.port = url.hostname, url.port
        self.path = f"/v1/infers/{service_id}"
        self.headers = {"X-Auth-Token": token, "Content-Type": "application/json"}
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _call(self) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", self.path, body=json.dumps({"data": [[1, 2]]}), headers=self.headers)
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            return 0, str(exc)
        finally:
            conn.close()
        try:
            return response.status, json.loads(body).get("version", "")
        except ValueError:
            return response.status, body[:200].decode(errors="replace")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(self._call())
            time.sleep(0.005)

    def __enter__(self) -> CallLoop:
        self._thread.start()
        eventually(lambda: len(self.results) >= 5, timeout=10, message="the call loop made no calls")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def failed(self) -> list[tuple[int, str]]:
        return [result for result in self.results if result[0] != 200]

    def versions_since(self, start: int) -> set[str]:
        return {version for _, version in self.results[start:]}


@pytest.fixture
def v2(owner):
    return make_version(owner, "2.0.0", image=DEMO_IMAGE_V2)


@pytest.fixture
def token(owner) -> str:
    return access_token_create(owner=owner, name="loop", days=1).secret


def row(version, weight=100, *, flavor="cpu.1u512m", instance_count=1, envs=None) -> dict:
    return {
        "app_version": version.id,
        "flavor": flavor,
        "instance_count": instance_count,
        "weight": weight,
        "envs": envs or {},
    }


def deploy(owner, rows: list[dict], name: str = "svc-live") -> Service:
    data = {"name": name, "description": "", "pool": "public-cpu", "timeout_minutes": 3, "configs": rows}
    service = service_create(owner=owner, request=parse_deploy_request(owner=owner, data=data))
    outcome = service_deploy_run(service_id=service.id)
    assert outcome == "running", Service.objects.get(id=service.id).status_reason
    return Service.objects.get(id=service.id)


def update_and_run(service: Service, rows: list[dict], owner) -> tuple[ServiceUpdate, list[str]]:
    """The action, then the worker's side inline: the update task, the prober
    while it waits, the task again once the prober says the new instances are ready."""
    request = parse_update_request(service=service, data={"configs": rows})
    update = service_update(service=service, request=request, actor=owner)
    assert update is not None
    outcomes = [service_update_run(service_id=service.id)]
    while outcomes[-1] == "waiting":
        probe = eventually(lambda: (deploys_probe() or {}).get(str(service.id)) not in (None, "waiting") and True)
        assert probe
        outcomes.append(service_update_run(service_id=service.id))
    update.refresh_from_db()
    return update, outcomes


def running_containers(docker_client, service: Service) -> set[str]:
    return {c.name for c in containers_of(docker_client, service.id) if c.status == "running"}


def configs_of(service: Service) -> list[tuple]:
    return list(
        ServiceVersionConfig.objects.filter(service=service)
        .order_by("position")
        .values_list("app_version__version", "weight", "flavor__code", "instance_count", "envs", "phase")
    )


@pytest.mark.parametrize(
    ("before", "after", "expected", "kept"),
    [
        pytest.param(
            lambda v1, v2: [row(v1)],
            lambda v1, v2: [row(v1, 50), row(v2, 50)],
            [("1.0.0", 50, "cpu.1u512m", 1, {}), ("2.0.0", 50, "cpu.1u512m", 1, {})],
            1,
            id="add-a-version",
        ),
        pytest.param(
            lambda v1, v2: [row(v1, 50), row(v2, 50)],
            lambda v1, v2: [row(v2)],
            [("2.0.0", 100, "cpu.1u512m", 1, {})],
            1,
            id="remove-a-version",
        ),
        pytest.param(
            lambda v1, v2: [row(v1)],
            lambda v1, v2: [row(v1, instance_count=2)],
            [("1.0.0", 100, "cpu.1u512m", 2, {})],
            0,
            id="more-compute-nodes",
        ),
        pytest.param(
            lambda v1, v2: [row(v1)],
            lambda v1, v2: [row(v1, flavor="cpu.1u1g.free")],
            [("1.0.0", 100, "cpu.1u1g.free", 1, {})],
            0,
            id="another-specification",
        ),
        pytest.param(
            lambda v1, v2: [row(v1)],
            lambda v1, v2: [row(v1, envs={"GREETING": "hello"})],
            [("1.0.0", 100, "cpu.1u512m", 1, {"GREETING": "hello"})],
            0,
            id="other-environment-variables",
        ),
    ],
)
def test_an_update_under_a_call_loop_fails_no_call(
    engine,
    transactional_db,
    owner,
    pool,
    flavors,
    demo_version,
    v2,
    token,
    gateway_url,
    enqueued,
    docker_client,
    before,
    after,
    expected,
    kept,
):
    service = deploy(owner, before(demo_version, v2))
    old_containers = running_containers(docker_client, service)
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, after(demo_version, v2), owner)
        after_update = len(loop.results)
        eventually(lambda: len(loop.results) >= after_update + 20, message="the loop stalled after the update")

    assert loop.failed == [], f"{len(loop.failed)} of {len(loop.results)} calls failed: {loop.failed[:5]}"
    assert outcomes[-1] == "done"
    assert update.outcome == ServiceUpdate.Outcome.SUCCEEDED
    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING
    assert [c[:5] for c in configs_of(service)] == expected
    assert {c[5] for c in configs_of(service)} == {ConfigPhase.SERVING}
    # A version whose settings stay keeps its containers (only its weight may
    # change); the others' are gone, and the new ones run, one per compute node.
    now_running = running_containers(docker_client, service)
    assert len(now_running & old_containers) == kept
    assert len(now_running) == sum(instance_count for *_, instance_count, _ in expected)
    # After the update the calls reach only the versions it kept.
    assert loop.versions_since(after_update) == {version for version, *_ in expected}
    assert [c["weight"] for c in update.after["config"]] == [weight for _, weight, *_ in expected]
    messages = list(ServiceEvent.objects.filter(service=service).values_list("message", flat=True))
    assert any(m.startswith("Update requested by owner") for m in messages)
    assert any(m.startswith("Update done. Running") for m in messages)


def test_new_ratios_move_no_container_and_route_at_once(
    engine, transactional_db, owner, pool, flavors, demo_version, v2, token, gateway_url, enqueued, docker_client
):
    service = deploy(owner, [row(demo_version, 50), row(v2, 50)])
    containers = {c.name: c.id for c in containers_of(docker_client, service.id)}
    loop = CallLoop(gateway_url, str(service.id), token)
    eventually(lambda: loop._call()[0] == 200, message="never routed")

    request = parse_update_request(service=service, data={"configs": [row(demo_version, 0), row(v2, 100)]})
    update = service_update(service=service, request=request, actor=owner)

    # The action returns once every gateway process routes by the new ratios.
    answers = [loop._call() for _ in range(30)]
    assert {version for _, version in answers} == {"2.0.0"}
    assert {status for status, _ in answers} == {200}
    assert update is not None and update.outcome == ServiceUpdate.Outcome.SUCCEEDED
    assert {c.name: c.id for c in containers_of(docker_client, service.id)} == containers
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert [task for task, *_ in enqueued] == ["service_deploy_task"]  # no update task: nothing to start or remove


def test_a_call_in_flight_on_an_old_instance_finishes_before_it_is_removed(
    engine, transactional_db, owner, pool, flavors, demo_version, token, gateway_url, enqueued, docker_client
):
    service = deploy(owner, [row(demo_version)])
    loop = CallLoop(gateway_url, str(service.id), token)
    eventually(lambda: loop._call()[0] == 200, message="never routed")
    slow: dict[str, object] = {}

    def slow_call() -> None:
        url = urlsplit(gateway_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
        conn.request("GET", f"/v1/infers/{service.id}/sleep?seconds=2", headers={"X-Auth-Token": token})
        response = conn.getresponse()
        slow.update(status=response.status, body=response.read(), at=time.monotonic())

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.3)  # the slow call is on the old instance now
    update, outcomes = update_and_run(service, [row(demo_version, envs={"GREETING": "hi"})], owner)
    done_at = time.monotonic()
    thread.join(timeout=20)

    assert slow["status"] == 200, slow
    assert json.loads(slow["body"])["slept"] == 2
    # The old instance was removed only after the call in flight finished.
    assert slow["at"] <= done_at
    assert update.outcome == ServiceUpdate.Outcome.SUCCEEDED


def test_a_version_that_never_turns_healthy_is_rolled_back(
    engine,
    transactional_db,
    settings,
    owner,
    pool,
    flavors,
    demo_version,
    token,
    gateway_url,
    enqueued,
    docker_client,
):
    # The service's 3-minute timeout, scaled down to 3.6 s.
    settings.SERVICE_TIMEOUT_SCALE = 0.02
    # The worker hands the wait to the prober after half a second, as a deploy's.
    settings.DEPLOY_FAST_WAIT_SECONDS = 0.5
    service = deploy(owner, [row(demo_version)])
    old_containers = running_containers(docker_client, service)
    before = configs_of(service)

    with CallLoop(gateway_url, str(service.id), token) as loop:
        # The new instance answers its health check with 500, forever.
        update, outcomes = update_and_run(service, [row(demo_version, envs={"HEALTH_STATUS": "500"})], owner)

    assert outcomes[0] == "waiting"
    assert update.outcome == ServiceUpdate.Outcome.ROLLED_BACK
    assert "timed out after 3 minute(s)" in update.reason
    assert loop.failed == []
    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING
    assert configs_of(service) == before
    assert running_containers(docker_client, service) == old_containers
    event = ServiceEvent.objects.filter(service=service).order_by("-id").first()
    assert event.level == ServiceEvent.Level.ERROR
    assert event.message.startswith("Update rolled back: timed out")
    assert "runs its previous configuration" in event.message
    assert update.after["config"] == update.before["config"]


def test_the_update_task_run_again_changes_nothing(
    engine, transactional_db, owner, pool, flavors, demo_version, token, gateway_url, enqueued, docker_client
):
    service = deploy(owner, [row(demo_version)])
    update, _ = update_and_run(service, [row(demo_version, instance_count=2)], owner)
    containers = {c.name: c.id for c in containers_of(docker_client, service.id)}

    assert service_update_run(service_id=service.id) == "not claimed"
    assert {c.name: c.id for c in containers_of(docker_client, service.id)} == containers
    assert ServiceUpdate.objects.get().outcome == ServiceUpdate.Outcome.SUCCEEDED
