"""Capacity, quota and limits, enforced in the transaction that creates or
changes a service, on the real PostgreSQL: concurrent deploys never overfill a
node, a user never passes their quota or limits, and a refusal stores nothing
and says why."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connections

from pools.models import Node, UserQuota
from pools.quotas import holding_of
from pools.selectors import flavor_options_for_pool
from services.actions import service_create, service_update
from services.models import Instance, Service, ServiceVersionConfig
from services.validation import RequestInvalid, parse_deploy_request, parse_update_request
from tests.factories import add_node, deploy_data, make_pool, make_service, make_user, make_version

pytestmark = pytest.mark.django_db(transaction=True)


def at_once(calls: list) -> list[str]:
    """Run every call on its own thread, all released together; each outcome
    is "created" or the refusal's first message."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[str] = []

    def run(call) -> None:
        try:
            barrier.wait()
            call()
            outcomes.append("created")
        except RequestInvalid as exc:
            outcomes.append(next(iter(exc.errors.values()))[0])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.fixture
def tight_pool(db, flavors):
    """A public pool of one 2-vCPU, 8 GiB node without overcommit: one small
    instance takes 1.05 vCPU (with the overhead), so one fits."""
    pool = make_pool("tight", local_node=None, overcommit=1)
    add_node(pool, "tight-1", cpus=2, memory_mib=8192)
    return pool


def deploy_request(user, name, *, pool="tight", instance_count=1, flavor="cpu.1u512m"):
    version = make_version(user, version="1.0.0") if not user.ai_applications.exists() else None
    version = version or user.ai_applications.get().versions.get()
    data = deploy_data(version, name=name, pool=pool, instance_count=instance_count, flavor=flavor)
    return parse_deploy_request(owner=user, data=data)


def test_ten_users_deploying_at_once_to_a_pool_with_room_for_one_place_exactly_one(tight_pool, enqueued):
    users = [make_user(f"user{n}") for n in range(10)]
    requests = [(user, deploy_request(user, "svc")) for user in users]

    outcomes = at_once(
        [lambda user=user, request=request: service_create(owner=user, request=request) for user, request in requests]
    )

    assert outcomes.count("created") == 1
    refusals = [outcome for outcome in outcomes if outcome != "created"]
    assert len(refusals) == 9
    assert all(refusal.startswith("Pool tight is full for cpu.1u512m") for refusal in refusals)
    assert "the roomiest node has 0.95 vCPUs and 7648 MiB free" in refusals[0]
    assert Service.objects.count() == 1
    assert Instance.objects.count() == 1
    assert ServiceVersionConfig.objects.count() == 1  # the refused ones left nothing behind


def test_instances_spread_over_the_nodes_with_the_most_room(db, flavors, owner, enqueued):
    pool = make_pool("two", local_node=None, overcommit=1)
    first = add_node(pool, "node-a", cpus=4, memory_mib=8192)
    second = add_node(pool, "node-b", cpus=4, memory_mib=8192)

    service = service_create(owner=owner, request=deploy_request(owner, "spread", pool="two", instance_count=4))

    placed = list(Instance.objects.filter(service=service).values_list("node_id", flat=True))
    assert sorted(placed) == sorted([first.id, first.id, second.id, second.id])


def test_a_deploy_that_does_not_fit_names_the_row_and_how_far_it_is(tight_pool, owner, enqueued):
    with pytest.raises(RequestInvalid) as refused:
        service_create(owner=owner, request=deploy_request(owner, "too-big", instance_count=2))

    [message] = refused.value.errors["configs.0.flavor"]
    assert "an instance needs 1.05 vCPUs and 544 MiB (with the system overhead)" in message
    assert "1 of its 2 instances fit" in message
    assert not Service.objects.exists()


def test_the_wizard_greys_out_a_specification_the_pool_has_no_room_for(tight_pool, owner, enqueued):
    service_create(owner=owner, request=deploy_request(owner, "first"))

    option = next(o for o in flavor_options_for_pool(tight_pool) if o.flavor.code == "cpu.1u512m")

    assert option.is_available is False
    assert option.reason == (
        "pool tight is full: 0.95 vCPU and 7648 MiB free on its roomiest engine, 1.05 vCPU and 544 MiB needed"
    )


def test_the_vcpu_quota_counts_public_pools_in_every_status_and_holds_at_once(
    db, flavors, owner, pool, enqueued, settings
):
    settings.QUOTA_VCPUS = 3
    make_service(owner, pool, version=make_version(owner), name="stopped-one", status="stopped")
    requests = [deploy_request(owner, f"svc-{n}", pool="public-cpu") for n in range(5)]

    outcomes = at_once([lambda request=request: service_create(owner=owner, request=request) for request in requests])

    # The Stopped service holds 1 of the 3 vCPUs; 2 more fit.
    assert outcomes.count("created") == 2
    assert all(
        o.startswith("vCPU quota exceeded: this needs 1 vCPUs and 0 of your 3") for o in outcomes if o != "created"
    )
    assert holding_of(owner).vcpus == Decimal(3)


