"""Multi-pool load balancing: a service in two dedicated pools of the same
node specification, half of each version's instances in each. The rules, in
the database; calls and an engine lost are in tests/services/test_two_engines.py."""

from __future__ import annotations

import pytest

from services.actions import service_create
from services.models import Instance
from services.validation import RequestInvalid, parse_deploy_request
from tests.factories import add_node, deploy_data, make_pool, make_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def dedicated(owner, flavors):
    """Two dedicated pools of the owner, each one node of 4 vCPUs and 8 GiB."""
    first = make_pool("pool-a", owner=owner, local_node=None)
    second = make_pool("pool-b", owner=owner, local_node=None)
    add_node(first, "a-1", cpus=4)
    add_node(second, "b-1", cpus=4)
    return first, second


def request_for(owner, **overrides):
    version = owner.ai_applications.first().versions.first() if owner.ai_applications.exists() else None
    fields = {"pool": "pool-a", "multi_pool": True, "second_pool": "pool-b", "instance_count": 2, **overrides}
    data = deploy_data(version or make_version(owner), **fields)
    return parse_deploy_request(owner=owner, data=data)


def errors_of(owner, **overrides) -> dict[str, list[str]]:
    with pytest.raises(RequestInvalid) as refused:
        request_for(owner, **overrides)
    return refused.value.errors


def test_instances_are_split_evenly_between_the_two_pools(owner, dedicated, enqueued):
    service = service_create(owner=owner, request=request_for(owner, instance_count=4))

    pools = list(Instance.objects.filter(service=service).order_by("index").values_list("node__pool__name", flat=True))
    assert pools == ["pool-a", "pool-b", "pool-a", "pool-b"]
    assert service.second_pool == dedicated[1]
    assert service.events.get().message == "Deployment queued: 4 instance(s) on pools pool-a and pool-b, half in each"


@pytest.mark.parametrize("count", [1, 3])
def test_compute_nodes_must_be_a_multiple_of_two(owner, dedicated, count):
    errors = errors_of(owner, instance_count=count)

    assert errors == {
        "configs.0.instance_count": [
            "With multi-pool load balancing, compute nodes must be a multiple of 2 and at least 2 "
            "(half of them in each pool)."
        ]
    }


def test_both_pools_are_dedicated_the_users_and_different(owner, other_user, dedicated, pool):
    theirs = make_pool("theirs", owner=other_user, local_node=None)
    add_node(theirs, "t-1", cpus=4)

    assert "public-cpu is public" in errors_of(owner, pool="public-cpu")["multi_pool"][0]
    assert errors_of(owner, second_pool="theirs")["second_pool"] == [
        "Resource pool theirs is not one of your dedicated pools."
    ]
    assert errors_of(owner, second_pool="pool-a")["second_pool"] == ["Choose a second pool other than the first."]
    assert errors_of(owner, second_pool="")["second_pool"] == ["Choose the second dedicated resource pool."]


def test_the_two_pools_need_the_same_node_specification(owner, dedicated):
    add_node(dedicated[1], "b-2", cpus=8)

    [message] = errors_of(owner)["second_pool"]

    assert message == (
        "The two pools need the same node specification: pool-a has 4 vCPUs, 8 GiB, 0 GPUs; "
        "pool-b has 4 vCPUs, 8 GiB, 0 GPUs, 8 vCPUs, 8 GiB, 0 GPUs."
    )


def test_a_specification_is_offered_only_where_both_pools_have_room(owner, dedicated, enqueued):
    # Another service fills the second pool's node: 3 instances of 1.05 vCPU leave 0.85 of 4.
    service_create(
        owner=owner, request=request_for(owner, name="filler", multi_pool=False, pool="pool-b", instance_count=3)
    )

    errors = errors_of(owner, name="balanced")

    assert errors["configs.0.flavor"] == [
        "Specification cpu.1u512m cannot be used now: in the second pool pool-b: pool pool-b is full: 0.85 vCPU "
        "and 6560 MiB free on its roomiest engine, 1.05 vCPU and 544 MiB needed."
    ]
