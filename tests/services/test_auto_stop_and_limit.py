"""Auto stop and the traffic limit as a user sets them: on the Deploy form and
the API (each bad value named, nothing stored), the timer starting when the
service turns Running, the reconcile loop stopping it when the time comes, and
the timer extended or turned off on a running service."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from services.choices import ServiceStatus
from services.lifecycle import service_deploy_run
from services.models import Service, ServiceEvent
from services.reconcile import reconcile
from services.validation import RequestInvalid, parse_deploy_request
from tests.factories import create_service, deploy_data, make_service, make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("fields", "key", "message"),
    [
        ({"traffic_limit": 0}, "traffic_limit", "Traffic limit (calls per second) must be between 1 and 100000."),
        ({"traffic_limit": "many"}, "traffic_limit", "Traffic limit (calls per second) must be a whole number."),
        ({"traffic_limit": 10, "websocket": True}, "traffic_limit", "A WebSocket service cannot have a traffic limit"),
        ({"auto_stop_hours": 3}, "auto_stop_hours", "Auto stop must be off or one of 1, 2, 4, 8 or 24 hours."),
        ({"auto_stop_hours": True}, "auto_stop_hours", "Auto stop must be off or one of 1, 2, 4, 8 or 24 hours."),
    ],
)
def test_bad_limits_and_timers_are_named_and_nothing_is_stored(
    owner, pool, flavors, demo_version, fields, key, message
):
    if fields.get("websocket"):
        demo_version.is_websocket = True
        demo_version.save()
    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=deploy_data(demo_version, **fields))

    assert any(text.startswith(message) for text in refused.value.errors[key])
    assert not Service.objects.exists()


def test_the_deploy_form_keeps_the_limit_and_the_timer(owner_client, owner, pool, flavors, demo_version, enqueued):
    post = {
        "name": "timed",
        "pool": str(pool.id),
        "timeout_minutes": "20",
        "app_version": str(demo_version.id),
        "flavor": "cpu.1u512m",
        "instance_count": "1",
        "traffic_limit": "50",
        "auto_stop_hours": "2",
    }
    response = owner_client.post(reverse("services:deploy"), post)

    assert response.status_code == 302
    service = Service.objects.get(name="timed")
    assert (service.traffic_limit, service.auto_stop_hours, service.auto_stop_at) == (50, 2, None)

    refused = owner_client.post(reverse("services:deploy"), {**post, "name": "timed-2", "auto_stop_hours": "5"})
    assert refused.status_code == 400
    assert "Auto stop must be off or one of 1, 2, 4, 8 or 24 hours." in html.unescape(refused.content.decode())
    assert not Service.objects.filter(name="timed-2").exists()


def test_the_api_takes_and_shows_the_limit_and_the_timer(client, owner, pool, flavors, demo_version, enqueued):
    from access.actions import access_token_create

    token = access_token_create(owner=owner, name="api", days=1).secret
    headers = {"HTTP_X_AUTH_TOKEN": token}
    body = {
        "service_name": "api-timed",
        "config": [{"model_id": demo_version.id, "specification": "cpu.1u512m", "instance_count": 1, "weight": 100}],
        "traffic_limit": 20,
        "auto_stop_hours": 8,
    }
    created = client.post("/api/v1/services", body, content_type="application/json", **headers)
    assert created.status_code == 201, created.content
    detail = client.get(f"/api/v1/services/{created.json()['service_id']}", **headers).json()
    assert (detail["traffic_limit"], detail["auto_stop_hours"], detail["auto_stop_at"]) == (20, 8, None)

    bad = client.post(
        "/api/v1/services",
        {**body, "service_name": "api-bad", "traffic_limit": 100_001},
        content_type="application/json",
        **headers,
    )
    assert bad.status_code == 400
    assert "traffic_limit" in bad.json()["errors"]
    assert not Service.objects.filter(name="api-bad").exists()


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_the_timer_starts_at_running_and_the_reconcile_loop_stops_the_service(
    engine, owner, pool, flavors, demo_version, enqueued
):
    service = create_service(owner, demo_version, name="one-hour", auto_stop_hours=1)
    before = timezone.now()
    assert service_deploy_run(service_id=service.id) == "running"
    service.refresh_from_db()
    assert before + timedelta(minutes=59) < service.auto_stop_at < timezone.now() + timedelta(hours=1)

    report = reconcile()
    assert Service.objects.get(id=service.id).status == ServiceStatus.RUNNING  # not yet
    assert report.auto_stopped == []

    Service.objects.filter(id=service.id).update(auto_stop_at=timezone.now() - timedelta(seconds=1))
    report = reconcile()

    service.refresh_from_db()
    assert service.status == ServiceStatus.STOPPING
    assert service.auto_stop_at is None  # a stop disarms it; the next Running starts it again
    assert report.auto_stopped == ["one-hour"]
    assert (str(service.id), ServiceStatus.STOPPING) in report.lapsed
    assert ServiceEvent.objects.filter(
        service=service, message="Auto stop: stopping 1 hour after it turned Running"
    ).exists()


def test_the_owner_extends_or_turns_off_the_timer_on_a_running_service(
    owner_client, owner, other_user, pool, flavors, demo_version
):
    service = make_service(owner, pool, version=demo_version, auto_stop_hours=1)
    url = reverse("services:auto_stop", args=[service.id])

    owner_client.post(url, {"auto_stop_hours": "4"})
    service.refresh_from_db()
    assert service.auto_stop_hours == 4
    assert timezone.now() + timedelta(hours=3, minutes=59) < service.auto_stop_at
    page = html.unescape(owner_client.get(reverse("services:list")).content.decode())
    assert "Stops in 3\xa0hours, 59\xa0minutes" in page or "Stops in 4\xa0hours" in page

    refused = owner_client.post(url, {"auto_stop_hours": "7"}, follow=True)
    assert "Auto stop must be off or one of 1, 2, 4, 8 or 24 hours." in html.unescape(refused.content.decode())
    service.refresh_from_db()
    assert service.auto_stop_hours == 4

    owner_client.post(url, {"auto_stop_hours": ""})
    service.refresh_from_db()
    assert (service.auto_stop_hours, service.auto_stop_at) == (None, None)
    assert list(ServiceEvent.objects.filter(service=service).values_list("message", flat=True)) == [
        "Auto stop set to 4 hours from now by owner",
        "Auto stop turned off by owner",
    ]

    operator = make_user("operator")
    operator.is_staff = True
    operator.save()
    for user in (other_user, operator):
        owner_client.force_login(user)
        assert owner_client.post(url, {"auto_stop_hours": "1"}).status_code == 404
