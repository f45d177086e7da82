"""Services on a Swarm pool, on a real single-node swarm (the `swarm_manager`
fixture: an engine of its own, never the main one) and through the session's
real gateway: deploy to Running with one Swarm service per configuration,
calls to every task, a killed task replaced by Swarm and followed by the
console, stop, start, delete, a task that keeps failing, and the reconcile
loop removing a Swarm service nothing owns."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import docker
import pytest
from django.conf import settings

from access.actions import access_token_create
from pools.actions import pool_create
from pools.models import PoolKind
from pools.validation import PoolRequest
from services import actions
from services.actions import service_create
from services.choices import InstanceState, ServiceStatus
from services.instance_runtime import swarm_service_name
from services.lifecycle import deploys_probe, service_delete_run, service_deploy_run, service_stop_run
from services.models import Service, ServiceEvent, ServiceUpdate
from services.reconcile import reconcile
from services.runtime import swarm
from services.validation import parse_deploy_request
from tests.factories import DEMO_IMAGE_V2, create_service, make_version
from tests.gateway.test_gateway import Deployed, call, echo_port, wait_until_routed
from tests.services.test_live_update import CallLoop, row, update_and_run
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("enqueued")]

POOL = "swarm-cpu"


@pytest.fixture
def swarm_pool(swarm_manager, flavors, owner):
    pool = pool_create(
        request=PoolRequest(
            name=POOL,
            description="",
            owner=owner,
            cpu_overcommit=Decimal(16),
            memory_overcommit=Decimal(4),
            offers_every_flavor=True,
            flavors=[],
            kind=PoolKind.SWARM,
            manager_url=swarm_manager,
        )
    )
    yield pool
    for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID):
        swarm.remove_version_service(swarm_manager, info.name)


@pytest.fixture
def swarm_api(swarm_manager):
    client = docker.DockerClient(base_url=swarm_manager, version="auto")
    yield client.api
    client.close()


def until(check, what: str, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(every)
    return result


def deploy_settled(service_id) -> Service:
    """The service once its deploy is over; the periodic prober, run here, takes
    over a wait the deploy handed to it."""

    def settled() -> Service | None:
        deploys_probe()
        service = Service.objects.get(id=service_id)
        return service if service.status != ServiceStatus.DEPLOYING else None

    return until(settled, "the deploy settled", timeout=90, every=0.3)


def deploy_on_swarm(owner, version, *, instance_count: int = 2, envs: dict | None = None) -> Service:
    service = create_service(
        owner, version, pool=POOL, name="svc-swarm", instance_count=instance_count, envs=envs or {}
    )
    assert service_deploy_run(service_id=service.id) in ("running", "waiting", "failed")
    return deploy_settled(service.id)


def running_tasks(manager_url: str, service: Service) -> dict[int, swarm.SwarmTask]:
    name = swarm_service_name(service.id, service.configs.get().id)
    return {
        task.slot: task
        for task in swarm.list_managed_tasks(manager_url, settings.CONSOLE_ID)
        if task.service_name == name and task.is_running and task.slot is not None
    }


def test_a_service_on_a_swarm_pool_runs_as_one_swarm_service_and_answers_through_the_gateway(
    swarm_pool, swarm_manager, owner, gateway_url
):
    service = deploy_on_swarm(owner, make_version(owner))

    assert service.status == ServiceStatus.RUNNING, service.status_reason
    (config,) = service.configs.all()
    names = [info.name for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID)]
    assert names == [swarm_service_name(service.id, config.id)]
    tasks = running_tasks(swarm_manager, service)
    node = swarm_pool.nodes.get()
    instances = list(service.instances.order_by("index"))
    # The row of index i is the task in slot i + 1: its node, its port, its container.
    assert [(i.node_id, i.host_port, i.container_id, i.is_healthy) for i in instances] == [
        (node.id, tasks[i.index + 1].host_port, tasks[i.index + 1].container_id, True) for i in instances
    ]

    token = access_token_create(owner=owner, name="swarm", days=1).secret
    deployed = Deployed(service, token)
    wait_until_routed(gateway_url, deployed)
    ports = set()
    deadline = time.monotonic() + 20
    while len(ports) < 2 and time.monotonic() < deadline:
        reply = call(gateway_url, f"/v1/infers/{deployed.id}/echo", method="GET", headers={"X-Auth-Token": token})
        assert reply.status == 200, (reply.status, reply.body[:200])
        ports.add(echo_port(reply))
    assert ports == {task.host_port for task in tasks.values()}


def test_a_killed_task_is_replaced_by_swarm_and_the_console_follows_it(
    swarm_pool, swarm_manager, swarm_api, owner, gateway_url
):
    service = deploy_on_swarm(owner, make_version(owner), instance_count=1)
    assert service.status == ServiceStatus.RUNNING, service.status_reason
    (before,) = running_tasks(swarm_manager, service).values()

    swarm_api.kill(before.container_id)

    def replaced() -> swarm.SwarmTask | None:
        reconcile()
        tasks = running_tasks(swarm_manager, service)
        instance = service.instances.get()
        task = tasks.get(1)
        if task is None or task.task_id == before.task_id or not instance.is_healthy:
            return None
        return task if instance.host_port == task.host_port else None

    after = until(replaced, "the console followed the new task", timeout=60, every=0.5)
    instance = service.instances.get()
    assert (instance.container_id, instance.state) == (after.container_id, InstanceState.RUNNING)
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    token = access_token_create(owner=owner, name="swarm", days=1).secret
    reply = wait_until_routed(gateway_url, Deployed(service, token))
    assert echo_port(reply) == after.host_port


def test_stop_start_and_delete_on_a_swarm_pool_leave_nothing_behind(swarm_pool, swarm_manager, owner):
    service = deploy_on_swarm(owner, make_version(owner), instance_count=1)
    assert service.status == ServiceStatus.RUNNING

    actions.service_stop(service=service, actor=owner)
    assert service_stop_run(service_id=service.id) == "stopped"
    assert Service.objects.get(id=service.id).status == ServiceStatus.STOPPED
    assert swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID) == []

    actions.service_start(service=Service.objects.get(id=service.id), actor=owner)
    assert service_deploy_run(service_id=service.id) in ("running", "waiting")
    assert deploy_settled(service.id).status == ServiceStatus.RUNNING
    assert len(running_tasks(swarm_manager, service)) == 1

    actions.service_delete(service=Service.objects.get(id=service.id), actor=owner)
    assert service_delete_run(service_id=service.id) == "deleted"
    assert not Service.objects.filter(id=service.id).exists()
    assert swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID) == []
    until(lambda: not swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID, running_only=False), "no task left")


def test_a_version_whose_tasks_keep_failing_fails_the_deploy_with_the_reason(swarm_pool, swarm_manager, owner):
    service = deploy_on_swarm(owner, make_version(owner), instance_count=1, envs={"CRASH_ON_START": "1"})

    assert service.status == ServiceStatus.FAILED
    assert "failed 3 times" in service.status_reason and "non-zero exit (1)" in service.status_reason
    failed = ServiceEvent.objects.filter(service=service, message__startswith="Failed").get()
    assert failed.level == ServiceEvent.Level.ERROR
    # Its Swarm service went with the failure: Swarm would restart it for ever.
    assert swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID) == []


def test_the_reconcile_loop_removes_a_swarm_service_no_configuration_names(swarm_pool, swarm_manager, owner):
    service = deploy_on_swarm(owner, make_version(owner), instance_count=1)
    name = swarm_service_name(service.id, service.configs.get().id)
    stray = swarm.ensure_version_service(
        swarm_manager,
        swarm.VersionServiceSpec(
            name=f"rts-{uuid.uuid4()}-1",
            image="rts-demo-model:1.0.0",
            container_port=8080,
            replicas=1,
            cpus=0.25,
            memory_mib=128,
            cpu_reservation=0.25,
            memory_reservation_mib=128,
            environment={},
            labels={
                "rts.managed": "1",
                "rts.console": settings.CONSOLE_ID,
                "rts.service": str(uuid.uuid4()),
                "rts.config": "1",
            },
        ),
    )

    report = reconcile()

    assert report is not None and stray.name in report.removed_orphans
    assert [info.name for info in swarm.list_managed_services(swarm_manager, settings.CONSOLE_ID)] == [name]


# --- Live updates and drains -------------------------------------------------------------


def swarm_service_names(manager_url: str) -> set[str]:
    return {info.name for info in swarm.list_managed_services(manager_url, settings.CONSOLE_ID)}


def deploy_rows_on_swarm(owner, rows: list[dict]) -> Service:
    data = {"name": "svc-swarm-live", "description": "", "pool": POOL, "timeout_minutes": 3, "configs": rows}
    service = service_create(owner=owner, request=parse_deploy_request(owner=owner, data=data))
    assert service_deploy_run(service_id=service.id) in ("running", "waiting")
    service = deploy_settled(service.id)
    assert service.status == ServiceStatus.RUNNING, service.status_reason
    return service


@pytest.mark.parametrize(
    ("before", "after", "versions"),
    [
        pytest.param(
            lambda v1, v2: [row(v1)], lambda v1, v2: [row(v1, 50), row(v2, 50)], {"1.0.0", "2.0.0"}, id="add-a-version"
        ),
        pytest.param(
            lambda v1, v2: [row(v1)],
            lambda v1, v2: [row(v1, envs={"GREETING": "hi"})],
            {"1.0.0"},
            id="other-environment-variables",
        ),
    ],
)
def test_an_update_on_a_swarm_pool_under_a_call_loop_fails_no_call(
    swarm_pool, swarm_manager, owner, gateway_url, before, after, versions
):
    v1, v2 = make_version(owner), make_version(owner, "2.0.0", image=DEMO_IMAGE_V2)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, before(v1, v2))
    old_names = swarm_service_names(swarm_manager)
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, after(v1, v2), owner)
        after_update = len(loop.results)
        eventually(lambda: len(loop.results) >= after_update + 20, message="the loop stalled after the update")

    assert loop.failed == [], f"{len(loop.failed)} of {len(loop.results)} calls failed: {loop.failed[:5]}"
    assert (outcomes[-1], update.outcome) == ("done", ServiceUpdate.Outcome.SUCCEEDED)
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert loop.versions_since(after_update) == versions
    # One Swarm service per configuration it runs now; the replaced one is gone.
    now = {swarm_service_name(service.id, config.id) for config in service.configs.all()}
    assert swarm_service_names(swarm_manager) == now
    assert now != old_names


def test_a_never_healthy_version_on_a_swarm_pool_is_rolled_back(
    swarm_pool, swarm_manager, settings, owner, gateway_url
):
    settings.SERVICE_TIMEOUT_SCALE = 0.02  # the 3-minute timeout, as 3.6 s
    settings.DEPLOY_FAST_WAIT_SECONDS = 0.5
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    before = swarm_service_names(swarm_manager)
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, [row(v1, envs={"HEALTH_STATUS": "500"})], owner)

    assert update.outcome == ServiceUpdate.Outcome.ROLLED_BACK, update.reason
    assert "timed out" in update.reason
    assert loop.failed == []
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    eventually(lambda: swarm_service_names(swarm_manager) == before, message="the new Swarm service was not removed")


def test_a_drained_node_takes_the_service_down_and_active_again_brings_it_back(
    swarm_pool, swarm_manager, swarm_api, owner
):
    service = deploy_on_swarm(owner, make_version(owner), instance_count=1)
    assert service.status == ServiceStatus.RUNNING
    (node,) = swarm_api.nodes()

    def availability_set(value: str) -> None:
        current = swarm_api.inspect_node(node["ID"])
        swarm_api.update_node(node["ID"], current["Version"]["Index"], dict(current["Spec"], Availability=value))

    def status_after_reconcile() -> str:
        reconcile()
        return Service.objects.get(id=service.id).status

    try:
        availability_set("drain")
        # One node, drained: Swarm stops the task and has nowhere to put it.
        until(lambda: status_after_reconcile() == ServiceStatus.ABNORMAL, "Abnormal on a drained node", every=0.5)
        assert not swarm_pool.nodes.get().is_offered
    finally:
        availability_set("active")
    until(lambda: status_after_reconcile() == ServiceStatus.RUNNING, "Running again", every=0.5)
    assert swarm_pool.nodes.get().is_offered
