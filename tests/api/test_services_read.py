"""GET /services and /services/<id>: the owner's services with ModelArts'
field names and status words; another user's or an unknown service is 404."""

import uuid

import pytest

from services.choices import ServiceStatus
from services.models import ServiceEvent
from tests.factories import add_event, add_instance, make_service, make_version

pytestmark = pytest.mark.django_db

API_STATUS = {
    ServiceStatus.DEPLOYING: "deploying",
    ServiceStatus.RUNNING: "running",
    ServiceStatus.ALARM: "concerning",
    ServiceStatus.ABNORMAL: "abnormal",
    ServiceStatus.FAILED: "failed",
    ServiceStatus.STOPPING: "stopping",
    ServiceStatus.STOPPED: "stopped",
    ServiceStatus.DELETING: "deleting",
    ServiceStatus.UPGRADING: "upgrading",
}


@pytest.fixture
def version(owner):
    return make_version(owner)


@pytest.fixture
def running(owner, pool, flavors, version):
    service = make_service(
        owner,
        pool,
        version=version,
        flavor=flavors["small"],
        envs={"MODE": "fast"},
        description="the demo",
        status=ServiceStatus.ALARM,
        status_reason="1 of 2 instances is unhealthy",
        timeout_minutes=15,
        invocation_times=42,
        failed_times=3,
    )
    add_instance(service, index=0, host_port=32768, is_healthy=True)
    add_instance(service, index=1, host_port=32769, is_healthy=False)
    add_event(service, "Deployment queued")
    add_event(service, "Container died", level=ServiceEvent.Level.ERROR, detail="Traceback ...")
    return service


def test_list_services_shows_only_the_owners_services_newest_first(api, owner, other_user, pool, flavors, version):
    first = make_service(owner, pool, version=version, flavor=flavors["small"], name="first")
    second = make_service(owner, pool, version=version, flavor=flavors["small"], name="second")
    make_service(other_user, pool, version=make_version(other_user), flavor=flavors["small"], name="theirs")

    response = api.get("/services")

    assert response.status_code == 200
    body = response.json()
    assert body["total_count"] == 2
    assert [s["service_id"] for s in body["services"]] == [str(second.id), str(first.id)]


def test_list_services_gives_each_service_its_summary(api, running, version):
    (item,) = api.get("/services").json()["services"]

    assert item == {
        "service_id": str(running.id),
        "service_name": "svc-one",
        "description": "the demo",
        "status": "concerning",
        "pool_name": "public-cpu",
        "second_pool_name": None,
        "access_address": f"http://gateway.test:8001/v1/infers/{running.id}",
        "config": [
            {
                "model_id": version.id,
                "model_name": "demo-model",
                "model_version": "1.0.0",
                "weight": 100,
                "specification": "cpu.1u512m",
                "instance_count": 1,
                "envs": {"MODE": "fast"},
            }
        ],
        "invocation_times": 42,
        "failed_times": 3,
        "error_msg": "1 of 2 instances is unhealthy",
        "timeout_minutes": 15,
        "websocket": False,
        "traffic_limit": None,
        "auto_stop_hours": None,
        "auto_stop_at": None,
        "create_at": int(running.created_at.timestamp() * 1000),
    }


def test_list_services_takes_a_fixed_number_of_queries(api, owner, pool, flavors, django_assert_num_queries):
    for n in range(5):
        make_service(
            owner,
            pool,
            version=make_version(owner, application_name=f"app{n}"),
            flavor=flavors["small"],
            name=f"svc{n}",
        )

    # token lookup + services with their pool + configs with version, application and flavor
    with django_assert_num_queries(3):
        assert api.get("/services").json()["total_count"] == 5


@pytest.mark.parametrize(("status", "api_status"), API_STATUS.items())
def test_service_status_is_the_modelarts_word(api, owner, pool, flavors, version, status, api_status):
    service = make_service(owner, pool, version=version, flavor=flavors["small"], status=status)

    assert api.get(f"/services/{service.id}").json()["status"] == api_status
    assert api.get("/services").json()["services"][0]["status"] == api_status


def test_every_service_status_has_an_api_word():
    assert set(API_STATUS) == set(ServiceStatus.values)


def test_show_service_adds_instances_and_events_newest_first(api, running, version):
    response = api.get(f"/services/{running.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["service_id"] == str(running.id)
    assert body["status"] == "concerning"
    assert body["error_msg"] == "1 of 2 instances is unhealthy"
    assert (body["invocation_times"], body["failed_times"]) == (42, 3)
    assert body["access_address"] == f"http://gateway.test:8001/v1/infers/{running.id}"
    assert body["config"][0]["specification"] == "cpu.1u512m"
    assert body["instances"] == [
        {
            "container_name": f"rts-{running.id}-0-0",
            "host_port": 32768,
            "state": "running",
            "is_healthy": True,
            "model_id": version.id,
        },
        {
            "container_name": f"rts-{running.id}-0-1",
            "host_port": 32769,
            "state": "running",
            "is_healthy": False,
            "model_id": version.id,
        },
    ]
    events = body["events"]
    assert [(e["message"], e["level"], e["detail"]) for e in events] == [
        ("Container died", "error", "Traceback ..."),
        ("Deployment queued", "info", ""),
    ]
    assert all(isinstance(e["time"], int) for e in events)


def test_show_service_takes_a_fixed_number_of_queries(api, running, django_assert_num_queries):
    # token + service + configs + instances + events + updates
    with django_assert_num_queries(6):
        assert api.get(f"/services/{running.id}").status_code == 200


def test_show_another_users_service_is_404(other_api, running):
    response = other_api.get(f"/services/{running.id}")

    assert response.status_code == 404
    assert response.json() == {"error_code": "RTS.4040", "error_msg": f"Service {running.id} does not exist."}


@pytest.mark.parametrize("service_id", [str(uuid.uuid4()), "not-a-uuid", "123"])
def test_show_an_unknown_service_is_404(api, service_id):
    response = api.get(f"/services/{service_id}")

    assert response.status_code == 404
    assert response.json()["error_code"] == "RTS.4040"
