"""Which pools a user sees, which flavors a pool can run (and why not), and
where an instance is placed."""

import pytest

from pools.models import Flavor, ResourcePool
from pools.selectors import flavor_options_for_pool, pool_list_for
from tests.factories import add_node

pytestmark = pytest.mark.django_db


def options_by_code(pool) -> dict:
    return {option.flavor.code: option for option in flavor_options_for_pool(pool)}


# --- flavor_options_for_pool ----------------------------------------------------------


def test_flavor_that_fits_a_node_is_available(pool, flavors):
    option = options_by_code(pool)["cpu.1u512m"]

    assert option.is_available is True
    assert option.reason == ""


def test_every_flavor_is_offered_in_sort_order(pool, flavors):
    assert [option.flavor.code for option in flavor_options_for_pool(pool)] == [
        "cpu.1u1g.free",
        "cpu.1u512m",
        "cpu.64u8g",
        "gpu.1p",
    ]


def test_flavor_with_more_cpus_than_any_node_is_unavailable_with_the_largest_node(pool, flavors):
    option = options_by_code(pool)["cpu.64u8g"]

    assert option.is_available is False
    assert option.reason == "needs 64 vCPUs; the largest engine in pool public-cpu has 2"


def test_cpu_reason_prints_round_numbers_plainly(pool, flavors):
    # Decimal("10.00").normalize() is 1E+1: the reason must not say "1E+1 vCPUs".
    Flavor.objects.create(code="cpu.10u", display_name="CPU: 10 vCPUs", cpus=10, memory_mib=1024)
    Flavor.objects.create(code="cpu.2.5u", display_name="CPU: 2.5 vCPUs", cpus="2.50", memory_mib=1024)

    options = options_by_code(pool)

    assert options["cpu.10u"].reason == "needs 10 vCPUs; the largest engine in pool public-cpu has 2"
    assert options["cpu.2.5u"].reason == "needs 2.5 vCPUs; the largest engine in pool public-cpu has 2"


def test_flavor_with_more_memory_than_any_node_names_both_sizes(pool, flavors):
    Flavor.objects.create(code="cpu.1u16g", display_name="CPU: 1 vCPU | 16 GiB", cpus=1, memory_mib=16384)

    option = options_by_code(pool)["cpu.1u16g"]

    assert option.is_available is False
    assert option.reason == "needs 16 GiB memory; the largest engine in pool public-cpu has 8 GiB"


def test_memory_reason_does_not_round_sizes_below_a_gibibyte_to_zero(db, flavors):
    small = ResourcePool.objects.create(name="tiny", is_public=True)
    add_node(small, "tiny-1", cpus=2, memory_mib=256)

    option = options_by_code(small)["cpu.1u512m"]

    assert option.is_available is False
    assert option.reason == "needs 512 MiB memory; the largest engine in pool tiny has 256 MiB"


def test_gpu_flavor_is_unavailable_when_no_node_has_gpus(pool, flavors):
    option = options_by_code(pool)["gpu.1p"]

    assert option.is_available is False
    assert option.reason == "no engine in pool public-cpu has GPUs"


def test_gpu_flavor_needing_more_gpus_than_any_node_says_so(pool, flavors):
    add_node(pool, "gpu-1", gpus=1)
    Flavor.objects.create(code="gpu.2p", display_name="GPU: 2 x GPU", cpus=1, memory_mib=1024, gpus=2)

    options = options_by_code(pool)

    assert options["gpu.1p"].is_available is True
    assert options["gpu.2p"].is_available is False
    assert options["gpu.2p"].reason == "needs 2 GPUs; no engine in pool public-cpu has that many"


def test_flavor_needing_cpu_and_gpu_on_one_node_is_unavailable_when_split_over_nodes(pool, flavors):
    add_node(pool, "gpu-small", cpus=1, memory_mib=2048, gpus=1)
    Flavor.objects.create(code="gpu.2u", display_name="GPU: 2 vCPUs + GPU", cpus=2, memory_mib=1024, gpus=1)

    option = options_by_code(pool)["gpu.2u"]

    assert option.is_available is False
    assert option.reason == "no single engine in pool public-cpu has enough CPU, memory and GPUs together"


@pytest.mark.parametrize(("is_reachable", "is_enabled"), [(False, True), (True, False)])
def test_no_flavor_is_available_when_no_node_is_usable(pool, flavors, is_reachable, is_enabled):
    pool.nodes.update(is_reachable=is_reachable, is_enabled=is_enabled)

    options = flavor_options_for_pool(pool)

    assert len(options) == 4
    for option in options:
        assert option.is_available is False
        assert option.reason == "no engine in pool public-cpu is reachable"


def test_unusable_large_node_does_not_make_a_flavor_available(pool, flavors):
    add_node(pool, "big-down", cpus=64, memory_mib=65536, is_reachable=False)
    add_node(pool, "big-off", cpus=64, memory_mib=65536, is_enabled=False)

    option = options_by_code(pool)["cpu.64u8g"]

    assert option.is_available is False
    assert option.reason == "needs 64 vCPUs; the largest engine in pool public-cpu has 2"


def test_no_pool_makes_every_flavor_unavailable(flavors):
    options = flavor_options_for_pool(None)

    assert len(options) == 4
    assert {(option.is_available, option.reason) for option in options} == {(False, "no resource pool is selected")}


# --- pool_list_for ---------------------------------------------------------------------


def test_pool_list_shows_public_pools_and_the_users_dedicated_pools_only(owner, other_user, pool):
    mine = ResourcePool.objects.create(name="mine", is_public=False, owner=owner)
    ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)
    second_public = ResourcePool.objects.create(name="another-public", is_public=True)

    assert list(pool_list_for(owner)) == [second_public, pool, mine]


def test_pool_list_of_another_user_excludes_my_dedicated_pool(owner, other_user, pool):
    ResourcePool.objects.create(name="mine", is_public=False, owner=owner)

    assert list(pool_list_for(other_user)) == [pool]
