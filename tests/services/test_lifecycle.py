"""Deploy, stop, start and delete against the real Docker engine.

The deploy tests call the task bodies inline; the lifecycle class runs them
through a real Celery worker, as the console does.
"""

import http.client
import json
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from pools.models import Node, ResourcePool
from services import runtime
from services.actions import service_delete, service_start, service_stop
from services.choices import InstanceState, ServiceStatus
from services.lifecycle import service_delete_run, service_deploy_run
from services.models import Instance, Service, ServiceEvent, ServiceVersionConfig
from services.reconcile import reconcile
from tests.conftest import containers_of
from tests.factories import create_service, make_version
from tests.waiting import eventually, wait_for_status

pytestmark = pytest.mark.docker


def get_health(port: int, path: str = "/health") -> tuple[int, dict]:
    # http.client, not urllib: never a proxy, always straight to the loopback port.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def event_messages(service_id) -> list[str]:
    return list(ServiceEvent.objects.filter(service_id=service_id).values_list("message", flat=True))


# --- Deploy ------------------------------------------------------------------


@pytest.mark.django_db
def test_deploy_runs_every_instance_healthy_and_locked_down(engine, docker_client, owner, pool, flavors):
    version = make_version(owner)
    service = create_service(
        owner,
        version,
        instance_count=2,
        flavor="cpu.1u512m",
        envs={"GREETING": "hello world", "MODEL_VERSION": "7.7.7"},
    )

    assert service_deploy_run(service_id=service.id) == "running"

    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING
    assert service.lease_token is None
    instances = list(service.instances.order_by("index"))
    assert [i.index for i in instances] == [0, 1]
    assert all(i.is_healthy and i.state == InstanceState.RUNNING for i in instances)
    assert len({i.host_port for i in instances}) == 2

    for instance in instances:
        # The server answers on its published loopback port, with the request's environment.
        status, body = get_health(instance.host_port)
        assert (status, body) == (200, {"status": "ok", "version": "7.7.7"})

        attrs = docker_client.containers.get(instance.container_name).attrs
        assert attrs["Id"] == instance.container_id
        assert attrs["State"]["Running"] is True
        labels = attrs["Config"]["Labels"]
        assert labels[runtime.LABEL_MANAGED] == "1"
        assert labels[runtime.LABEL_CONSOLE] == settings.CONSOLE_ID  # "test" unless overridden
        assert labels[runtime.LABEL_SERVICE] == str(service.id)
        assert labels[runtime.LABEL_INSTANCE] == str(instance.index)
        assert labels[runtime.LABEL_VERSION] == "demo-model:1.0.0"
        assert "GREETING=hello world" in attrs["Config"]["Env"]
        assert "MODEL_VERSION=7.7.7" in attrs["Config"]["Env"]

        host = attrs["HostConfig"]
        assert host["NanoCpus"] == 1_000_000_000
        assert host["Memory"] == 512 * 1024 * 1024
        assert host["Privileged"] is False
        # The service's own network (tests/services/test_network_isolation.py).
        assert host["NetworkMode"] == f"rts-{settings.CONSOLE_ID}-{service.id}"
        assert not host["Binds"]
        assert not host.get("Mounts")
        assert attrs["Mounts"] == []
        # Every capability dropped but the documented few (tests/services/test_container_hardening.py).
        assert host["CapDrop"] == ["ALL"]
        assert set(host["CapAdd"]) <= {"CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE"}
        assert not host["Devices"]
        assert not host["PublishAllPorts"]
        assert host["PidMode"] == "" and host["IpcMode"] in ("private", "shareable")
        assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
        published = attrs["NetworkSettings"]["Ports"]
        assert list(published) == ["8080/tcp"]
        assert published["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(instance.host_port)}]

    # Nothing else of this service runs on the engine.
    assert sorted(c.name for c in containers_of(docker_client, service.id)) == sorted(
        i.container_name for i in instances
    )

    events = list(ServiceEvent.objects.filter(service=service).order_by("id"))
    messages = [e.message for e in events]
    assert messages[0] == "Deployment queued: 2 instance(s) on pool public-cpu"
    assert messages[1:3] == [f"Container {i.container_name} started on local" for i in instances]
    assert sorted(messages[3:5]) == sorted(f"Health check passed for {i.container_name}" for i in instances)
    assert messages[5:] == ["Running: 2/2 instance(s) healthy"]
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    assert all(e.level == ServiceEvent.Level.INFO for e in events)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "version_fields, envs, instance_count",
    [
        pytest.param({}, {"HEALTH_STATUS": "500"}, 1, id="health-answers-500"),
        pytest.param({"health_path": "/not-there"}, {}, 2, id="health-path-404"),
    ],
)
def test_deploy_that_never_gets_healthy_fails_on_timeout_with_the_logs(
    engine, docker_client, owner, pool, flavors, settings, version_fields, envs, instance_count
):
    settings.SERVICE_TIMEOUT_SCALE = 0.02  # 3 minutes → 3.6 s
    version = make_version(owner, **version_fields)
    service = create_service(owner, version, instance_count=instance_count, timeout_minutes=3, envs=envs)
    deploying_since = Service.objects.get(id=service.id).status_changed_at
    started = time.monotonic()

    assert service_deploy_run(service_id=service.id) == "failed"

    service.refresh_from_db()
    assert service.status == ServiceStatus.FAILED
    assert service.status_reason == (
        f"timed out after 3 minute(s): {instance_count} instance(s) never answered the health check"
    )
    # It waited out the scaled timeout (counted from turning Deploying), and
    # gave up long before the unscaled 3 minutes.
    assert timezone.now() - deploying_since >= timedelta(minutes=3 * settings.SERVICE_TIMEOUT_SCALE)
    assert time.monotonic() - started < 60
    assert service.lease_token is None
    assert containers_of(docker_client, service.id) == []
    assert set(service.instances.values_list("state", flat=True)) == {InstanceState.MISSING}

    failure = ServiceEvent.objects.get(service=service, level=ServiceEvent.Level.ERROR)
    assert failure.message == f"Failed: {service.status_reason}"
    assert failure.detail.count("\n== rts-") + failure.detail.startswith("== rts-") == instance_count
    for instance in service.instances.all():
        section = failure.detail.split(f"== {instance.container_name} ==\n", 1)[1].split("\n\n== ", 1)[0]
        # The server's own start-up line, not only the probe's requests.
        assert "model server 1.0.0 listening on :8080" in section
    assert "Running" not in " ".join(event_messages(service.id))


