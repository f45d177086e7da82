"""The console's /metrics: services by status, instances, engines, queues, and
the durations the workers record."""

from __future__ import annotations

import pytest
from django.test import Client

from services.choices import ServiceStatus
from services.lifecycle import service_deploy_run
from tests.factories import create_service, make_service, make_version
from tests.gateway.test_metrics import metric

pytestmark = pytest.mark.django_db


def scrape() -> str:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_services_engines_and_queues_are_reported(owner, pool, flavors):
    version = make_version(owner)
    make_service(owner, pool, version=version, name="a", status=ServiceStatus.RUNNING)
    make_service(owner, pool, version=version, name="b", status=ServiceStatus.RUNNING)
    make_service(owner, pool, version=version, name="c", status=ServiceStatus.FAILED)

    text = scrape()

    assert metric(text, "rts_services", status="running") == 2
    assert metric(text, "rts_services", status="failed") == 1
    assert metric(text, "rts_services", status="stopped") == 0
    assert metric(text, "rts_engine_reachable", pool="public-cpu", node="local") == 1
    assert 'rts_queue_depth{queue="lifecycle"}' in text


@pytest.mark.docker
def test_a_deploy_records_its_duration(engine, owner, pool, flavors, enqueued):
    before = metric(scrape(), "rts_deploy_seconds_count")
    service = create_service(owner, make_version(owner))
    assert service_deploy_run(service_id=service.id) == "running"
    assert metric(scrape(), "rts_deploy_seconds_count") == before + 1


def test_metrics_are_only_for_the_consoles_own_machine():
    assert Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 404
    assert Client().get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 404