def test_a_dedicated_pool_takes_no_quota_per_service(db, flavors, owner, enqueued, settings):
    settings.QUOTA_VCPUS = 1
    dedicated = make_pool("mine", owner=owner, local_node=None, overcommit=16)
    add_node(dedicated, "mine-1", cpus=1)

    for n in range(3):
        service_create(owner=owner, request=deploy_request(owner, f"svc-{n}", pool="mine"))

    # The node's 1 vCPU is what the pool takes, whatever runs on it.
    assert holding_of(owner).vcpus == Decimal(1)


def test_staff_raise_one_users_service_and_instance_limits(db, flavors, owner, pool, enqueued, settings):
    settings.MAX_SERVICES_PER_USER = 1
    settings.MAX_INSTANCES_PER_USER = 2
    service_create(owner=owner, request=deploy_request(owner, "one", pool="public-cpu"))

    with pytest.raises(RequestInvalid) as refused:
        service_create(owner=owner, request=deploy_request(owner, "two", pool="public-cpu"))
    assert refused.value.errors["__all__"][0].startswith("You already have 1 services")

    UserQuota.objects.create(user=owner, max_services=3, max_instances=3)
    service_create(owner=owner, request=deploy_request(owner, "two", pool="public-cpu"))
    with pytest.raises(RequestInvalid) as refused:
        service_create(owner=owner, request=deploy_request(owner, "three", pool="public-cpu", instance_count=2))
    assert "would have 4 instances; a user may have at most 3 (2 now)" in refused.value.errors["__all__"][0]
    assert Service.objects.filter(owner=owner).count() == 2


def test_in_a_full_pool_new_ratios_pass_and_new_instances_are_refused(tight_pool, owner, enqueued):
    service = service_create(owner=owner, request=deploy_request(owner, "svc"))
    Service.objects.filter(id=service.id).update(status="running")
    service.refresh_from_db()
    version = service.configs.get().app_version

    def rows(**change):
        row = {"app_version": version.id, "flavor": "cpu.1u512m", "instance_count": 1, "weight": 100, "envs": {}}
        return {"configs": [{**row, **change}]}

    # What runs already keeps its specification, however full the pool: a
    # change of the description and ratios goes through.
    unchanged = parse_update_request(service=service, data={**rows(), "description": "still fits"})
    assert service_update(service=service, request=unchanged) is not None
    # A new instance needs room the pool does not have.
    with pytest.raises(RequestInvalid) as refused:
        service_update(service=service, request=parse_update_request(service=service, data=rows(instance_count=2)))

    assert refused.value.errors["configs.0.flavor"][0].startswith("Pool tight is full for cpu.1u512m")
    service.refresh_from_db()
    assert service.status == "running"
    assert service.description == "still fits"
    assert list(service.configs.values_list("instance_count", flat=True)) == [1]
    assert Instance.objects.filter(service=service).count() == 1


def test_the_quotas_page_shows_use_against_each_limit(client, owner, pool, flavors, enqueued):
    UserQuota.objects.create(user=owner, vcpus=10)
    service_create(owner=owner, request=deploy_request(owner, "svc", pool="public-cpu", instance_count=2))
    client.force_login(owner)

    text = client.get("/quotas/").content.decode()

    assert "<strong>2</strong> / 10" in text  # vCPUs
    assert "<strong>1</strong> / 20" in text  # services
    assert 'svc <span class="muted small">service</span>' in text


def test_a_node_of_an_engine_that_does_not_answer_takes_no_new_instance(db, flavors, owner, enqueued):
    pool = make_pool("two", local_node=None, overcommit=1)
    add_node(pool, "up", cpus=4)
    down = add_node(pool, "down", cpus=64, is_reachable=False)

    service = service_create(owner=owner, request=deploy_request(owner, "svc", pool="two", instance_count=3))

    assert not Instance.objects.filter(service=service, node=down).exists()
    assert Node.objects.get(id=down.id).instances.count() == 0


def test_the_wizard_says_what_a_deploy_takes_from_the_pool_and_the_quota(client, owner, pool, flavors, enqueued):
    UserQuota.objects.create(user=owner, vcpus=3)
    service_create(owner=owner, request=deploy_request(owner, "svc", pool="public-cpu"))
    client.force_login(owner)
    query = {
        "pool": pool.id,
        "rows": ["", "r2-"],
        "flavor": "cpu.1u512m",
        "instance_count": "2",
        "r2-flavor": "cpu.1u512m",
    }

    text = client.get("/services/deploy/estimate/", query).content.decode()

    # 3 instances of 1 vCPU and 512 MiB, each with 0.05 vCPU and 32 MiB of overhead.
    assert "This deploy takes <strong>3 instances: 3.15 vCPU and 1632 MiB</strong> from pool public-cpu" in text
    assert "(30.95 of 32 vCPU free now)" in text
    assert (
        '<strong>3 vCPU</strong> of your quota (1 of 3 used now: <span class="reason">over your quota</span>)' in text
    )
