"""Services on a Swarm pool, on a real single-node swarm (the `swarm_manager`
fixture: an engine of its own, never the main one) and through the session's
real gateway: deploy to Running with one Swarm service per configuration,
calls to every task, a killed task replaced by Swarm and followed by the
console, stop, start, delete, a task that keeps failing, the reconcile
loop removing a Swarm service nothing owns, and live updates: a new version as
a Swarm service of its own, a changed one by Swarm's own rolling update, each
under a call loop, and their rollbacks."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from decimal import Decimal
from urllib.parse import urlsplit

import docker
import pytest
from django.conf import settings
from django.utils import timezone

from access.actions import access_token_create
from pools.actions import pool_create
from pools.models import PoolKind
from pools.validation import PoolRequest
from services import actions, lifecycle
from services.actions import service_create, service_update
from services.choices import ConfigPhase, InstanceState, ServiceStatus
from services.instance_runtime import config_swarm_name, swarm_service_name
from services.lifecycle import (
    deploys_probe,
    service_delete_run,
    service_deploy_run,
    service_stop_run,
    service_update_run,
)
from services.models import Service, ServiceEvent, ServiceUpdate
from services.reconcile import reconcile
from services.runtime import swarm
from services.validation import parse_deploy_request, parse_update_request
from tests.factories import DEMO_IMAGE_V2, create_service, make_version
from tests.gateway.test_gateway import Deployed, call, echo_port, wait_until_routed
from tests.services.test_live_update import CallLoop, row, update_and_run
from tests.waiting import eventually

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("enqueued")]

POOL = "swarm-cpu"


def swarm_pool_create(manager_url: str, name: str, owner=None):
    """A Swarm pool on the test swarm, dedicated to `owner` (public without one)."""
    return pool_create(
        request=PoolRequest(
            name=name,
            description="",
            owner=owner,
            cpu_overcommit=Decimal(16),
            memory_overcommit=Decimal(4),
            offers_every_flavor=True,
            flavors=[],
            kind=PoolKind.SWARM,
            manager_url=manager_url,
        )
    )


def swarm_services_remove(manager_url: str) -> None:
    for info in swarm.list_managed_services(manager_url, settings.CONSOLE_ID):
        swarm.remove_version_service(manager_url, info.name)


@pytest.fixture
def swarm_pool(swarm_manager, flavors, owner):
    yield swarm_pool_create(swarm_manager, POOL, owner)
    swarm_services_remove(swarm_manager)


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


def swarm_spec(manager_url: str, name: str) -> dict:
    client = docker.DockerClient(base_url=manager_url, version="auto")
    try:
        return client.api.inspect_service(name)
    finally:
        client.close()


def test_a_new_version_on_a_swarm_pool_is_a_swarm_service_of_its_own_and_no_call_fails(
    swarm_pool, swarm_manager, owner, gateway_url
):
    v1, v2 = make_version(owner), make_version(owner, "2.0.0", image=DEMO_IMAGE_V2)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    old_names = swarm_service_names(swarm_manager)
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, [row(v1, 50), row(v2, 50)], owner)
        after_update = len(loop.results)
        eventually(lambda: len(loop.results) >= after_update + 20, message="the loop stalled after the update")

    assert loop.failed == [], f"{len(loop.failed)} of {len(loop.results)} calls failed: {loop.failed[:5]}"
    assert (outcomes[-1], update.outcome) == ("done", ServiceUpdate.Outcome.SUCCEEDED)
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert loop.versions_since(after_update) == {"1.0.0", "2.0.0"}
    now = {config_swarm_name(config) for config in service.configs.all()}
    assert swarm_service_names(swarm_manager) == now
    assert old_names < now


@pytest.mark.parametrize(
    ("after", "check"),
    [
        pytest.param(
            {"envs": {"GREETING": "hi"}},
            lambda spec: "GREETING=hi" in spec["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"],
            id="other-environment-variables",
        ),
        pytest.param(
            {"instance_count": 2},
            lambda spec: spec["Spec"]["Mode"]["Replicated"]["Replicas"] == 2,
            id="more-compute-nodes",
        ),
        pytest.param(
            {"flavor": "cpu.1u1g.free"},
            lambda spec: spec["Spec"]["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 1024 * 1024 * 1024,
            id="another-specification",
        ),
    ],
)
def test_a_changed_version_on_a_swarm_pool_is_rolled_by_swarm_under_a_call_loop_with_no_failed_call(
    swarm_pool, swarm_manager, owner, gateway_url, after, check
):
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    (name,) = old_names = swarm_service_names(swarm_manager)
    old_tasks = {task.task_id for task in swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID)}
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, [row(v1, **after)], owner)
        after_update = len(loop.results)
        eventually(lambda: len(loop.results) >= after_update + 20, message="the loop stalled after the update")

    assert loop.failed == [], f"{len(loop.failed)} of {len(loop.results)} calls failed: {loop.failed[:5]}"
    assert (outcomes[-1], update.outcome) == ("done", ServiceUpdate.Outcome.SUCCEEDED)
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    # The same Swarm service, moved to the new configuration by Swarm's own rolling update.
    config = service.configs.get()
    assert swarm_service_names(swarm_manager) == old_names
    assert config_swarm_name(config) == name
    spec = swarm_spec(swarm_manager, name)
    assert spec["UpdateStatus"]["State"] == "completed"
    assert spec["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert spec["Spec"]["UpdateConfig"]["FailureAction"] == "rollback"
    assert spec["Spec"]["Labels"]["rts.config"] == str(config.id)
    assert check(spec)
    tasks = swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID)
    assert len(tasks) == config.instance_count and not {task.task_id for task in tasks} & old_tasks
    # Each instance row follows its new task, and the gateway calls it there.
    rows = {instance.index: instance.host_port for instance in service.instances.all()}
    assert sorted(rows.values()) == sorted(task.host_port for task in tasks)
    events = list(ServiceEvent.objects.filter(service=service).values_list("message", flat=True))
    assert any(message.startswith(f"Swarm rolling update of {name} started") for message in events), events


def test_a_rolled_configuration_stops_starts_and_deletes_with_its_swarm_service(
    swarm_pool, swarm_manager, owner, gateway_url
):
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    (name,) = swarm_service_names(swarm_manager)
    update, _ = update_and_run(service, [row(v1, envs={"GREETING": "hi"})], owner)
    assert update.outcome == ServiceUpdate.Outcome.SUCCEEDED, update.reason

    actions.service_stop(service=Service.objects.get(id=service.id))
    assert service_stop_run(service_id=service.id) == "stopped"
    until(lambda: swarm_service_names(swarm_manager) == set(), "the Swarm service was removed on stop")

    actions.service_start(service=Service.objects.get(id=service.id))
    service_deploy_run(service_id=service.id)
    assert deploy_settled(service.id).status == ServiceStatus.RUNNING
    assert swarm_service_names(swarm_manager) == {name}
    assert swarm_spec(swarm_manager, name)["Spec"]["Labels"]["rts.config"] == str(service.configs.get().id)
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="not answering")

    actions.service_delete(service=Service.objects.get(id=service.id))
    assert service_delete_run(service_id=service.id) == "deleted"
    until(lambda: swarm_service_names(swarm_manager) == set(), "the Swarm service was removed on delete")


def test_a_call_in_flight_on_an_old_task_finishes_there_when_the_model_drains_on_sigterm(
    swarm_pool, swarm_manager, owner, gateway_url
):
    # Swarm stops an old task with SIGTERM once its replacement is healthy; a
    # model that finishes its accepted calls then (here within 8 s; Swarm
    # waits 10 s before SIGKILL) loses none of them.
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    drains = {"STOP_DELAY_SECONDS": "8"}
    service = deploy_rows_on_swarm(owner, [row(v1, envs=drains)])
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")
    slow: dict[str, object] = {}

    def slow_call() -> None:
        url = urlsplit(gateway_url)
        started = time.monotonic()
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"/v1/infers/{service.id}/sleep?seconds=4", headers={"X-Auth-Token": token})
        response = conn.getresponse()
        slow.update(status=response.status, body=response.read(), took=time.monotonic() - started)

    thread = threading.Thread(target=slow_call)
    thread.start()
    time.sleep(0.3)  # the slow call is on the old task now
    update, _ = update_and_run(service, [row(v1, envs={**drains, "GREETING": "hi"})], owner)
    thread.join(timeout=30)

    assert update.outcome == ServiceUpdate.Outcome.SUCCEEDED, update.reason
    assert slow["status"] == 200, slow
    assert json.loads(slow["body"])["slept"] == 4
    # Answered by the old task: cut and sent again to the new one, it would have taken over 5 s.
    assert slow["took"] < 5, slow


def test_a_never_healthy_version_on_a_swarm_pool_is_rolled_back(
    swarm_pool, swarm_manager, settings, owner, gateway_url
):
    settings.SERVICE_TIMEOUT_SCALE = 0.04  # the 3-minute timeout, as 7.2 s
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    (name,) = before = swarm_service_names(swarm_manager)
    old_config = service.configs.get()
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, [row(v1, envs={"HEALTH_STATUS": "500"})], owner)

    assert update.outcome == ServiceUpdate.Outcome.ROLLED_BACK, update.reason
    assert "timed out" in update.reason
    assert loop.failed == []
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert list(service.configs.values_list("id", flat=True)) == [old_config.id]
    # The Swarm service runs the previous configuration again, and only that.
    assert swarm_service_names(swarm_manager) == before

    def back_on_the_old_configuration():
        spec = swarm_spec(swarm_manager, name)
        tasks = swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID)
        return spec["Spec"]["Labels"]["rts.config"] == str(old_config.id) and {
            task.labels.get("rts.config") for task in tasks
        } == {str(old_config.id)}

    until(back_on_the_old_configuration, "the Swarm service ran the previous configuration again", timeout=30)


def test_a_version_that_crashes_on_a_swarm_pool_is_rolled_back_by_swarm(swarm_pool, swarm_manager, owner, gateway_url):
    v1 = make_version(owner)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1)])
    (name,) = swarm_service_names(swarm_manager)
    old_config = service.configs.get()
    eventually(lambda: CallLoop(gateway_url, str(service.id), token)._call()[0] == 200, message="never routed")

    with CallLoop(gateway_url, str(service.id), token) as loop:
        update, outcomes = update_and_run(service, [row(v1, envs={"CRASH_ON_START": "1"})], owner)

    assert update.outcome == ServiceUpdate.Outcome.ROLLED_BACK, update.reason
    assert f"Swarm rolled the update of {name} back" in update.reason, update.reason
    assert loop.failed == []
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert list(service.configs.values_list("id", flat=True)) == [old_config.id]
    spec = swarm_spec(swarm_manager, name)
    assert spec["UpdateStatus"]["State"].startswith("rollback")
    assert spec["Spec"]["Labels"]["rts.config"] == str(old_config.id)


def test_a_version_that_fails_after_the_traffic_moved_is_rolled_back_by_swarm_and_the_traffic_moves_back(
    swarm_pool, swarm_manager, owner, gateway_url, monkeypatch
):
    # Swarm watches each new task for 6 s; the new v1 answers at once, takes the
    # traffic, and exits 3.5 s after it started: within Swarm's watch.
    monkeypatch.setattr(swarm, "ROLLING_UPDATE_MONITOR_SECONDS", 6.0)
    v1, v2 = make_version(owner), make_version(owner, version="2.0.0", image=DEMO_IMAGE_V2)
    token = access_token_create(owner=owner, name="loop", days=1).secret
    service = deploy_rows_on_swarm(owner, [row(v1, 50), row(v2, 50)])
    v1_config = service.configs.get(app_version=v1)
    name = config_swarm_name(v1_config)

    update, outcomes = update_and_run(service, [row(v1, 30, envs={"EXIT_AFTER_SECONDS": "3.5"}), row(v2, 70)], owner)

    assert (outcomes[-1], update.outcome) == ("rolled back", ServiceUpdate.Outcome.ROLLED_BACK), update.reason
    assert update.reason.startswith("Swarm rolled back:"), update.reason
    events = list(ServiceEvent.objects.filter(service=service).values_list("message", flat=True))
    assert "Traffic moved to the new configuration" in events
    assert any(m.startswith("Swarm rolled the update back after the traffic had moved") for m in events), events
    # Both versions serve at their weights from before, v1 on its previous configuration.
    configs = service.configs.order_by("position").values_list("id", "weight", "phase")
    assert list(configs) == [
        (v1_config.id, 50, ConfigPhase.SERVING),
        (service.configs.get(app_version=v2).id, 50, ConfigPhase.SERVING),
    ]
    assert swarm_spec(swarm_manager, name)["Spec"]["Labels"]["rts.config"] == str(v1_config.id)
    # Running means every row names a task that runs now, and a call succeeds at once.
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    ports = {task.host_port for task in swarm.list_managed_tasks(swarm_manager, settings.CONSOLE_ID)}
    rows = list(service.instances.values_list("host_port", "is_healthy"))
    assert len(rows) == 2 and all(port in ports and healthy for port, healthy in rows), (rows, ports)
    for _ in range(4):
        assert CallLoop(gateway_url, str(service.id), token)._call()[0] == 200


class WorkerDied(Exception):
    pass


def test_a_worker_that_comes_back_after_swarm_rolled_the_update_back_records_it_and_does_not_start_it_again(
    swarm_pool, swarm_manager, owner, monkeypatch
):
    v1 = make_version(owner)
    service = deploy_rows_on_swarm(owner, [row(v1)])
    (name,) = swarm_service_names(swarm_manager)
    old_config = service.configs.get()
    request = parse_update_request(service=service, data={"configs": [row(v1, envs={"CRASH_ON_START": "1"})]})
    update = service_update(service=service, request=request, actor=owner)
    assert update is not None

    # The worker starts Swarm's rolling update, then dies; Swarm rolls it back meanwhile.
    def die(*args, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(lifecycle, "_health_wait", die)
    with pytest.raises(WorkerDied):
        service_update_run(service_id=service.id)
    monkeypatch.undo()
    until(
        lambda: swarm_spec(swarm_manager, name)["UpdateStatus"]["State"] == "rollback_completed",
        "Swarm rolled the update back",
    )
    Service.objects.filter(id=service.id).update(lease_expires_at=timezone.now())  # the dead worker's lease lapses

    outcome = service_update_run(service_id=service.id)

    update.refresh_from_db()
    assert (outcome, update.outcome) == ("rolled back", ServiceUpdate.Outcome.ROLLED_BACK), update.reason
    assert f"Swarm rolled the update of {name} back" in update.reason, update.reason
    # Not started again: Swarm's last word on the service is still its rollback.
    spec = swarm_spec(swarm_manager, name)
    assert spec["UpdateStatus"]["State"] == "rollback_completed"
    assert spec["Spec"]["Labels"]["rts.config"] == str(old_config.id)
    assert list(service.configs.values_list("id", flat=True)) == [old_config.id]
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING


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
