"""The Configuration Updates tab without a browser: the form shows the
running configuration, posts through the same validation as the API, and is
the owner's only."""

import pytest

from services.choices import ConfigPhase, ServiceStatus
from services.models import Service, ServiceUpdate, ServiceVersionConfig
from tests.factories import make_service, make_user, make_version

pytestmark = pytest.mark.django_db


def post_rows(client, service, rows, description=""):
    """Post the tab's form: `rows` as (version, weight, flavor, instance_count)."""
    data = {"description": description, "rows": []}
    for n, (version, weight, flavor, count) in enumerate(rows):
        prefix = "" if n == 0 else f"r{n + 1}-"
        data["rows"].append(prefix)
        data.update(
            {
                f"{prefix}app_version": version.id,
                f"{prefix}weight": weight,
                f"{prefix}flavor": flavor,
                f"{prefix}instance_count": count,
            }
        )
    return client.post(f"/services/{service.id}/update/", data)


@pytest.fixture
def versions(owner):
    return make_version(owner, "1.0.0"), make_version(owner, "2.0.0")


@pytest.fixture
def running(owner, pool, flavors, versions):
    return make_service(owner, pool, version=versions[0], flavor=flavors["small"], description="first")


def test_the_tab_shows_the_running_configuration_and_the_applications_versions(owner_client, owner, running):
    make_version(owner, "9.9.9", application_name="another-app")

    text = owner_client.get(f"/services/{running.id}/?tab=update").content.decode()

    assert 'id="update-form"' in text
    assert ">first</textarea>" in text
    assert "demo-model · 1.0.0" in text and "demo-model · 2.0.0" in text
    assert "another-app" not in text
    assert 'value="cpu.1u512m" checked' in text
    assert "No update yet" in text


def test_new_ratios_are_saved_at_once_and_listed_in_the_history(owner_client, running, versions, flavors):
    ServiceVersionConfig.objects.create(
        service=running, position=1, app_version=versions[1], flavor=flavors["small"], weight=0
    )

    response = post_rows(
        owner_client, running, [(versions[0], 20, "cpu.1u512m", 1), (versions[1], 80, "cpu.1u512m", 1)], "first"
    )

    assert response.status_code == 302
    assert list(running.configs.order_by("position").values_list("weight", flat=True)) == [20, 80]
    page = owner_client.get(response["Location"]).content.decode()
    assert "every gateway routes by the new configuration now" in page
    assert "Succeeded" in page and "demo-model 2.0.0 · <strong>80%</strong>" in page


def test_a_bad_row_is_a_400_on_the_tab_and_changes_nothing(owner_client, running, versions):
    response = post_rows(
        owner_client, running, [(versions[0], 50, "cpu.1u512m", 1), (versions[1], 40, "cpu.1u512m", 1)]
    )

    assert response.status_code == 400
    text = response.content.decode()
    assert "Traffic ratios must add up to 100%; they add up to 90%." in text
    assert 'id="r2-weight-field"' in text and 'value="40"' in text
    assert list(running.configs.values_list("weight", flat=True)) == [100]
    assert not ServiceUpdate.objects.exists()


def test_a_change_of_compute_nodes_starts_a_live_update(
    owner_client, running, versions, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_rows(owner_client, running, [(versions[0], 100, "cpu.1u512m", 2)], "first")

    assert response.status_code == 302
    assert Service.objects.get(id=running.id).status == ServiceStatus.UPGRADING
    assert running.configs.filter(phase=ConfigPhase.STAGED, instance_count=2).exists()
    assert len(callbacks) == 1
    page = owner_client.get(response["Location"]).content.decode()
    assert "is Upgrading" in page and 'id="update-running"' in page
    assert 'id="update-submit" disabled' in page


def test_a_stopped_service_can_have_new_ratios_but_not_new_instances(owner_client, owner, pool, flavors, versions):
    stopped = make_service(owner, pool, version=versions[0], flavor=flavors["small"], status=ServiceStatus.STOPPED)

    page = owner_client.get(f"/services/{stopped.id}/?tab=update").content.decode()
    assert 'id="update-not-serving"' in page
    response = post_rows(owner_client, stopped, [(versions[0], 100, "cpu.1u512m", 3)])

    assert response.status_code == 302
    assert "start it first" in owner_client.get(response["Location"]).content.decode()
    assert list(stopped.configs.values_list("instance_count", flat=True)) == [1]


def test_the_tab_and_the_post_are_the_owners_only(client, running, versions):
    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    client.force_login(operator)

    assert client.get(f"/services/{running.id}/?tab=update").status_code == 404
    assert post_rows(client, running, [(versions[0], 100, "cpu.1u512m", 2)]).status_code == 404
    assert Service.objects.get(id=running.id).status == ServiceStatus.RUNNING
