"""PUT /services/<id> with `config` and/or `description` changes a service:
every rule of the Deploy form holds, a bad value is a 400 naming the row and
field and changes nothing, and each change is kept in the update history.
In the database only: the live update's containers are tested in
tests/services/test_live_update.py."""

import pytest

from services.choices import ConfigPhase, ServiceStatus
from services.models import Service, ServiceUpdate, ServiceVersionConfig
from tests.factories import make_service, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(owner):
    return make_version(owner, "1.0.0"), make_version(owner, "2.0.0")


@pytest.fixture
def two_versions(owner, pool, flavors, versions):
    """A Running service (no containers) splitting 70/30 between 1.0.0 and 2.0.0."""
    v1, v2 = versions
    service = make_service(owner, pool, version=v1, flavor=flavors["small"])
    service.configs.update(weight=70)
    ServiceVersionConfig.objects.create(
        service=service, position=1, app_version=v2, flavor=flavors["small"], weight=30, instance_count=1
    )
    return service


def row(version, weight, **fields):
    return {
        "model_id": version.id,
        "weight": weight,
        "specification": fields.pop("specification", "cpu.1u512m"),
        "instance_count": fields.pop("instance_count", 1),
        **fields,
    }


def configs_of(service):
    return list(
        ServiceVersionConfig.objects.filter(service=service)
        .order_by("position")
        .values_list("app_version__version", "weight", "flavor__code", "instance_count", "envs", "phase")
    )


def test_new_ratios_take_effect_at_once_and_are_kept_in_the_history(api, two_versions, versions):
    v1, v2 = versions
    before = configs_of(two_versions)

    response = api.put(f"/services/{two_versions.id}", {"config": [row(v1, 50), row(v2, 50)]})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "running"  # nothing to start: no Upgrading
    assert [c["weight"] for c in body["config"]] == [50, 50]
    assert configs_of(two_versions) == [(v, 50, *rest) for v, _, *rest in before]
    [entry] = body["update_history"]
    assert entry["outcome"] == "succeeded"
    assert entry["requested_by"] == "owner"
    assert [c["weight"] for c in entry["before"]["config"]] == [70, 30]
    assert [c["weight"] for c in entry["after"]["config"]] == [50, 50]
    assert body["events"][0]["message"].startswith("Traffic ratios changed by owner: demo-model 1.0.0 50%")


def test_a_description_alone_changes_in_any_status_but_deleting(api, owner, pool, flavors, versions):
    service = make_service(owner, pool, version=versions[0], flavor=flavors["small"], status=ServiceStatus.STOPPED)

    response = api.put(f"/services/{service.id}", {"description": "now with a description"})

    assert response.status_code == 200, response.json()
    assert response.json()["description"] == "now with a description"
    assert response.json()["update_history"][0]["after"]["description"] == "now with a description"
    assert response.json()["status"] == "stopped"


def test_the_same_configuration_again_changes_nothing_and_records_nothing(api, two_versions, versions):
    v1, v2 = versions

    response = api.put(f"/services/{two_versions.id}", {"config": [row(v1, 70), row(v2, 30)]})

    assert response.status_code == 200
    assert response.json()["update_history"] == []


