"""The reconcile loop against the real Docker engine.

The first tests call reconcile() inline; the class runs it the way the console
does, from Celery beat, and breaks containers behind its back.
"""

import gc
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from pools.models import Node
from services import instance_runtime, lifecycle, runtime
from services.choices import ServiceStatus, VersionStatus
from services.lifecycle import service_deploy_run
from services.models import AIApplicationVersion, Instance, Service, ServiceEvent
from services.reconcile import RECONCILE_LOCK_KEY, UNCLAIMED_GRACE_SECONDS, reconcile, restart_backoff_seconds
from tests.conftest import containers_of
from tests.factories import DEMO_IMAGE_V1, create_service, make_version
from tests.waiting import eventually, wait_for_status

pytestmark = pytest.mark.docker


def deployed_service(owner, version, **overrides) -> Service:
    service = create_service(owner, version, **overrides)
    assert service_deploy_run(service_id=service.id) == "running"
    return Service.objects.get(id=service.id)


def start_labelled_container(docker_host: str, console_id: str, service_id: str) -> runtime.ContainerInfo:
    return runtime.ensure_container_running(
        docker_host,
        runtime.ContainerSpec(
            name=f"rts-reconcile-test-{uuid.uuid4().hex[:12]}",
            image=DEMO_IMAGE_V1,
            container_port=8080,
            cpus=0.5,
            memory_mib=128,
            environment={},
            labels={
                runtime.LABEL_MANAGED: "1",
                runtime.LABEL_CONSOLE: console_id,
                runtime.LABEL_SERVICE: service_id,
                runtime.LABEL_INSTANCE: "0",
            },
        ),
    )


