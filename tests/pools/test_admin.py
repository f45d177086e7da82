"""Operators' forms name the field and the rule, not a database constraint."""

import pytest

from pools.models import Flavor

pytestmark = pytest.mark.django_db


def test_a_flavor_with_negative_cpus_gets_a_message_on_the_field(admin_client):
    response = admin_client.post(
        "/admin/pools/flavor/add/",
        {"code": "cpu.bad", "display_name": "Bad", "cpus": "-1", "memory_mib": "8", "gpus": "0", "sort_order": "0"},
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "A flavor needs more than 0 vCPUs." in page
    assert "A flavor needs at least 16 MiB of memory." in page
    assert "flavor_cpus_positive" not in page
    assert not Flavor.objects.filter(code="cpu.bad").exists()
