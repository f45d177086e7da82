"""Instance.state says what the engine runs: an instance waiting out its restart
back-off shows Exited (or Missing), never Running."""

from datetime import timedelta

import pytest
from django.utils import timezone

from services.choices import InstanceState, ServiceStatus
from services.lifecycle import service_deploy_run
from services.models import Instance, Service
from services.reconcile import reconcile
from tests.factories import create_service, make_version

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def deployed_instance(owner) -> Instance:
    service = create_service(owner, make_version(owner))
    assert service_deploy_run(service_id=service.id) == "running"
    instance = Instance.objects.get(service=service)
    assert instance.state == InstanceState.RUNNING
    return instance


def hold_back_off(instance: Instance) -> None:
    """It died three times in a row, the last restart a second ago: the loop waits 8 s."""
    Instance.objects.filter(id=instance.id).update(crash_streak=3, restarted_at=timezone.now() - timedelta(seconds=1))


def test_an_exited_instance_waiting_out_its_back_off_is_exited_then_running_again(
    engine, docker_client, owner, pool, flavors, owner_client
):
    instance = deployed_instance(owner)
    docker_client.containers.get(instance.container_name).stop(timeout=1)
    hold_back_off(instance)

    reconcile()

    instance.refresh_from_db()
    assert (instance.state, instance.is_healthy) == (InstanceState.EXITED, False)
    assert Service.objects.get(id=instance.service_id).status == ServiceStatus.ABNORMAL
    page = owner_client.get(f"/services/{instance.service_id}/").content.decode()
    row = page[page.index(instance.container_name) :]
    assert "Exited" in row[: row.index("</tr>")]

    Instance.objects.filter(id=instance.id).update(restarted_at=timezone.now() - timedelta(seconds=9))
    reconcile()

    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert docker_client.containers.get(instance.container_name).status == "running"


def test_a_removed_instance_waiting_out_its_back_off_is_missing(engine, docker_client, owner, pool, flavors):
    instance = deployed_instance(owner)
    docker_client.containers.get(instance.container_name).remove(force=True)
    hold_back_off(instance)

    reconcile()

    instance.refresh_from_db()
    assert (instance.state, instance.is_healthy) == (InstanceState.MISSING, False)