def test_a_change_that_needs_new_containers_turns_the_service_upgrading(
    api, two_versions, versions, django_capture_on_commit_callbacks
):
    v1, _ = versions

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.put(f"/services/{two_versions.id}", {"config": [row(v1, 100, instance_count=2)]})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "upgrading"
    # The service still serves its current configuration until the cut-over.
    assert [(c["model_version"], c["weight"]) for c in body["config"]] == [("1.0.0", 70), ("2.0.0", 30)]
    assert configs_of(two_versions)[-1] == ("1.0.0", 0, "cpu.1u512m", 2, {}, ConfigPhase.STAGED)
    [entry] = body["update_history"]
    assert entry["outcome"] == "in_progress"
    assert entry["after"]["config"][0]["instance_count"] == 2
    update = ServiceUpdate.objects.get()
    staged = ServiceVersionConfig.objects.get(service=two_versions, phase=ConfigPhase.STAGED)
    old = ServiceVersionConfig.objects.filter(service=two_versions, phase=ConfigPhase.SERVING)
    assert update.plan == {
        "weights": {str(staged.id): 100},
        "remove": sorted(c.id for c in old),
        "new": [staged.id],
    }
    assert len(callbacks) == 1  # the update task, after commit
    assert "starting 2 new instance(s) before any traffic moves" in body["events"][0]["message"]

    again = api.put(f"/services/{two_versions.id}", {"config": [row(v1, 100)]})
    assert again.status_code == 409
    assert again.json()["error_msg"] == "Cannot update svc-one while it is Upgrading."


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        (lambda v1, v2, other: [row(v1, 60), row(v2, 30)], "config[1].weight", "add up to 90%"),
        (lambda v1, v2, other: [row(v1, 50), row(v1, 50)], "config[1].model_id", "chosen twice"),
        (lambda v1, v2, other: [row(other, 100)], "config[0].model_id", "one AI application (demo-model)"),
        (lambda v1, v2, other: [row(v1, 100, specification="cpu.nope")], "config[0].specification", "not exist"),
        (
            lambda v1, v2, other: [row(v1, 50, specification="cpu.1u1g.free"), row(v2, 50)],
            "config[0].specification",
            "gray launch",
        ),
        (lambda v1, v2, other: [row(v1, 100, instance_count=0)], "config[0].instance_count", "between 1 and"),
        (lambda v1, v2, other: [row(v1, 100.5)], "config[0].weight", "whole number"),
        (lambda v1, v2, other: [row(v1, 100, envs={"1BAD": "x"})], "config[0].envs", "is not valid"),
        (lambda v1, v2, other: [], "config", "at least one"),
        (lambda v1, v2, other: "all of them", "config", "at least one"),
    ],
)
def test_a_bad_configuration_is_a_400_naming_the_field_and_changes_nothing(
    api, owner, two_versions, versions, config, field, message
):
    other = make_version(owner, "1.0.0", application_name="other-model")
    before = configs_of(two_versions)

    response = api.put(f"/services/{two_versions.id}", {"config": config(*versions, other)})

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert configs_of(two_versions) == before
    assert Service.objects.get(id=two_versions.id).status == ServiceStatus.RUNNING
    assert not ServiceUpdate.objects.exists()


def test_websocket_cannot_change_after_deployment(api, two_versions, versions):
    response = api.put(f"/services/{two_versions.id}", {"websocket": True, "description": "x"})

    assert response.status_code == 400
    assert "fixed when a service is deployed" in response.json()["errors"]["websocket"][0]
    assert Service.objects.get(id=two_versions.id).description == ""


def test_a_websocket_service_takes_only_websocket_compliant_versions(api, owner, pool, flavors):
    ws = make_version(owner, "3.0.0", is_websocket=True)
    plain = make_version(owner, "1.0.0")
    service = make_service(owner, pool, version=ws, flavor=flavors["small"], is_websocket=True)

    response = api.put(f"/services/{service.id}", {"config": [row(ws, 50), row(plain, 50)]})

    assert response.status_code == 400
    assert "WebSocket-compliant" in response.json()["errors"]["websocket"][0]
    assert configs_of(service) == [("3.0.0", 100, "cpu.1u512m", 1, {}, ConfigPhase.SERVING)]


def test_status_and_a_change_in_one_request_are_refused(api, two_versions, versions):
    response = api.put(f"/services/{two_versions.id}", {"status": "stopped", "description": "x"})

    assert response.status_code == 400
    assert "send two requests" in response.json()["errors"]["status"][0]
    assert Service.objects.get(id=two_versions.id).status == ServiceStatus.RUNNING


@pytest.mark.parametrize("status", [ServiceStatus.DEPLOYING, ServiceStatus.STOPPED, ServiceStatus.FAILED])
def test_new_containers_need_a_serving_service(api, owner, pool, flavors, versions, status):
    service = make_service(owner, pool, version=versions[0], flavor=flavors["small"], status=status)

    response = api.put(f"/services/{service.id}", {"config": [row(versions[0], 100, instance_count=2)]})

    assert response.status_code == 409
    assert "start it first" in response.json()["error_msg"]
    assert configs_of(service) == [("1.0.0", 100, "cpu.1u512m", 1, {}, ConfigPhase.SERVING)]


def test_another_users_service_is_404(other_api, two_versions, versions):
    response = other_api.put(f"/services/{two_versions.id}", {"description": "mine now"})

    assert response.status_code == 404
    assert Service.objects.get(id=two_versions.id).description == ""
