"""A pool of two nodes on two real Docker engines: the main engine and a second
dockerd on this machine (tests/engines.py, the `second_engine` fixture).

Instances are spread over the engines and calls through the gateway reach every
one of them. When one engine stops, the service turns Alarm and keeps answering
from the other without a failed call; once the engine is back, the reconcile
loop starts the instance again and the service is Running. Deploys and
reconcile cycles run inline here, as a worker would run them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from urllib.parse import urlsplit

import docker
import pytest

from access.actions import access_token_create
from pools.models import Node, ResourcePool
from services import instance_runtime
from services.actions import service_create, service_delete
from services.choices import ServiceStatus
from services.instance_runtime import service_network_spec
from services.lifecycle import service_delete_run, service_deploy_run
from services.models import Instance, Service
from services.reconcile import reconcile
from services.validation import parse_deploy_request
from tests.conftest import containers_of
from tests.factories import add_node, deploy_data, make_pool, make_version
from tests.waiting import eventually

pytestmark = pytest.mark.docker

# The demo server answers within a second or two of its start. A deploy whose
# instances do not answer within this is handed to the prober (the deploy run
# returns "waiting"), so a broken instance fails the test in seconds, not after
# the suite's 600 s.
FAST_WAIT_SECONDS = 10
CALL_INTERVAL_SECONDS = 0.02


@pytest.fixture(autouse=True)
def _short_deploy_wait(settings):
    settings.DEPLOY_FAST_WAIT_SECONDS = FAST_WAIT_SECONDS


@pytest.fixture
def two_engine_pool(db, second_engine):
    """The public pool "public-cpu": node "local" on the main engine and node
    "second" on the second one, alike in size (2 CPUs, 8 GiB, overcommitted 4
    times: either node alone holds a few small instances)."""
    pool = make_pool()
    ResourcePool.objects.filter(id=pool.id).update(cpu_overcommit=4, memory_overcommit=4)
    add_node(pool, "second", docker_host=second_engine)
    pool.refresh_from_db()
    return pool


@pytest.fixture
def second_client(second_engine):
    """A Docker SDK client of the second engine, to see what runs there."""
    client = docker.DockerClient(base_url=second_engine, version="auto")
    yield client
    client.close()


@pytest.fixture
def token(owner) -> str:
    return access_token_create(owner=owner, name="two-engines", days=1).secret


# --- Helpers ---------------------------------------------------------------------------


def describe(service: Service) -> str:
    """Where each instance is and what its last probe said, for failure messages."""
    instances = Instance.objects.filter(service=service).select_related("node").order_by("index")
    where = "; ".join(
        f"#{i.index} on {i.node.name}: port {i.host_port}, healthy={i.is_healthy} ({i.probe_note})" for i in instances
    )
    return f"{service.status_reason or 'no reason given'}; {where}"


def create(owner, version, *, name: str, instance_count: int = 2, envs: dict | None = None) -> Service:
    """service_create alone: the instances placed on nodes, no container yet
    (the deploy task it enqueues is only recorded, see the `enqueued` fixture)."""
    data = deploy_data(version, name=name, instance_count=instance_count, envs=envs or {})
    return service_create(owner=owner, request=parse_deploy_request(owner=owner, data=data))


def bridges_by_node(service: Service) -> dict[str, str]:
    """Node name -> the Linux bridge the service's network gets on that node's engine."""
    instances = Instance.objects.filter(service=service).select_related(
        "node", "config__app_version__application", "config__flavor"
    )
    return {i.node.name: instance_runtime.container_spec(service, i).network.bridge_name for i in instances}


def deploy_run(owner, version, *, name: str, instance_count: int = 2, envs: dict | None = None) -> tuple[Service, str]:
    """Create the service and run its deploy inline; the service and the run's outcome.

    Both engines share this host's network namespace. When a service's network
    would get the same bridge name on both, the engine that creates it second
    takes over the first one's bridge and removes its address, and the first
    engine's instances are then routed to this machine's default gateway: off
    the machine. So no container is made then, and the test fails saying why
    (test_a_service_on_two_engines_gets_a_bridge_of_its_own_on_each is the bug's own test).
    """
    service = create(owner, version, name=name, instance_count=instance_count, envs=envs)
    bridges = bridges_by_node(service)
    if len(set(bridges.values())) < len(bridges):
        pytest.fail(f"not deployed: the engines would share one Linux bridge for the service's network: {bridges}")
    outcome = service_deploy_run(service_id=service.id)
    service.refresh_from_db()
    return service, outcome


def deploy(owner, version, *, name: str, instance_count: int = 2, envs: dict | None = None) -> Service:
    service, outcome = deploy_run(owner, version, name=name, instance_count=instance_count, envs=envs)
    assert outcome == "running", f"the deploy ended {outcome!r}, {service.status}: {describe(service)}"
    return service


def container_by_node(service: Service) -> dict[str, str]:
    """Node name -> container name, for a service with one instance per node."""
    pairs = Instance.objects.filter(service=service).values_list("node__name", "container_name")
    by_node = dict(pairs)
    assert len(by_node) == len(pairs), f"two instances on one node: {list(pairs)}"
    return by_node


def running_names(client, service: Service) -> set[str]:
    return {c.name for c in containers_of(client, service.id) if c.status == "running"}


def call(gateway_url: str, service_id, token: str, path: str = "/predict") -> tuple[int, str]:
    """One call through the gateway on a fresh connection: (status, body), (0, error) when none came."""
    url = urlsplit(gateway_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    headers = {"X-Auth-Token": token, "Content-Type": "application/json"}
    try:
        connection.request(
            "POST", f"/v1/infers/{service_id}{path}", body=json.dumps({"data": [[1, 2]]}), headers=headers
        )
        response = connection.getresponse()
        return response.status, response.read()[:300].decode(errors="replace")
    except OSError as exc:
        return 0, repr(exc)
    finally:
        connection.close()


def marked_calls_seen(client, container_name: str, marker: str) -> int:
    """How many calls carrying `marker` in their path the container logged
    (the demo server logs every call but its successful health checks)."""
    return client.containers.get(container_name).logs().decode(errors="replace").count(marker)


class CallLoop:
    """A client calling the service through the gateway every 20 ms, on a fresh
    connection each time; keeps every failed call with when it happened."""

    def __init__(self, gateway_url: str, service_id, token: str) -> None:
        self.args = (gateway_url, service_id, token)
        self.count = 0
        self.failed: list[tuple[float, int, str]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = call(*self.args)
            self.count += 1
            if status != 200:
                self.failed.append((round(time.monotonic() - self.started, 3), status, body))
            self._stop.wait(CALL_INTERVAL_SECONDS)

    def calls_more(self, how_many: int) -> None:
        """Wait until the loop has made `how_many` more calls."""
        target = self.count + how_many
        eventually(lambda: self.count >= target, timeout=30, message="the call loop stalled")

    def __enter__(self) -> CallLoop:
        self._thread.start()
        self.calls_more(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def reconcile_until(service: Service, status: ServiceStatus, timeout: float = 60.0) -> tuple[int, float]:
    """Run reconcile cycles back to back (0.2 s apart; the loop's own interval is
    longer) until the service is in `status`: (cycles, seconds)."""
    began = time.monotonic()
    cycles = 0

    def settled() -> bool:
        nonlocal cycles
        assert reconcile() is not None, "another reconcile cycle holds the lock"
        cycles += 1
        service.refresh_from_db()
        return service.status == status

    eventually(
        settled,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"still {service.status} after {cycles} cycle(s), wanted {status}: {describe(service)}",
    )
    return cycles, time.monotonic() - began


# --- Placement --------------------------------------------------------------------------


def test_a_two_instance_service_runs_one_instance_on_each_engine(
    engine, docker_client, second_client, owner, two_engine_pool, flavors, enqueued
):
    service, outcome = deploy_run(owner, make_version(owner), name="svc-spread")

    by_node = container_by_node(service)
    assert sorted(by_node) == ["local", "second"]
    assert running_names(docker_client, service) == {by_node["local"]}
    assert running_names(second_client, service) == {by_node["second"]}
    assert outcome == "running", f"the deploy ended {outcome!r}, {service.status}: {describe(service)}"
    assert service.status == ServiceStatus.RUNNING


def test_a_service_on_two_engines_gets_a_bridge_of_its_own_on_each(owner, two_engine_pool, flavors, enqueued):
    # Engines on one host share its network namespace, and with it the names
    # of Linux bridges. When a second engine creates a network on a bridge
    # name that exists, dockerd takes that bridge over and replaces its
    # address with its own subnet's: the route to the first engine's
    # instances behind it goes, and their traffic (health checks, calls)
    # follows the default route off the machine. Nothing is deployed here.
    service = create(owner, make_version(owner), name="svc-bridges")

    bridges = bridges_by_node(service)

    assert sorted(bridges) == ["local", "second"]
    assert bridges["local"] != bridges["second"], bridges


def test_one_instance_services_take_turns_on_the_engines(
    engine,
    transactional_db,
    docker_client,
    second_client,
    owner,
    two_engine_pool,
    flavors,
    token,
    gateway_url,
    enqueued,
):
    version = make_version(owner)
    first = deploy(owner, version, name="svc-first", instance_count=1)
    second = deploy(owner, version, name="svc-second", instance_count=1)

    # Each goes to the node with the most room left: the second to the other one.
    nodes = {service: set(container_by_node(service)) for service in (first, second)}
    assert sorted(nodes[first] | nodes[second]) == ["local", "second"], nodes
    on_second = first if nodes[first] == {"second"} else second
    assert running_names(docker_client, on_second) == set()
    assert running_names(second_client, on_second) == set(container_by_node(on_second).values())
    # The instance on the second engine serves through the gateway like any other.
    eventually(lambda: call(gateway_url, on_second.id, token)[0] == 200, message="never routed")


def test_a_node_whose_engine_is_down_gets_no_new_instance(
    engine, docker_client, second_engine_daemon, owner, two_engine_pool, flavors, enqueued
):
    second_engine_daemon.stop()  # the test clean-up starts it again
    report = reconcile()

    assert report is not None and report.unreachable_nodes == ["second"]
    assert not Node.objects.get(name="second").is_reachable
    service = deploy(owner, make_version(owner), name="svc-one-engine")
    assert set(Instance.objects.filter(service=service).values_list("node__name", flat=True)) == {"local"}
    assert len(running_names(docker_client, service)) == 2


# --- Calls --------------------------------------------------------------------------------


def test_calls_through_the_gateway_reach_the_instances_on_both_engines(
    engine,
    transactional_db,
    docker_client,
    second_client,
    owner,
    two_engine_pool,
    flavors,
    token,
    gateway_url,
    enqueued,
):
    service = deploy(owner, make_version(owner), name="svc-calls")
    by_node = container_by_node(service)
    eventually(lambda: call(gateway_url, service.id, token)[0] == 200, message="never routed")
    marker = uuid.uuid4().hex

    answers = [call(gateway_url, service.id, token, f"/echo?probe={marker}-{n}") for n in range(40)]

    assert [status for status, _ in answers] == [200] * 40, answers
    clients = {"local": docker_client, "second": second_client}

    counts: dict[str, int] = {}

    def all_logged() -> bool:
        # The server logs a call just after answering it.
        counts.update({node: marked_calls_seen(clients[node], by_node[node], marker) for node in by_node})
        return sum(counts.values()) == 40

    eventually(all_logged, message=lambda: f"calls logged per node: {counts}")
    # The gateway picks an instance at random: both are picked in 40 calls but
    # once in 2**39 runs.
    assert counts["local"] > 0 and counts["second"] > 0, counts


# --- An engine stops and comes back ------------------------------------------------------


def test_when_an_engine_stops_the_service_turns_alarm_keeps_answering_and_recovers(
    engine,
    transactional_db,
    docker_client,
    second_client,
    second_engine_daemon,
    owner,
    two_engine_pool,
    flavors,
    token,
    gateway_url,
    enqueued,
    capsys,
):
    # As a well-behaved server would, the demo server finishes the calls it
    # has accepted before it exits on SIGTERM (the engine's stop sends it), so
    # what is tested is the gateway and the reconcile loop, not a call cut off
    # in the middle of its answer (the gateway never retries those: the model
    # may have acted on them).
    timings: dict[str, float] = {}
    began = time.monotonic()
    service = deploy(owner, make_version(owner), name="svc-alarm", envs={"STOP_DELAY_SECONDS": "1"})
    timings["deploy (one instance on each engine)"] = time.monotonic() - began
    on_second = container_by_node(service)["second"]
    eventually(lambda: call(gateway_url, service.id, token)[0] == 200, message="never routed")

    with CallLoop(gateway_url, service.id, token) as loop:
        began = time.monotonic()
        timings["engine stop (SIGTERM until dockerd exited)"] = second_engine_daemon.stop()
        cycles, timings["reconcile to Alarm"] = reconcile_until(service, ServiceStatus.ALARM)
        timings["engine stop to Alarm"] = time.monotonic() - began
        assert service.status_reason == "1/2 instance(s) healthy"
        assert not Node.objects.get(name="second").is_reachable
        loop.calls_more(50)  # a second of calls with only the main engine's instance

        began = time.monotonic()
        timings["engine start (until it answered)"] = second_engine_daemon.start()
        cycles_back, timings["reconcile to Running"] = reconcile_until(service, ServiceStatus.RUNNING)
        timings["engine start to Running"] = time.monotonic() - began
        # The gateway sends calls to the instance on the second engine again.
        marker = uuid.uuid4().hex
        eventually(
            lambda: (
                call(gateway_url, service.id, token, f"/echo?probe={marker}")[0] == 200
                and marked_calls_seen(second_client, on_second, marker) > 0
            ),
            timeout=20,
            interval=0.02,
            message="no call reached the instance on the second engine after it came back",
        )
        loop.calls_more(20)

    with capsys.disabled():
        print(
            f"\n  two engines: {loop.count} calls every {CALL_INTERVAL_SECONDS * 1000:.0f} ms, {len(loop.failed)} failed"
        )
        print(f"    reconcile cycles to Alarm: {cycles}, back to Running: {cycles_back}")
        for step, seconds in timings.items():
            print(f"    {step:45s} {seconds:6.2f} s")
    assert loop.failed == [], f"{len(loop.failed)} of {loop.count} calls failed: {loop.failed[:5]}"
    # The same container, started again by the reconcile loop (its engine's stop had ended it).
    assert running_names(second_client, service) == {on_second}
    assert Instance.objects.get(container_name=on_second).restart_count == 1
    assert Node.objects.get(name="second").is_reachable


# --- Delete ---------------------------------------------------------------------------------


def test_deleting_a_service_on_both_engines_leaves_nothing_on_either(
    engine, docker_client, second_client, owner, two_engine_pool, flavors, enqueued
):
    service = deploy(owner, make_version(owner), name="svc-gone")
    network = service_network_spec(service.id).name

    service_delete(service=service)
    assert service_delete_run(service_id=service.id) == "deleted"

    for client in (docker_client, second_client):
        assert containers_of(client, service.id) == []
        assert client.networks.list(names=[network]) == []


# --- Multi-pool load balancing ------------------------------------------------------------


def test_a_multi_pool_service_spreads_over_both_pools_and_one_pools_engine_going_down_is_alarm_not_outage(
    engine,
    transactional_db,
    docker_client,
    second_client,
    second_engine_daemon,
    owner,
    flavors,
    token,
    gateway_url,
    enqueued,
    settings,
):
    # Two dedicated pools of the owner, one node each, alike: the main engine and the second.
    first = make_pool("pool-main", owner=owner, overcommit=4)
    second = make_pool("pool-second", owner=owner, local_node=None, overcommit=4)
    add_node(second, "second", docker_host=second_engine_daemon.docker_host)
    version = make_version(owner)
    data = deploy_data(
        version,
        name="svc-balanced",
        pool="pool-main",
        multi_pool=True,
        second_pool="pool-second",
        instance_count=2,
        envs={"STOP_DELAY_SECONDS": "1"},
    )
    service = service_create(owner=owner, request=parse_deploy_request(owner=owner, data=data))
    assert service_deploy_run(service_id=service.id) == "running", describe(service)

    pools = dict(Instance.objects.filter(service=service).values_list("node__pool__name", "node__name"))
    assert pools == {"pool-main": "local", "pool-second": "second"}
    assert len(running_names(docker_client, service)) == 1 and len(running_names(second_client, service)) == 1
    eventually(lambda: call(gateway_url, service.id, token)[0] == 200, message="never routed")
    assert first.id != second.id

    with CallLoop(gateway_url, service.id, token) as loop:
        second_engine_daemon.stop()
        reconcile_until(service, ServiceStatus.ALARM)
        loop.calls_more(50)

    assert service.status_reason == "1/2 instance(s) healthy"
    assert loop.failed == [], f"{len(loop.failed)} of {loop.count} calls failed: {loop.failed[:5]}"
