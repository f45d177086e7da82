"""Pool accounting: what a node can give (its engine times the pool's
overcommit), what its instances take (flavor plus overhead), and what is left;
and the pool settings the deploy wizard reads (flavors offered)."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from pools.models import ResourcePool
from pools.selectors import (
    Resources,
    flavor_options_for_pool,
    instance_need,
    node_capacity_list,
    pool_detail,
    pool_summary_list,
    usage_sum,
)
from services.choices import InstanceState, ServiceStatus
from tests.factories import add_node, make_pool, make_service, make_version, place_instance

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def overhead(settings):
    settings.INSTANCE_OVERHEAD_CPUS = 0.05
    settings.INSTANCE_OVERHEAD_MEMORY_MIB = 32


@pytest.fixture
def overcommitted(db):
    """A pool selling 8x its CPU and 4x its memory, with a 2-CPU, 8 GiB node and
    a 4-CPU, 16 GiB node with 2 GPUs."""
    pool = make_pool("over", local_node=None)
    pool.cpu_overcommit, pool.memory_overcommit = Decimal(8), Decimal(4)
    pool.save()
    add_node(pool, "small", cpus=2, memory_mib=8192)
    add_node(pool, "big", cpus=4, memory_mib=16384, gpus=2)
    return pool


def by_name(capacities) -> dict:
    return {capacity.node.name: capacity for capacity in capacities}


def test_a_node_without_instances_offers_its_engine_times_the_overcommit(overcommitted):
    small = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))["small"]

    assert small.total == Resources(cpus=Decimal(16), memory_mib=32768, gpus=0)
    assert small.used == Resources()
    assert small.free == small.total
    assert small.instance_count == 0


def test_gpus_are_never_overcommitted(overcommitted):
    big = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))["big"]

    assert big.total.gpus == 2


def test_each_instance_takes_its_flavor_plus_the_overhead(overcommitted, owner, flavors):
    version = make_version(owner)
    small_node, big_node = overcommitted.nodes.get(name="small"), overcommitted.nodes.get(name="big")
    two = make_service(owner, overcommitted, version=version, flavor=flavors["small"], name="two", instance_count=2)
    place_instance(two, small_node, index=0)
    place_instance(two, small_node, index=1)
    gpu = make_service(owner, overcommitted, version=version, flavor=flavors["gpu"], name="gpu")
    place_instance(gpu, big_node)

    capacities = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))

    # cpu.1u512m twice: 2 x (1 + 0.05) vCPU, 2 x (512 + 32) MiB.
    assert capacities["small"].used == Resources(cpus=Decimal("2.10"), memory_mib=1088, gpus=0)
    assert capacities["small"].free == Resources(cpus=Decimal("13.90"), memory_mib=31680, gpus=0)
    assert capacities["small"].instance_count == 2
    # gpu.1p: 1 vCPU, 1 GiB, 1 GPU.
    assert capacities["big"].used == Resources(cpus=Decimal("1.05"), memory_mib=1056, gpus=1)
    assert capacities["big"].free.gpus == 1


def test_the_overhead_follows_its_settings(overcommitted, owner, flavors, settings):
    settings.INSTANCE_OVERHEAD_CPUS = 0.25
    settings.INSTANCE_OVERHEAD_MEMORY_MIB = 100
    service = make_service(owner, overcommitted, version=make_version(owner), flavor=flavors["small"])
    place_instance(service, overcommitted.nodes.get(name="small"))

    small = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))["small"]

    assert small.used == Resources(cpus=Decimal("1.25"), memory_mib=612, gpus=0)
    assert instance_need(flavors["small"]) == Resources(cpus=Decimal("1.25"), memory_mib=612, gpus=0)


@pytest.mark.parametrize("status", [ServiceStatus.STOPPED, ServiceStatus.FAILED, ServiceStatus.DEPLOYING])
def test_instances_hold_their_place_in_every_state(overcommitted, owner, flavors, status):
    service = make_service(owner, overcommitted, version=make_version(owner), flavor=flavors["small"], status=status)
    place_instance(service, overcommitted.nodes.get(name="small"), state=InstanceState.STOPPED)

    small = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))["small"]

    assert small.used.cpus == Decimal("1.05")


def test_memory_overcommit_rounds_down_to_whole_mib(db):
    pool = make_pool("frac", local_node=None)
    pool.cpu_overcommit, pool.memory_overcommit = Decimal("1.5"), Decimal("1.25")
    pool.save()
    add_node(pool, "odd", cpus=3, memory_mib=1001)

    (odd,) = node_capacity_list(pool.nodes.all(), pool)

    assert odd.total == Resources(cpus=Decimal("4.5"), memory_mib=1251, gpus=0)


def test_a_node_holding_more_than_it_has_shows_as_over_with_negative_free_room(overcommitted, owner, flavors):
    big = make_service(
        owner, overcommitted, version=make_version(owner), flavor=flavors["big"], name="huge", instance_count=1
    )
    place_instance(big, overcommitted.nodes.get(name="small"))

    small = by_name(node_capacity_list(overcommitted.nodes.all(), overcommitted))["small"]

    # cpu.64u8g on 2 CPUs x 8: 64.05 used of 16.
    assert small.free.cpus == Decimal("-48.05")
    assert small.is_cpu_over and small.cpu_percent == 100
    assert not small.is_memory_over and small.memory_percent == 25  # 8224 of 32768 MiB


def test_capacity_of_many_nodes_takes_one_query(overcommitted, owner, flavors, django_assert_num_queries):
    version = make_version(owner)
    for number in range(5):
        node = add_node(overcommitted, f"extra-{number}")
        service = make_service(owner, overcommitted, version=version, flavor=flavors["small"], name=f"s{number}")
        place_instance(service, node)
    nodes = list(overcommitted.nodes.all())

    with django_assert_num_queries(1):
        capacities = node_capacity_list(nodes, overcommitted)

    assert len(capacities) == 7


def test_each_nodes_own_pool_gives_its_ratios_when_no_pool_is_named(overcommitted, db):
    plain = make_pool("plain", local_node=None)
    add_node(plain, "plain-1", cpus=2, memory_mib=1024)
    nodes = list(overcommitted.nodes.select_related("pool")) + list(plain.nodes.select_related("pool"))

    capacities = by_name(node_capacity_list(nodes))

    assert capacities["small"].total.cpus == 16
    assert capacities["plain-1"].total == Resources(cpus=Decimal(2), memory_mib=1024, gpus=0)


def test_a_pools_total_leaves_its_disabled_nodes_out(overcommitted):
    overcommitted.nodes.filter(name="big").update(is_enabled=False)

    usage = usage_sum(node_capacity_list(overcommitted.nodes.all(), overcommitted))

    assert usage.total == Resources(cpus=Decimal(16), memory_mib=32768, gpus=0)


def test_the_pool_summaries_take_the_same_queries_for_one_pool_or_many(
    overcommitted, owner, flavors, django_assert_max_num_queries
):
    version = make_version(owner)
    service = make_service(owner, overcommitted, version=version, flavor=flavors["small"])
    place_instance(service, overcommitted.nodes.get(name="small"))
    with django_assert_max_num_queries(4):
        assert len(pool_summary_list()) == 1

    for number in range(4):
        pool = make_pool(f"more-{number}", local_node=None)
        add_node(pool, f"more-node-{number}")
        place_instance(make_service(owner, pool, version=version, name=f"m{number}"), pool.nodes.get())
    with django_assert_max_num_queries(4):
        summaries = {summary.pool.name: summary for summary in pool_summary_list()}

    assert summaries["over"].service_count == 1
    assert summaries["over"].usage.used.cpus == Decimal("1.05")
    assert summaries["more-0"].usage.used.cpus == Decimal("1.05")


def test_the_detail_gives_each_placed_instance_its_share_of_the_node(overcommitted, owner, flavors):
    service = make_service(owner, overcommitted, version=make_version(owner), flavor=flavors["small"])
    place_instance(service, overcommitted.nodes.get(name="small"))

    detail = pool_detail(overcommitted)

    small = next(row for row in detail.nodes if row.node.name == "small")
    (placed,) = small.instances
    assert placed.cpu_percent == Decimal("1.05") * 100 / 16
    assert placed.label == "svc-one #0 (owner): 1.05 vCPU, 544 MiB"
    assert [s.name for s in detail.services] == ["svc-one"]


# --- The pool's settings in the database ------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("cpu_overcommit", "0.99"), ("memory_overcommit", "16.01")])
def test_the_database_refuses_an_overcommit_out_of_range(db, field, value):
    with pytest.raises(IntegrityError), transaction.atomic():
        ResourcePool.objects.create(name="bad", **{field: Decimal(value)})


def test_a_new_pool_overcommits_nothing_and_offers_every_flavor(db):
    pool = ResourcePool.objects.create(name="fresh")

    assert (pool.cpu_overcommit, pool.memory_overcommit, pool.offers_every_flavor) == (1, 1, True)


# --- Flavors offered, as the deploy wizard sees them ---------------------------------------


def test_a_pool_offering_every_flavor_greys_out_none_for_that_reason(pool, flavors):
    reasons = {option.flavor.code: option.reason for option in flavor_options_for_pool(pool)}

    assert "not offered" not in " ".join(reasons.values())


def test_a_flavor_the_pool_does_not_offer_is_unavailable_with_the_reason(pool, flavors):
    pool.offers_every_flavor = False
    pool.save()
    pool.flavors.set([flavors["small"]])

    options = {option.flavor.code: option for option in flavor_options_for_pool(pool)}

    assert options["cpu.1u512m"].is_available is True
    assert options["cpu.1u1g.free"].is_available is False
    assert options["cpu.1u1g.free"].reason == "not offered in pool public-cpu"
