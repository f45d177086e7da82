"""The service limit holds when requests come at once: each request is
validated alone, so service_create counts again with the owner's row locked."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from services.actions import service_create
from services.models import Service
from services.validation import RequestInvalid, parse_deploy_request
from tests.factories import deploy_data, make_service

pytestmark = pytest.mark.django_db(transaction=True)


def test_25_requests_at_once_from_a_user_with_15_create_exactly_5(
    owner, pool, flavors, demo_version, enqueued, settings
):
    settings.MAX_SERVICES_PER_USER = 20
    for n in range(15):
        make_service(owner, pool, version=demo_version, name=f"old-{n}")
    # Every request passes validation before any of them is stored.
    requests = [parse_deploy_request(owner=owner, data=deploy_data(demo_version, name=f"new-{n}")) for n in range(25)]
    barrier = threading.Barrier(25)
    outcomes: list[str] = []

    def create(request) -> None:
        try:
            barrier.wait()
            service_create(owner=owner, request=request)
            outcomes.append("created")
        except RequestInvalid as exc:
            outcomes.append(exc.errors["__all__"][0])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert outcomes.count("created") == 5
    assert Service.objects.filter(owner=owner).count() == 20
    refusals = [outcome for outcome in outcomes if outcome != "created"]
    assert len(refusals) == 20
    assert all(refusal.startswith("You already have 20 services") for refusal in refusals)