@pytest.mark.django_db
def test_deploy_of_a_container_that_exits_fails_at_once_with_its_log(engine, docker_client, owner, pool, flavors):
    version = make_version(owner)
    service = create_service(owner, version, instance_count=1, envs={"CRASH_ON_START": "1"})
    started = time.monotonic()

    assert service_deploy_run(service_id=service.id) == "failed"

    # The timeout is 20 minutes: only the exit can have ended the deploy this
    # soon (the bound is generous; the reason below says which it was).
    assert time.monotonic() - started < 120
    service.refresh_from_db()
    assert service.status == ServiceStatus.FAILED
    name = service.instances.get().container_name
    assert service.status_reason == f"container {name} exited with code 1"
    failure = ServiceEvent.objects.get(service=service, level=ServiceEvent.Level.ERROR)
    assert "error: model server 1.0.0 failed to start (CRASH_ON_START is set)" in failure.detail
    assert containers_of(docker_client, service.id) == []


@pytest.mark.django_db
def test_deploy_of_a_missing_image_fails_saying_not_found(engine, docker_client, owner, pool, flavors):
    version = make_version(owner, image="rts-demo-model:no-such-tag")
    service = create_service(owner, version, instance_count=2)

    assert service_deploy_run(service_id=service.id) == "failed"

    service.refresh_from_db()
    assert service.status == ServiceStatus.FAILED
    assert service.status_reason == "image rts-demo-model:no-such-tag not found on the engine"
    assert containers_of(docker_client, service.id) == []
    assert ServiceEvent.objects.filter(service=service, level=ServiceEvent.Level.ERROR).count() == 1


