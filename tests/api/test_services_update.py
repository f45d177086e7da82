"""PUT /services/<id> stops or starts a service, DELETE deletes it; each
through the console's actions, refused with 409 where the state forbids it,
and 404 for another user's service."""

import pytest

from services.choices import ServiceStatus
from services.models import Service, ServiceEvent
from tests.factories import make_service, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def make(owner, pool, flavors):
    version = make_version(owner)

    def make(status: str) -> Service:
        return make_service(owner, pool, version=version, flavor=flavors["small"], status=status)

    return make


def status_of(service: Service) -> str:
    return Service.objects.get(id=service.id).status


@pytest.mark.parametrize("status", [ServiceStatus.RUNNING, ServiceStatus.ALARM, ServiceStatus.ABNORMAL])
def test_put_stopped_stops_a_serving_service_and_queues_the_stop(api, make, status, django_capture_on_commit_callbacks):
    service = make(status)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.put(f"/services/{service.id}", {"status": "stopped"})

    assert response.status_code == 200
    assert response.json()["status"] == "stopping"
    assert response.json()["events"][0]["message"] == "Stop requested by owner"
    assert status_of(service) == ServiceStatus.STOPPING
    assert len(callbacks) == 1


@pytest.mark.parametrize("status", [ServiceStatus.STOPPED, ServiceStatus.FAILED])
def test_put_running_starts_a_stopped_or_failed_service_and_queues_the_deploy(
    api, make, status, django_capture_on_commit_callbacks
):
    service = make(status)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.put(f"/services/{service.id}", {"status": "running"})

    assert response.status_code == 200
    assert response.json()["status"] == "deploying"
    assert status_of(service) == ServiceStatus.DEPLOYING
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("status", "target", "message"),
    [
        (ServiceStatus.STOPPED, "stopped", "Cannot stop svc-one while it is Stopped."),
        (ServiceStatus.DEPLOYING, "stopped", "Cannot stop svc-one while it is Deploying."),
        (ServiceStatus.RUNNING, "running", "Cannot start svc-one while it is Running."),
        (ServiceStatus.DELETING, "running", "Cannot start svc-one while it is Deleting."),
    ],
)
def test_put_a_status_the_service_cannot_move_to_is_409_with_the_reason(
    api, make, status, target, message, django_capture_on_commit_callbacks
):
    service = make(status)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.put(f"/services/{service.id}", {"status": target})

    assert response.status_code == 409
    assert response.json() == {"error_code": "RTS.4090", "error_msg": message}
    assert status_of(service) == status
    assert not ServiceEvent.objects.exists()
    assert callbacks == []


@pytest.mark.parametrize("body", [{"status": "paused"}, {"status": "Stopped"}, {"status": ["stopped"]}, {}])
def test_put_any_other_status_is_400_naming_status(api, make, body):
    service = make(ServiceStatus.RUNNING)

    response = api.put(f"/services/{service.id}", body)

    assert response.status_code == 400
    payload = response.json()
    assert payload["error_code"] == "RTS.4000"
    assert list(payload["errors"]) == ["status"]
    assert status_of(service) == ServiceStatus.RUNNING


def test_put_with_a_body_that_is_not_json_is_400(api, make):
    service = make(ServiceStatus.RUNNING)

    response = api.put(f"/services/{service.id}", "status=stopped")

    assert response.status_code == 400
    assert response.json()["error_code"] == "RTS.4001"
    assert status_of(service) == ServiceStatus.RUNNING


def test_delete_marks_the_service_deleting_and_queues_the_delete(api, make, django_capture_on_commit_callbacks):
    service = make(ServiceStatus.RUNNING)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.delete(f"/services/{service.id}")

    assert response.status_code == 204
    assert response.content == b""
    assert status_of(service) == ServiceStatus.DELETING
    assert len(callbacks) == 1


def test_delete_a_service_already_deleting_is_409(api, make):
    service = make(ServiceStatus.DELETING)

    response = api.delete(f"/services/{service.id}")

    assert response.status_code == 409
    assert response.json()["error_msg"] == "Cannot delete svc-one while it is Deleting."


@pytest.mark.parametrize(("method", "body"), [("get", None), ("put", {"status": "stopped"}), ("delete", None)])
def test_another_users_service_is_404_and_untouched(other_api, make, method, body):
    service = make(ServiceStatus.RUNNING)

    response = getattr(other_api, method)(f"/services/{service.id}", *([body] if body else []))

    assert response.status_code == 404
    assert response.json()["error_code"] == "RTS.4040"
    assert status_of(service) == ServiceStatus.RUNNING
    assert not ServiceEvent.objects.exists()


@pytest.mark.parametrize("body", [{"status": "paused"}, "not json"])
def test_put_on_another_users_service_is_404_even_with_a_bad_body(other_api, make, body):
    # A 400 would tell the caller that the service exists.
    service = make(ServiceStatus.RUNNING)

    assert other_api.put(f"/services/{service.id}", body).status_code == 404
