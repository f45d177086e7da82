"""A real service on the real engine, run for a known time: the metered
instance-seconds match the time its container ran, as the engine tells it."""

import re
import time
from datetime import datetime

import pytest
from django.utils import timezone

from metering.models import InstanceUsage
from metering.selectors import UsageQuery, usage_rows
from services.actions import service_delete, service_start, service_stop
from services.lifecycle import service_delete_run, service_deploy_run, service_stop_run
from services.models import Service
from tests.factories import create_service, make_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

RUN_SECONDS = 3.0


def engine_time(text: str) -> datetime:
    """A Docker timestamp (nanoseconds, "Z") as an aware datetime (microseconds)."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?Z", text)
    assert match, text
    fraction = (match.group(2) or ".0")[:7]
    return datetime.fromisoformat(f"{match.group(1)}{fraction}+00:00")


def container_ran_seconds(docker_client, name: str) -> float:
    state = docker_client.containers.get(name).attrs["State"]
    assert state["Running"] is False
    return (engine_time(state["FinishedAt"]) - engine_time(state["StartedAt"])).total_seconds()


@pytest.mark.parametrize("stop_delay", [0, 2], ids=["quick-stop", "slow-drain"])
def test_metered_instance_seconds_match_the_containers_running_time(
    engine, docker_client, owner, pool, flavors, enqueued, stop_delay
):
    # With a slow drain the container goes on running after the stop asked it
    # to end: that time is the user's too, and is metered.
    service = create_service(owner, make_version(owner), envs={"STOP_DELAY_SECONDS": str(stop_delay)})
    assert service_deploy_run(service_id=service.id) == "running"
    (instance,) = service.instances.all()
    time.sleep(RUN_SECONDS)
    service_stop(service=Service.objects.get(id=service.id))
    assert service_stop_run(service_id=service.id) == "stopped"

    ran = container_ran_seconds(docker_client, instance.container_name)
    (usage,) = InstanceUsage.objects.filter(instance_id=instance.id)
    assert usage.ended_at is not None
    metered = (usage.ended_at - usage.started_at).total_seconds()
    assert ran >= RUN_SECONDS + stop_delay
    assert abs(metered - ran) < 1.0, f"metered {metered:.3f} s, the container ran {ran:.3f} s"
    assert (usage.flavor_code, usage.service_name, usage.owner_id) == ("cpu.1u512m", "svc-one", owner.id)

    # The Usage page's figures are the same seconds.
    today = timezone.localdate()
    rows = usage_rows(UsageQuery(date_from=today.replace(day=1), date_to=today, owner_id=owner.id), now=timezone.now())
    assert sum(row.seconds for row in rows) == pytest.approx(metered, abs=0.001)


def test_a_restarted_then_deleted_service_keeps_both_runs_metered(
    engine, docker_client, owner, pool, flavors, enqueued
):
    service = create_service(owner, make_version(owner))
    assert service_deploy_run(service_id=service.id) == "running"
    (instance,) = service.instances.all()
    service_stop(service=Service.objects.get(id=service.id))
    assert service_stop_run(service_id=service.id) == "stopped"
    first_run = container_ran_seconds(docker_client, instance.container_name)

    service_start(service=Service.objects.get(id=service.id))
    assert service_deploy_run(service_id=service.id) == "running"
    time.sleep(1)
    before_delete = timezone.now()
    service_delete(service=Service.objects.get(id=service.id))
    assert service_delete_run(service_id=service.id) == "deleted"
    after_delete = timezone.now()

    assert not Service.objects.filter(id=service.id).exists()
    first, second = InstanceUsage.objects.filter(service_id=service.id).order_by("started_at")
    assert abs((first.ended_at - first.started_at).total_seconds() - first_run) < 1.0
    assert second.started_at >= first.ended_at
    # Closed when the instance row went with the service, after its container was removed.
    assert before_delete <= second.ended_at <= after_delete
    assert {first.service_name, second.service_name} == {"svc-one"}


def test_the_time_a_killed_instance_is_down_is_not_metered(engine, docker_client, owner, pool, flavors, enqueued):
    from services.reconcile import reconcile

    service = create_service(owner, make_version(owner))
    assert service_deploy_run(service_id=service.id) == "running"
    (instance,) = service.instances.all()
    docker_client.containers.get(instance.container_name).kill()
    time.sleep(1)  # down, and nobody has noticed yet
    killed_at = engine_time(docker_client.containers.get(instance.container_name).attrs["State"]["FinishedAt"])

    report = reconcile()

    assert report is not None and instance.container_name in report.repaired
    first, second = InstanceUsage.objects.filter(instance_id=instance.id).order_by("started_at")
    # The first run closes when the reconcile loop finds the instance down (the
    # kill itself tells the console nothing), the second opens on the restart.
    assert first.ended_at >= killed_at
    assert second.ended_at is None
    assert second.started_at > first.ended_at