@pytest.mark.django_db
def test_deploy_to_an_engine_that_stopped_answering_fails_saying_so(engine, owner, flavors):
    # The node was reachable when last checked, so the flavor is offered and the
    # node picked; the engine is gone by the time the deploy runs.
    pool = ResourcePool.objects.create(name="public-cpu", is_public=True)
    Node.objects.create(
        pool=pool,
        name="gone",
        docker_host="unix:///tmp/nonexistent.sock",
        cpu_count=2,
        memory_mib=4096,
        is_reachable=True,
    )
    version = make_version(owner)
    service = create_service(owner, version)

    assert service_deploy_run(service_id=service.id) == "failed"

    service.refresh_from_db()
    assert service.status == ServiceStatus.FAILED
    assert service.status_reason == "Docker engine at unix:///tmp/nonexistent.sock does not answer"


# --- Running a deploy twice ----------------------------------------------------


@pytest.mark.django_db
def test_deploy_run_again_after_it_finished_changes_nothing(engine, docker_client, owner, pool, flavors):
    service = create_service(owner, make_version(owner), instance_count=2)
    assert service_deploy_run(service_id=service.id) == "running"
    ids_before = sorted(c.id for c in containers_of(docker_client, service.id))
    events_before = event_messages(service.id)

    assert service_deploy_run(service_id=service.id) == "not claimed"

    assert sorted(c.id for c in containers_of(docker_client, service.id)) == ids_before
    assert sorted(service.instances.values_list("container_id", flat=True)) == ids_before
    assert event_messages(service.id) == events_before
    service.refresh_from_db()
    assert service.status == ServiceStatus.RUNNING