@contextmanager
def reconcile_paused():
    """Hold the loop's lock: no cycle runs (one in progress finishes first)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [RECONCILE_LOCK_KEY])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RECONCILE_LOCK_KEY])


def events_of(service_id) -> list[str]:
    return list(ServiceEvent.objects.filter(service_id=service_id).order_by("id").values_list("message", flat=True))


# --- One cycle, inline ---------------------------------------------------------


@pytest.mark.django_db
def test_reconcile_removes_this_consoles_containers_that_no_service_owns(engine, pool):
    orphan = start_labelled_container(engine, settings.CONSOLE_ID, str(uuid.uuid4()))
    foreign = start_labelled_container(engine, "someone-else", str(uuid.uuid4()))
    try:
        report = reconcile()

        assert report.removed_orphans == [orphan.name]
        assert runtime.inspect_container(engine, orphan.name) is None
        # Another console's container on the same engine is none of our business.
        still_there = runtime.inspect_container(engine, foreign.name)
        assert still_there is not None and still_there.is_running
        assert still_there.container_id == foreign.container_id
    finally:
        runtime.remove_container(engine, foreign.name)


@pytest.mark.django_db
def test_reconcile_keeps_containers_of_a_deploy_in_progress_and_removes_a_failed_services(
    engine, docker_client, owner, pool, flavors, enqueued
):
    # A deploy that has written its rows and started one of two containers.
    deploying = create_service(owner, make_version(owner), name="deploying", instance_count=2)
    first = lifecycle.instances_plan(deploying)[0]
    runtime.ensure_container_running(engine, instance_runtime.container_spec(deploying, first))
    # A Failed service whose container removal did not happen (the engine hiccuped).
    failed = create_service(owner, make_version(owner, version="1.0.1"), name="failed")
    failed_instance = lifecycle.instances_plan(failed)[0]
    runtime.ensure_container_running(engine, instance_runtime.container_spec(failed, failed_instance))
    Service.objects.filter(id=failed.id).update(status=ServiceStatus.FAILED)

    report = reconcile()

    assert report.removed_orphans == [failed_instance.container_name]
    assert [c.name for c in containers_of(docker_client, deploying.id)] == [first.container_name]
    assert containers_of(docker_client, failed.id) == []
    assert report.requeued == []  # the deploy was only just queued; its task has time to claim it


@pytest.mark.django_db
def test_an_unclaimed_deploy_is_enqueued_again_once_per_grace_period_not_every_cycle(
    engine, owner, pool, flavors, enqueued
):
    # Queued a while ago, and every worker busy since: the first message still waits.
    service = create_service(owner, make_version(owner), name="waiting")
    past = timezone.now() - timedelta(seconds=UNCLAIMED_GRACE_SECONDS + 1)
    Service.objects.filter(id=service.id).update(status_changed_at=past)

    first, second = reconcile(), reconcile()

    assert (first.requeued, second.requeued) == (["waiting"], [])
    Service.objects.filter(id=service.id).update(requeued_at=past)
    assert reconcile().requeued == ["waiting"]


@pytest.mark.django_db
def test_reconcile_lists_each_engine_once_and_never_inspects_containers(
    engine, docker_client, owner, pool, flavors, monkeypatch
):
    down = Node.objects.create(
        pool=pool,
        name="down",
        docker_host="unix:///tmp/nonexistent.sock",
        cpu_count=2,
        memory_mib=4096,
        is_reachable=False,
    )
    version = make_version(owner)
    deployed_service(owner, version, name="svc-a", instance_count=2)
    deployed_service(owner, version, name="svc-b")
    broken = deployed_service(owner, version, name="svc-c")
    docker_client.containers.get(broken.instances.get().container_name).stop(timeout=1)

    calls = Counter()

    def counting(name):
        real = getattr(runtime, name)

        def wrapper(docker_host, *args, **kwargs):
            calls[name, docker_host] += 1
            return real(docker_host, *args, **kwargs)

        monkeypatch.setattr(runtime, name, wrapper)

    for name in ("list_managed_containers", "inspect_container", "ensure_container_running"):
        counting(name)

    report = reconcile()

    assert calls == {
        ("list_managed_containers", engine): 1,
        ("list_managed_containers", down.docker_host): 1,
        # The one repair the cycle made; the healthy services cost no engine call.
        ("ensure_container_running", engine): 1,
    }
    assert report.unreachable_nodes == ["down"]
    assert report.repaired == [broken.instances.get().container_name]
    assert report.status_changes == {"svc-c": ServiceStatus.ABNORMAL}
    assert Service.objects.get(name="svc-a").status == ServiceStatus.RUNNING


@pytest.mark.django_db
def test_reconcile_marks_an_unreachable_engine_and_keeps_going(engine, owner, pool, flavors):
    service = deployed_service(owner, make_version(owner))
    # A second engine, reachable when last checked, that has stopped answering since.
    Node.objects.create(
        pool=pool,
        name="down",
        docker_host="unix:///tmp/nonexistent.sock",
        cpu_count=2,
        memory_mib=4096,
        is_reachable=True,
    )

    report = reconcile()

    down = Node.objects.get(name="down")
    assert not down.is_reachable
    assert down.last_error == "Docker engine at unix:///tmp/nonexistent.sock does not answer"
    assert report.unreachable_nodes == ["down"]
    assert Node.objects.get(name="local").is_reachable
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING


@pytest.mark.django_db
def test_while_its_engine_does_not_answer_an_instance_that_answers_stays_in_service(
    engine, docker_client, owner, pool, flavors
):
    """An engine restarting with live restore leaves its containers serving: the
    loop cannot list them, but probes them, and only a silent one goes out."""
    service = deployed_service(owner, make_version(owner))
    Node.objects.filter(name="local").update(docker_host="unix:///tmp/nonexistent.sock")

    report = reconcile()

    assert report.unreachable_nodes == ["local"]
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING
    assert Instance.objects.get(service=service).is_healthy

    containers_of(docker_client, service.id)[0].kill()
    reconcile()

    assert Service.objects.get(id=service.id).status == ServiceStatus.ABNORMAL
    assert not Instance.objects.get(service=service).is_healthy


def test_restart_backoff_doubles_up_to_five_minutes():
    assert [restart_backoff_seconds(streak) for streak in (0, 1, 2, 3, 8, 9, 30)] == [0, 2, 4, 8, 256, 300, 300]


def test_an_instance_that_keeps_dying_is_restarted_with_backoff_and_healthy_resets_it(
    engine, docker_client, owner, pool, flavors
):
    service = deployed_service(owner, make_version(owner))
    instance = service.instances.get()
    docker_client.containers.get(instance.container_name).stop(timeout=1)
    # It died three times in a row, the last restart a second ago: wait (8 s).
    Instance.objects.filter(id=instance.id).update(crash_streak=3, restarted_at=timezone.now() - timedelta(seconds=1))

    report = reconcile()

    assert report.repaired == []
    assert docker_client.containers.get(instance.container_name).status == "exited"
    assert Service.objects.get(id=service.id).status == ServiceStatus.ABNORMAL

    Instance.objects.filter(id=instance.id).update(restarted_at=timezone.now() - timedelta(seconds=9))
    report = reconcile()

    assert report.repaired == [instance.container_name]
    instance.refresh_from_db()
    assert instance.crash_streak == 4
    assert events_of(service.id)[-1] == (
        f"Instance {instance.container_name} had exited; restarted it (4 times since it was last healthy; "
        "next try in 16 s)"
    )

    def running_after_a_cycle() -> bool:
        if Service.objects.get(id=service.id).status == ServiceStatus.RUNNING:
            return True
        reconcile()
        return False

    eventually(running_after_a_cycle, timeout=30, interval=0.2, message="the restarted instance never turned healthy")
    assert Instance.objects.get(id=instance.id).crash_streak == 0


@pytest.mark.django_db(transaction=True)
def test_reconcile_survives_a_service_deleted_during_its_cycle(
    engine, docker_client, owner, pool, flavors, enqueued, monkeypatch
):
    version = make_version(owner)
    gone = deployed_service(owner, version, name="gone")
    kept = deployed_service(owner, version, name="kept")
    for service in (gone, kept):
        docker_client.containers.get(service.instances.get().container_name).stop(timeout=1)
    real_ensure = runtime.ensure_container_running

    def ensure_after_a_delete(docker_host, spec):
        # The user's Delete finishes while this cycle is repairing the service.
        if spec.labels[runtime.LABEL_SERVICE] == str(gone.id):
            Service.objects.filter(id=gone.id).delete()
        return real_ensure(docker_host, spec)

    monkeypatch.setattr(runtime, "ensure_container_running", ensure_after_a_delete)

    report = reconcile()

    # The other service was still repaired and its status kept true.
    assert report.status_changes == {"kept": ServiceStatus.ABNORMAL}
    assert f"Instance {kept.instances.get().container_name} had exited; restarted it" in events_of(kept.id)
    assert not ServiceEvent.objects.filter(service_id=gone.id).exists()
    # The container the cycle brought back for the deleted service goes on the next one.
    assert len(containers_of(docker_client, gone.id)) == 1
    assert len(reconcile().removed_orphans) == 1
    assert containers_of(docker_client, gone.id) == []


@pytest.mark.django_db(transaction=True)
def test_reconcile_closes_the_database_connections_of_its_threads(engine, docker_client, owner, pool, flavors):
    version = make_version(owner)
    services = [deployed_service(owner, version, name=name) for name in ("one", "two", "three")]
    for service in services:
        docker_client.containers.get(service.instances.get().container_name).stop(timeout=1)

    def lingering() -> int:
        # Sessions of this database, other than the test's, whose last statement
        # was the repair's update of an instance row.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query LIKE 'UPDATE \"services_instance\"%%'"
            )
            return cursor.fetchone()[0]

    gc.disable()  # only an explicit close may end them, not a lucky collection
    try:
        report = reconcile()
        assert len(report.repaired) == 3  # each repair ran in a pool thread
        assert lingering() == 0
    finally:
        gc.enable()


# --- The loop as the console runs it --------------------------------------------


class TestReconcileLoop:
    def test_a_killed_instance_is_restarted_and_the_service_recovers(
        self, shared_celery_stack, docker_client, owner, pool, flavors
    ):
        service = create_service(owner, make_version(owner), instance_count=2)
        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        victim = service.instances.get(index=0)
        docker_client.containers.get(victim.container_name).kill()

        degraded = wait_for_status(service.id, {ServiceStatus.ALARM, ServiceStatus.ABNORMAL}, 20)
        assert degraded.status == ServiceStatus.ALARM
        assert degraded.status_reason == "1/2 instance(s) healthy"
        wait_for_status(service.id, ServiceStatus.RUNNING, 30)

        victim.refresh_from_db()
        assert victim.restart_count == 1
        assert victim.is_healthy
        # Restarted in place, not replaced.
        assert docker_client.containers.get(victim.container_name).id == victim.container_id
        messages = events_of(service.id)
        restarted = f"Instance {victim.container_name} had exited; restarted it"
        assert restarted in messages, "\n".join(messages)
        # Which comes first depends on whether a cycle saw the container dying or already dead.
        alarm = "Alarm: 1/2 instance(s) healthy"
        assert max(messages.index(restarted), messages.index(alarm)) < len(messages) - 1
        assert messages[-1] == "Running: 2/2 instance(s) healthy"
        assert ServiceEvent.objects.get(service=service, message=restarted).level == ServiceEvent.Level.WARNING

    def test_when_every_instance_is_killed_the_service_is_abnormal_then_recovers(
        self, shared_celery_stack, docker_client, owner, pool, flavors
    ):
        service = create_service(owner, make_version(owner), instance_count=2)
        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        # Both die between two cycles, as when the engine's host runs out of memory.
        with reconcile_paused():
            for instance in service.instances.all():
                docker_client.containers.get(instance.container_name).kill()

        degraded = wait_for_status(service.id, {ServiceStatus.ALARM, ServiceStatus.ABNORMAL}, 20)
        assert degraded.status == ServiceStatus.ABNORMAL
        assert degraded.status_reason == "0/2 instance(s) healthy"
        wait_for_status(service.id, ServiceStatus.RUNNING, 30)

        messages = events_of(service.id)
        assert "Abnormal: 0/2 instance(s) healthy" in messages
        assert messages[-1] == "Running: 2/2 instance(s) healthy"
        assert set(service.instances.values_list("restart_count", flat=True)) == {1}

    def test_a_removed_instance_is_recreated(self, shared_celery_stack, docker_client, owner, pool, flavors):
        service = create_service(owner, make_version(owner), instance_count=2)
        service = wait_for_status(service.id, ServiceStatus.RUNNING, 30)
        victim = service.instances.get(index=1)
        old_id = victim.container_id
        docker_client.containers.get(victim.container_name).remove(force=True)

        wait_for_status(service.id, {ServiceStatus.ALARM, ServiceStatus.ABNORMAL}, 20)
        wait_for_status(service.id, ServiceStatus.RUNNING, 30)

        victim.refresh_from_db()
        recreated = docker_client.containers.get(victim.container_name)
        assert recreated.id == victim.container_id != old_id
        assert recreated.labels[runtime.LABEL_SERVICE] == str(service.id)
        assert len(containers_of(docker_client, service.id)) == 2
        # A cycle may see the force-removed container while it is still dying
        # ("had exited", "was removing") rather than gone ("was missing").
        messages = events_of(service.id)
        assert any(
            message.startswith(f"Instance {victim.container_name} ") and "; restarted it" in message
            for message in messages
        ), "\n".join(messages)

    def test_a_deploy_whose_worker_died_is_taken_up_again(
        self, shared_celery_stack, docker_client, owner, pool, flavors, enqueued
    ):
        # The deploy task was lost with its worker after it had placed the
        # instances and started one container; its lease ran out since.
        service = create_service(owner, make_version(owner), instance_count=2)
        assert enqueued == [("service_deploy_task", str(service.id))]  # swallowed: no task runs
        first = lifecycle.instances_plan(service)[0]
        left = runtime.ensure_container_running(settings.DOCKER_HOST, instance_runtime.container_spec(service, first))
        Service.objects.filter(id=service.id).update(
            lease_token=uuid.uuid4(), lease_expires_at=timezone.now() - timedelta(seconds=1)
        )

        service = wait_for_status(service.id, ServiceStatus.RUNNING, 20)

        containers = containers_of(docker_client, service.id)
        assert len(containers) == 2
        assert service.instances.get(index=0).container_id == left.container_id  # adopted, not duplicated
        assert Instance.objects.filter(service=service, is_healthy=True).count() == 2
        assert events_of(service.id)[-1] == "Running: 2/2 instance(s) healthy"


def test_a_version_left_checking_is_checked_again_once_an_engine_answers(transactional_db, engine, pool, owner):
    version = make_version(owner, image=DEMO_IMAGE_V1, status=VersionStatus.CHECKING)
    AIApplicationVersion.objects.filter(id=version.id).update(created_at=timezone.now() - timedelta(minutes=1))

    reconcile()

    version.refresh_from_db()
    assert version.status == VersionStatus.NORMAL
