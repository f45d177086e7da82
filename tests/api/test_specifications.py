"""GET /services/specifications: every flavor, available or not on a pool,
with the reason the Deploy wizard shows."""

import pytest

from pools.models import Node, ResourcePool
from pools.selectors import flavor_options_for_pool

pytestmark = pytest.mark.django_db


def by_code(response) -> dict[str, dict]:
    return {spec["specification"]: spec for spec in response.json()["specifications"]}


def test_specifications_default_to_the_first_public_pool(api, pool, flavors):
    ResourcePool.objects.create(name="zz-public", is_public=True)  # no engines: nothing would be available

    response = api.get("/services/specifications")

    assert response.status_code == 200
    body = response.json()
    assert body["pool_name"] == "public-cpu"
    codes = [s["specification"] for s in body["specifications"]]
    assert codes == ["cpu.1u1g.free", "cpu.1u512m", "cpu.64u8g", "gpu.1p"]
    assert body["specifications"][1] == {
        "specification": "cpu.1u512m",
        "display_en": "CPU: 1 vCPU | 512 MiB",
        "cpu": 1.0,
        "memory": 512,
        "gpu": 0,
        "is_free": False,
        "spec_status": "available",
        "reason": "",
    }


def test_unavailable_specifications_carry_the_wizards_reason(api, pool, flavors):
    specs = by_code(api.get("/services/specifications"))

    assert (specs["cpu.64u8g"]["spec_status"], specs["cpu.64u8g"]["reason"]) == (
        "unavailable",
        "needs 64 vCPUs; the largest engine in pool public-cpu has 2",
    )
    assert (specs["gpu.1p"]["spec_status"], specs["gpu.1p"]["reason"]) == (
        "unavailable",
        "no engine in pool public-cpu has GPUs",
    )
    assert specs["gpu.1p"]["gpu"] == 1
    assert specs["cpu.1u1g.free"]["is_free"] is True
    wizard = {o.flavor.code: (o.is_available, o.reason) for o in flavor_options_for_pool(pool)}
    assert {code: (s["spec_status"] == "available", s["reason"]) for code, s in specs.items()} == wizard


def test_specifications_for_a_named_pool(api, owner, pool, flavors):
    gpu_pool = ResourcePool.objects.create(name="gpu-pool", is_public=False, owner=owner)
    Node.objects.create(
        pool=gpu_pool,
        name="gpu-1",
        docker_host="unix:///x",
        # 64 vCPUs for the flavor and a little for the system overhead.
        cpu_count=65,
        memory_mib=65536,
        gpu_count=1,
        is_reachable=True,
    )

    response = api.get("/services/specifications", {"pool_name": "gpu-pool"})

    assert response.json()["pool_name"] == "gpu-pool"
    assert {code: s["spec_status"] for code, s in by_code(response).items()} == {
        "cpu.1u1g.free": "available",
        "cpu.1u512m": "available",
        "cpu.64u8g": "available",
        "gpu.1p": "available",
    }


def test_specifications_of_a_pool_without_reachable_engines_are_all_unavailable(api, pool, flavors):
    Node.objects.update(is_reachable=False)

    specs = by_code(api.get("/services/specifications"))

    assert {s["reason"] for s in specs.values()} == {"no engine in pool public-cpu is reachable"}
    assert {s["spec_status"] for s in specs.values()} == {"unavailable"}


def test_specifications_without_any_public_pool_say_no_pool_is_selected(api, flavors):
    response = api.get("/services/specifications")

    assert response.status_code == 200
    assert response.json()["pool_name"] is None
    assert {s["reason"] for s in response.json()["specifications"]} == {"no resource pool is selected"}


@pytest.mark.parametrize("pool_name", ["nowhere", "their-pool"])
def test_specifications_of_an_unknown_or_another_users_pool_are_404(api, other_user, pool, flavors, pool_name):
    ResourcePool.objects.create(name="their-pool", is_public=False, owner=other_user)

    response = api.get("/services/specifications", {"pool_name": pool_name})

    assert response.status_code == 404
    assert response.json() == {
        "error_code": "RTS.4040",
        "error_msg": f"Resource pool {pool_name} does not exist or is not yours.",
    }