def _in_thread(function, results: list, index: int, **kwargs):
    try:
        results[index] = function(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - the test reports it
        results[index] = exc
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_deploy_runs_at_once_do_the_work_once(engine, docker_client, owner, pool, flavors, enqueued):
    service = create_service(owner, make_version(owner), instance_count=2)
    barrier = threading.Barrier(2)
    results = [None, None]

    def run():
        barrier.wait()
        return service_deploy_run(service_id=service.id)

    threads = [threading.Thread(target=_in_thread, args=(run, results, n)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(results) == ["not claimed", "running"]
    containers = containers_of(docker_client, service.id)
    assert sorted(c.name for c in containers) == sorted(service.instances.values_list("container_name", flat=True))
    assert len(containers) == 2
    assert event_messages(service.id).count("Running: 2/2 instance(s) healthy") == 1
    assert enqueued == [("service_deploy_task", str(service.id))]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("moment", ["while-starting-containers", "while-waiting-for-health"])
def test_delete_while_deploying_leaves_no_container(
    engine, docker_client, owner, pool, flavors, enqueued, settings, monkeypatch, moment
):
    settings.TASK_LEASE_SECONDS = 3  # the deploy notices a lost lease within a second
    real_ensure = runtime.ensure_container_running
    gate = threading.Event()
    entered = threading.Event()
    if moment == "while-starting-containers":
        # Hold the deploy once it claimed the service and is about to create
        # the containers, then let it create them after the delete has finished.
        def held_ensure(docker_host, spec):
            entered.set()
            assert gate.wait(30)
            return real_ensure(docker_host, spec)

        monkeypatch.setattr(runtime, "ensure_container_running", held_ensure)
    envs = {"STARTUP_DELAY_SECONDS": "30"}  # never healthy while the test runs
    service = create_service(owner, make_version(owner), instance_count=2, envs=envs)
    results = [None]
    deploy = threading.Thread(
        target=_in_thread, args=(service_deploy_run, results, 0), kwargs={"service_id": service.id}
    )
    deploy.start()
    try:
        if moment == "while-starting-containers":
            assert entered.wait(30), "the deploy never came to create its containers"
        else:
            eventually(
                lambda: len(containers_of(docker_client, service.id)) == 2,
                timeout=30,
                interval=0.05,
                message="the deploy never created its containers",
            )

        service_delete(service=service)
        assert service_delete_run(service_id=service.id) == "deleted"
    finally:
        gate.set()
        deploy.join(30)

    assert not deploy.is_alive()
    assert results[0] in ("lease lost", "failed"), results[0]
    assert not Service.objects.filter(id=service.id).exists()
    left_behind = sorted(c.name for c in containers_of(docker_client, service.id))
    if moment == "while-starting-containers":
        # Created after the delete had run: only the reconcile loop can know to remove them.
        assert len(left_behind) == 2

    report = reconcile()

    assert report is not None
    assert sorted(report.removed_orphans) == left_behind
    assert containers_of(docker_client, service.id) == []


# --- Stop, start and delete through the real worker ----------------------------


class TestLifecycleThroughCelery:
    def test_stop_start_and_delete(self, shared_celery_stack, docker_client, owner, pool, flavors):
        service = create_service(owner, make_version(owner), instance_count=2, envs={"GREETING": "hi"})
        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        ids = sorted(service.instances.values_list("container_id", flat=True))
        assert sorted(c.id for c in containers_of(docker_client, service.id)) == ids

        service_stop(service=service)
        assert Service.objects.get(id=service.id).status == ServiceStatus.STOPPING
        service = wait_for_status(service.id, ServiceStatus.STOPPED, 30)
        containers = containers_of(docker_client, service.id)
        assert sorted(c.id for c in containers) == ids  # stopped, not removed
        assert {c.status for c in containers} == {"exited"}
        assert set(service.instances.values_list("state", flat=True)) == {InstanceState.STOPPED}
        assert not service.instances.filter(is_healthy=True).exists()

        service_start(service=service)
        assert Service.objects.get(id=service.id).status == ServiceStatus.DEPLOYING
        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        containers = containers_of(docker_client, service.id)
        assert sorted(c.id for c in containers) == ids  # the same containers, started again
        assert {c.status for c in containers} == {"running"}
        for instance in service.instances.all():
            assert get_health(instance.host_port)[0] == 200

        messages = event_messages(service.id)
        assert messages.index("Stop requested") < messages.index("Stopped: 2 container(s) stopped")
        assert messages.index("Stopped: 2 container(s) stopped") < messages.index("Start requested; deployment queued")
        assert messages[-1] == "Running: 2/2 instance(s) healthy"
        assert messages.count("Running: 2/2 instance(s) healthy") == 2

        service_delete(service=service)
        assert Service.objects.get(id=service.id).status == ServiceStatus.DELETING
        wait_for_status(service.id, {None}, 30)
        assert containers_of(docker_client, service.id) == []
        assert not Instance.objects.filter(service_id=service.id).exists()
        assert not ServiceEvent.objects.filter(service_id=service.id).exists()

    def test_delete_of_a_failed_service_removes_it(self, shared_celery_stack, docker_client, owner, pool, flavors):
        service = create_service(owner, make_version(owner), envs={"CRASH_ON_START": "1"})
        service = wait_for_status(service.id, ServiceStatus.FAILED, 30)
        assert "exited with code 1" in service.status_reason
        assert containers_of(docker_client, service.id) == []

        service_delete(service=service)

        wait_for_status(service.id, {None}, 30)
        assert containers_of(docker_client, service.id) == []

    def test_failed_service_can_be_started_again(self, shared_celery_stack, docker_client, owner, pool, flavors):
        service = create_service(owner, make_version(owner), envs={"CRASH_ON_START": "1"})
        service = wait_for_status(service.id, ServiceStatus.FAILED, 30)
        (instance,) = service.instances.all()
        assert instance.state == InstanceState.MISSING

        # Whatever made it crash is fixed; starting it again deploys a fresh container.
        ServiceVersionConfig.objects.filter(service=service).update(envs={})
        service_start(service=service)

        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        (instance,) = service.instances.all()
        assert [c.id for c in containers_of(docker_client, service.id)] == [instance.container_id]
        assert get_health(instance.host_port)[0] == 200
