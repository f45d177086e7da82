"""A deploy never holds a worker while its model comes up: after a short wait of
its own it hands the health checks to the periodic prober, which turns the
service Running the moment every instance answers, or Failed at its timeout."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from services.choices import ServiceStatus
from services.lifecycle import deploys_probe, service_deploy_run
from services.models import Service, ServiceEvent
from services.reconcile import reconcile
from tests.conftest import start_celery_processes, stop_celery_processes
from tests.factories import create_service, make_version
from tests.waiting import eventually, wait_for_status

pytestmark = pytest.mark.docker


def probe_until_settled(service_id, timeout: float = 60.0) -> Service:
    def settled() -> Service | None:
        deploys_probe()
        service = Service.objects.get(id=service_id)
        return service if service.status != ServiceStatus.DEPLOYING else None

    return eventually(settled, timeout=timeout, interval=0.2, message="the prober never settled the deploy")


@pytest.mark.django_db
def test_a_slow_model_is_handed_to_the_prober_and_turns_running(engine, owner, pool, flavors, settings, owner_client):
    settings.DEPLOY_FAST_WAIT_SECONDS = 0.2
    service = create_service(owner, make_version(owner), envs={"STARTUP_DELAY_SECONDS": "3"})

    assert service_deploy_run(service_id=service.id) == "waiting"

    waiting = Service.objects.get(id=service.id)
    assert waiting.status == ServiceStatus.DEPLOYING
    assert waiting.health_wait_started_at is not None and waiting.lease_token is None
    instance = waiting.instances.get()
    # Refused or reset, depending on how the engine publishes ports.
    assert instance.probe_note in (
        "GET /health on port 8080: connection refused",
        "GET /health on port 8080: connection reset",
    )
    # The details page says what is being checked and what it got.
    page = owner_client.get(f"/services/{service.id}/").content.decode()
    assert f"{instance.probe_note}, " in page and " s of 1200 s" in page

    running = probe_until_settled(service.id)

    assert running.status == ServiceStatus.RUNNING and running.health_wait_started_at is None
    messages = list(ServiceEvent.objects.filter(service=service).order_by("id").values_list("message", flat=True))
    assert f"Waiting for the health check of {instance.container_name}" in messages
    assert messages[-1] == "Running: 1/1 instance(s) healthy"


@pytest.mark.django_db
def test_the_prober_fails_a_never_healthy_deploy_at_its_timeout_with_the_logs(
    engine, docker_client, owner, pool, flavors, settings
):
    settings.DEPLOY_FAST_WAIT_SECONDS = 0.2
    settings.SERVICE_TIMEOUT_SCALE = 0.02  # 3 minutes -> 3.6 s
    service = create_service(owner, make_version(owner), timeout_minutes=3, envs={"HEALTH_STATUS": "500"})
    assert service_deploy_run(service_id=service.id) == "waiting"
    assert Service.objects.get(id=service.id).instances.get().probe_note == (
        "GET /health on port 8080: answered 500 Internal Server Error"
    )

    failed = probe_until_settled(service.id)

    assert failed.status == ServiceStatus.FAILED
    assert failed.status_reason == "timed out after 3 minute(s): 1 instance(s) never answered the health check"
    assert timezone.now() - failed.created_at >= timedelta(seconds=3.6)
    failure = ServiceEvent.objects.get(service=service, level=ServiceEvent.Level.ERROR)
    assert "model server 1.0.0 listening on :8080" in failure.detail
    assert docker_client.containers.list(all=True, filters={"name": failed.instances.get().container_name}) == []


@pytest.mark.django_db
def test_the_reconcile_loop_leaves_a_waiting_deploy_to_the_prober(engine, owner, pool, flavors, settings, enqueued):
    settings.DEPLOY_FAST_WAIT_SECONDS = 0.2
    service = create_service(owner, make_version(owner), envs={"HEALTH_STATUS": "500"})
    assert service_deploy_run(service_id=service.id) == "waiting"
    # Long past the grace a deploy without a lease gets before it is taken up again.
    Service.objects.filter(id=service.id).update(status_changed_at=timezone.now() - timedelta(minutes=5))

    report = reconcile()

    assert report.lapsed == []
    assert Service.objects.get(id=service.id).status == ServiceStatus.DEPLOYING


@pytest.mark.django_db(transaction=True)
def test_never_healthy_deploys_do_not_hold_up_another_users_deploy(engine, owner, other_user, pool, flavors, tmp_path):
    """Six never-healthy deploys on a worker with four processes: the good deploy
    sent after them still runs at once. (Before, each bad deploy held a worker
    for its whole timeout.)"""
    processes = start_celery_processes(tmp_path / "beat-schedule", DEPLOY_FAST_WAIT_SECONDS="0.5")
    try:
        # The workers are up and warm before the clock starts.
        warm = create_service(other_user, make_version(other_user), name="warm")
        wait_for_status(warm.id, ServiceStatus.RUNNING, timeout=60)
        bad_version = make_version(owner)
        for n in range(6):
            create_service(owner, bad_version, name=f"bad-{n}", envs={"HEALTH_STATUS": "500"})
        time.sleep(0.5)  # the bad deploys are on the workers first
        sent = time.monotonic()
        good = create_service(other_user, other_user.ai_applications.get().versions.get(), name="good")

        wait_for_status(good.id, ServiceStatus.RUNNING, timeout=90)

        # Far sooner than a bad deploy's timeout (20 min scaled by 0.05 = 60 s),
        # which is how long a held worker would have kept the good one waiting.
        assert time.monotonic() - sent < 30
        assert Service.objects.filter(name__startswith="bad-", status=ServiceStatus.DEPLOYING).count() == 6
    finally:
        stop_celery_processes(processes)
