"""Leases are short and kept alive while their work runs, so a dead worker's
work is taken up again within seconds and a live worker's never is."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from services.choices import ServiceStatus
from services.lifecycle import lease_claim, lease_kept
from services.models import Service
from tests.factories import make_service, make_version


@pytest.mark.django_db(transaction=True)
def test_a_kept_lease_outlives_its_length_and_lapses_once_the_work_ends(owner, pool, flavors, settings):
    settings.TASK_LEASE_SECONDS = 0.6
    service = make_service(owner, pool, version=make_version(owner), status=ServiceStatus.STOPPING)
    token = lease_claim(service.id, ServiceStatus.STOPPING)
    assert token is not None

    with lease_kept(service.id, token, ServiceStatus.STOPPING):
        time.sleep(2.0)  # more than three lease lengths
        assert Service.objects.get(id=service.id).lease_expires_at > timezone.now()
        assert lease_claim(service.id, ServiceStatus.STOPPING) is None  # nobody else can take it

    time.sleep(0.8)
    assert Service.objects.get(id=service.id).lease_expires_at < timezone.now()
    assert lease_claim(service.id, ServiceStatus.STOPPING) is not None  # a dead worker's work is free again


def test_leases_are_short_by_default(settings):
    assert settings.TASK_LEASE_SECONDS <= 5
