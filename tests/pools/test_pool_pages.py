"""The operators' pool pages: staff only (everyone else gets 404 on every URL),
pools created, edited and deleted, nodes added from a real engine, changed and
removed; every bad input a message on its field and nothing stored."""

from decimal import Decimal

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from pools.models import Node, ResourcePool
from pools.quotas import holding_of
from services import runtime
from services.choices import ServiceStatus
from tests.factories import add_node, make_pool, make_service, make_staff, make_user, make_version, place_instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db):
    return make_staff("operator")


@pytest.fixture
def staff_client(operator):
    # A client of its own: owner_client signs the `client` fixture in as the owner.
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def gpu_pool(db):
    """An empty public pool with one made-up node, for pages that must not touch an engine."""
    pool = make_pool("gpu-pool", local_node=None)
    add_node(pool, "gpu-1", cpus=8, memory_mib=32768, gpus=2)
    return pool


# A dedicated Swarm pool's form, short of its manager URL.
SWARM_DEDICATED = {"kind": "swarm", "access": "dedicated", "owner": "owner"}


def pool_form(**changes) -> dict:
    return {
        "name": "batch",
        "description": "Batch scoring",
        "access": "public",
        "owner": "",
        "cpu_overcommit": "2",
        "memory_overcommit": "1.5",
        "flavor_choice": "every",
        "kind": "engines",
        **changes,
    }


def page_of(response) -> str:
    return response.content.decode()


# --- Staff only, on every URL ------------------------------------------------------------


def urls_of(pool: ResourcePool) -> list[tuple[str, str]]:
    node = pool.nodes.get()
    return [
        ("get", "/pools/"),
        ("get", "/pools/new/"),
        ("post", "/pools/new/"),
        ("get", f"/pools/{pool.id}/"),
        ("get", f"/pools/{pool.id}/edit/"),
        ("post", f"/pools/{pool.id}/edit/"),
        ("post", f"/pools/{pool.id}/delete/"),
        ("get", f"/pools/{pool.id}/nodes/new/"),
        ("post", f"/pools/{pool.id}/nodes/new/"),
        ("get", f"/pools/nodes/{node.id}/edit/"),
        ("post", f"/pools/nodes/{node.id}/edit/"),
        ("post", f"/pools/nodes/{node.id}/remove/"),
    ]


def test_an_ordinary_user_gets_404_on_every_pool_url_and_changes_nothing(owner_client, gpu_pool):
    for method, url in urls_of(gpu_pool):
        data = {**pool_form(name="stolen"), "docker_host": settings.DOCKER_HOST, "gpu_count": "9"}
        response = getattr(owner_client, method)(url, data) if method == "post" else owner_client.get(url)
        assert response.status_code == 404, (method, url)

    assert list(ResourcePool.objects.values_list("name", flat=True)) == ["gpu-pool"]
    assert list(Node.objects.values_list("name", "gpu_count")) == [("gpu-1", 2)]


def test_a_visitor_who_is_not_signed_in_is_sent_to_the_login_page(client, gpu_pool):
    for method, url in urls_of(gpu_pool):
        response = getattr(client, method)(url)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith("/login/?next="), (method, url)
    assert ResourcePool.objects.count() == 1


def test_an_operator_opens_every_page(staff_client, gpu_pool):
    for method, url in urls_of(gpu_pool):
        if method == "get":
            assert staff_client.get(url).status_code == 200, url


@pytest.mark.parametrize("url", ["/pools/{pool}/delete/", "/pools/nodes/{node}/remove/"])
def test_deletes_take_post_only(staff_client, gpu_pool, url):
    response = staff_client.get(url.format(pool=gpu_pool.id, node=gpu_pool.nodes.get().id))

    assert response.status_code == 405
    assert ResourcePool.objects.filter(id=gpu_pool.id).exists() and Node.objects.exists()


def test_an_unknown_pool_or_node_is_404_for_staff_too(staff_client, db):
    assert staff_client.get("/pools/999999/").status_code == 404
    assert staff_client.get("/pools/nodes/999999/edit/").status_code == 404
    # Beyond the database's bigint: still a 404, not a 500.
    assert staff_client.get(f"/pools/{'9' * 30}/").status_code == 404
    assert staff_client.post(f"/pools/nodes/{'9' * 30}/remove/").status_code == 404


def test_forms_post_only_with_the_csrf_token(operator, gpu_pool):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.post("/pools/new/", pool_form()).status_code == 403
    assert client.post(f"/pools/{gpu_pool.id}/delete/").status_code == 403
    assert not ResourcePool.objects.filter(name="batch").exists()
    assert 'name="csrfmiddlewaretoken"' in page_of(client.get("/pools/new/"))


def test_the_pools_link_is_in_the_navigation_for_staff_only(staff_client, owner_client, operator):
    assert 'href="/pools/"' in page_of(staff_client.get("/"))
    assert 'href="/pools/"' not in page_of(owner_client.get("/"))


# --- The list -----------------------------------------------------------------------------


def test_the_list_shows_each_pool_with_owner_nodes_capacity_and_services(staff_client, gpu_pool, owner, flavors):
    dedicated = make_pool("alice-pool", owner=owner, local_node=None)
    dedicated.cpu_overcommit = Decimal(4)
    dedicated.save()
    node = add_node(dedicated, "alice-1", cpus=2, memory_mib=4096)
    service = make_service(owner, dedicated, version=make_version(owner), flavor=flavors["small"])
    place_instance(service, node)

    page = page_of(staff_client.get("/pools/"))

    assert "gpu-pool" in page and "alice-pool" in page
    alice_row = page[page.index(f'id="pool-{dedicated.id}"') :]
    alice_row = alice_row[: alice_row.index("</tr>")]
    assert "Dedicated" in alice_row and "owner" in alice_row
    assert "1.05 / 8 vCPU" in alice_row  # 2 CPUs x 4
    assert "544 MiB / 4 GiB" in alice_row
    assert '<td class="services-cell">1</td>' in alice_row
    gpu_row = page[page.index(f'id="pool-{gpu_pool.id}"') :]
    assert "0 / 8 vCPU" in gpu_row[: gpu_row.index("</tr>")]


def test_the_list_takes_the_same_queries_for_one_pool_or_many(staff_client, gpu_pool, django_assert_max_num_queries):
    with django_assert_max_num_queries(8) as one:
        staff_client.get("/pools/")
    for number in range(5):
        add_node(make_pool(f"many-{number}", local_node=None), f"many-node-{number}")
    with django_assert_max_num_queries(len(one.captured_queries)):
        staff_client.get("/pools/")


# --- Create and edit ------------------------------------------------------------------------


def test_an_operator_creates_a_public_pool(staff_client, flavors):
    response = staff_client.post("/pools/new/", pool_form())

    pool = ResourcePool.objects.get(name="batch")
    assert response.status_code == 302 and response["Location"] == f"/pools/{pool.id}/"
    assert (pool.description, pool.is_public, pool.owner) == ("Batch scoring", True, None)
    assert (pool.cpu_overcommit, pool.memory_overcommit) == (Decimal(2), Decimal("1.5"))
    assert pool.offers_every_flavor and not pool.flavors.exists()


def test_an_operator_creates_a_dedicated_pool_offering_chosen_flavors(staff_client, owner, flavors):
    chosen = [flavors["small"].id, flavors["gpu"].id]
    response = staff_client.post(
        "/pools/new/", pool_form(access="dedicated", owner="owner", flavor_choice="chosen", flavors=chosen)
    )

    assert response.status_code == 302
    pool = ResourcePool.objects.get(name="batch")
    assert (pool.is_public, pool.owner) == (False, owner)
    assert not pool.offers_every_flavor
    assert sorted(pool.flavors.values_list("id", flat=True)) == sorted(chosen)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"name": ""}, "name", "Enter a name for the pool."),
        ({"name": "has space"}, "name", "may contain only letters, digits, hyphens and underscores"),
        ({"name": "x" * 65}, "name", "at most 64 characters (it has 65)"),
        ({"description": "d" * 201}, "description", "at most 200 characters (it has 201)"),
        ({"access": "dedicated"}, "owner", "A dedicated pool needs an owner"),
        ({"access": "dedicated", "owner": "nobody"}, "owner", "There is no active user named “nobody”."),
        ({"owner": "owner"}, "owner", "A public pool is offered to every user and has no owner"),
        ({"access": "secret"}, "access", "Choose Public (every user) or Dedicated (one user)."),
        ({"flavor_choice": "chosen"}, "flavors", "Choose at least one flavor to offer, or offer every flavor."),
        ({"flavor_choice": "chosen", "flavors": ["999999"]}, "flavors", "A chosen flavor does not exist"),
        ({"flavor_choice": "chosen", "flavors": ["x"]}, "flavors", "A chosen flavor does not exist"),
        ({"flavor_choice": "chosen", "flavors": ["²"]}, "flavors", "A chosen flavor does not exist"),
        ({"flavor_choice": "chosen", "flavors": ["9" * 30]}, "flavors", "A chosen flavor does not exist"),
        ({"flavor_choice": ""}, "flavors", "Choose whether the pool offers every flavor"),
        ({"kind": ""}, "kind", "Choose Docker engines (nodes added one by one) or Docker Swarm"),
        ({"kind": "kubernetes"}, "kind", "Choose Docker engines (nodes added one by one) or Docker Swarm"),
        (SWARM_DEDICATED, "manager_url", "Enter the Swarm manager"),
        (
            {**SWARM_DEDICATED, "manager_url": "http://10.0.0.5"},
            "manager_url",
            "must start with unix://, tcp:// or ssh://",
        ),
        ({"manager_url": "tcp://10.0.0.5:2376"}, "manager_url", "Only a Swarm pool has a manager URL"),
        (
            {**SWARM_DEDICATED, "manager_url": "unix:///var/run/rts-no-such-manager.sock"},
            "manager_url",
            "Nothing was saved: check the URL and that it is a manager of a swarm",
        ),
    ],
)
def test_a_bad_pool_form_says_what_is_wrong_on_its_field_and_stores_nothing(
    staff_client, owner, flavors, changes, field, message
):
    response = staff_client.post("/pools/new/", pool_form(**changes))

    assert response.status_code == 400
    page = page_of(response)
    assert message in page
    # The message sits under its field, which is marked invalid.
    extra_class = {"owner": " owner-field", "manager_url": " manager-field"}.get(field, "")
    assert f'<div class="field{extra_class} invalid">' in page
    assert "Nothing was saved" in page
    assert not ResourcePool.objects.exists()


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("0.5", "0.5 is out of that range."),
        ("0", "0 is out of that range."),
        ("-2", "-2 is out of that range."),
        ("16.5", "16.5 is out of that range."),
        ("1e9", "1e9 is out of that range."),
        ("NaN", "NaN is out of that range."),
        ("Infinity", "Infinity is out of that range."),
        ("", "Enter a number such as 1.0, 1.5 or 8."),
        ("eight", "Enter a number such as 1.0, 1.5 or 8."),
        ("1.234", "may have at most two decimals, e.g. 1.25."),
    ],
)
@pytest.mark.parametrize(("field", "label"), [("cpu_overcommit", "CPU"), ("memory_overcommit", "Memory")])
def test_a_bad_overcommit_names_its_field_and_the_rule(staff_client, gpu_pool, field, label, value, rule):
    before = (gpu_pool.cpu_overcommit, gpu_pool.memory_overcommit)

    created = staff_client.post("/pools/new/", pool_form(**{field: value}))
    edited = staff_client.post(f"/pools/{gpu_pool.id}/edit/", pool_form(name="gpu-pool", **{field: value}))

    for response in (created, edited):
        assert response.status_code == 400
        page = page_of(response)
        assert f'<label for="id_{field}">{label} overcommit</label>' in page
        if "decimals" in rule:
            assert f"{label} overcommit {rule}" in page
        else:
            assert f"{label} overcommit must be from 1.0 (none) to 16.0. {rule}" in page
    gpu_pool.refresh_from_db()
    assert (gpu_pool.cpu_overcommit, gpu_pool.memory_overcommit) == before
    assert not ResourcePool.objects.filter(name="batch").exists()


def test_a_name_in_use_is_refused_on_the_name(staff_client, gpu_pool):
    response = staff_client.post("/pools/new/", pool_form(name="gpu-pool"))

    assert response.status_code == 400
    assert "A pool named gpu-pool exists already; choose another name." in page_of(response)
    assert ResourcePool.objects.count() == 1


def test_the_edit_form_shows_the_pool_as_it_is(staff_client, owner, flavors):
    pool = make_pool("alice-pool", owner=owner, local_node=None)
    pool.cpu_overcommit, pool.offers_every_flavor = Decimal(8), False
    pool.save()
    pool.flavors.set([flavors["gpu"]])

    page = page_of(staff_client.get(f"/pools/{pool.id}/edit/"))

    assert 'value="alice-pool"' in page and 'value="owner"' in page
    assert 'name="access" value="dedicated" checked' in page
    assert 'name="cpu_overcommit" type="number" step="0.01" min="1.0" max="16.0" value="8.0"' in page
    assert f'name="flavors" value="{flavors["gpu"].id}" checked' in page
    assert f'name="flavors" value="{flavors["small"].id}" >' in page


def test_an_operator_edits_a_pool(staff_client, gpu_pool, owner, flavors):
    response = staff_client.post(
        f"/pools/{gpu_pool.id}/edit/",
        pool_form(
            name="gpu-a100",
            access="dedicated",
            owner="owner",
            cpu_overcommit="1.25",
            memory_overcommit="1",
            flavor_choice="chosen",
            flavors=[flavors["gpu"].id],
        ),
    )

    assert response.status_code == 302
    gpu_pool.refresh_from_db()
    assert (gpu_pool.name, gpu_pool.is_public, gpu_pool.owner) == ("gpu-a100", False, owner)
    assert (gpu_pool.cpu_overcommit, gpu_pool.memory_overcommit) == (Decimal("1.25"), Decimal(1))
    assert list(gpu_pool.flavors.all()) == [flavors["gpu"]]


def test_a_pool_is_dedicated_to_a_user_only_if_its_services_are_all_theirs(
    staff_client, gpu_pool, owner, other_user, flavors
):
    make_service(other_user, gpu_pool, name="ocr-invoices")

    response = staff_client.post(
        f"/pools/{gpu_pool.id}/edit/", pool_form(name="gpu-pool", access="dedicated", owner="owner")
    )

    assert response.status_code == 400
    assert (
        "Pool gpu-pool has services of other users: ocr-invoices (other). It can be dedicated to owner only once "
        "every service in it is theirs."
    ) in page_of(response)
    gpu_pool.refresh_from_db()
    assert gpu_pool.is_public


def test_a_pool_is_dedicated_to_a_user_only_if_its_nodes_fit_their_quota(
    staff_client, gpu_pool, owner, flavors, settings
):
    settings.QUOTA_VCPUS, settings.QUOTA_GPUS = 7, 2  # its node has 8 vCPUs and 2 GPUs
    dedicate = pool_form(name="gpu-pool", access="dedicated", owner="owner")

    response = staff_client.post(f"/pools/{gpu_pool.id}/edit/", dedicate)

    assert response.status_code == 400
    assert (
        "Pool gpu-pool&#x27;s nodes have 8 vCPUs, which would take owner&#x27;s vCPU quota to 8 of 7. "
        "Raise their quota first, or choose another owner."
    ) in page_of(response)
    gpu_pool.refresh_from_db()
    assert (gpu_pool.is_public, gpu_pool.owner) == (True, None)

    settings.QUOTA_VCPUS = 8
    assert staff_client.post(f"/pools/{gpu_pool.id}/edit/", dedicate).status_code == 302
    gpu_pool.refresh_from_db()
    assert (gpu_pool.is_public, gpu_pool.owner) == (False, owner)


def test_dedicating_a_public_pool_counts_its_nodes_instead_of_the_owners_services_in_it(
    staff_client, gpu_pool, owner, flavors, settings
):
    # 4 vCPUs of instances in the pool now; its node's 8 vCPUs instead once it is theirs.
    make_service(owner, gpu_pool, version=make_version(owner), instance_count=4)
    settings.QUOTA_VCPUS = 8

    response = staff_client.post(
        f"/pools/{gpu_pool.id}/edit/", pool_form(name="gpu-pool", access="dedicated", owner="owner")
    )

    assert response.status_code == 302, page_of(response)
    assert holding_of(owner).vcpus == 8


# --- Delete ------------------------------------------------------------------------------


def test_deleting_a_pool_with_services_is_refused_with_their_names(staff_client, gpu_pool, owner, other_user):
    make_service(owner, gpu_pool, name="fraud-check")
    make_service(other_user, gpu_pool, name="churn-score", status=ServiceStatus.STOPPED)

    response = staff_client.post(f"/pools/{gpu_pool.id}/delete/", follow=True)

    assert response.redirect_chain == [(f"/pools/{gpu_pool.id}/", 302)]
    assert (
        "Pool gpu-pool still has 2 services: churn-score (other), fraud-check (owner). "
        "Their owners delete them first; then the pool can go."
    ) in page_of(response)
    assert ResourcePool.objects.filter(id=gpu_pool.id).exists()
    assert Node.objects.filter(pool=gpu_pool).count() == 1


def test_deleting_a_pool_without_services_deletes_its_nodes_too(staff_client, gpu_pool):
    add_node(gpu_pool, "gpu-2")
    keep = make_pool("keep", local_node=None)
    add_node(keep, "keep-1")

    response = staff_client.post(f"/pools/{gpu_pool.id}/delete/", follow=True)

    assert response.redirect_chain == [("/pools/", 302)]
    assert "Deleted pool gpu-pool and its nodes." in page_of(response)
    assert list(ResourcePool.objects.values_list("name", flat=True)) == ["keep"]
    assert list(Node.objects.values_list("name", flat=True)) == ["keep-1"]


# --- Nodes -------------------------------------------------------------------------------------


@pytest.mark.docker
def test_an_operator_adds_the_local_engine_and_its_capacity_is_read_at_once(staff_client, engine):
    pool = make_pool("fresh", local_node=None)
    expected = runtime.engine_info(engine)

    response = staff_client.post(
        f"/pools/{pool.id}/nodes/new/", {"name": "local-2", "docker_host": engine, "gpu_count": "1"}, follow=True
    )

    assert response.redirect_chain == [(f"/pools/{pool.id}/", 302)]
    node = Node.objects.get(name="local-2")
    assert (node.pool, node.docker_host, node.gpu_count) == (pool, engine, 1)
    assert (node.cpu_count, node.memory_mib) == (expected.cpu_count, expected.memory_mib)
    assert node.is_enabled and node.is_reachable and node.checked_at is not None
    assert f"Added node local-2: its engine has {expected.cpu_count} vCPUs" in page_of(response)
    assert f"0 / {expected.cpu_count} vCPU" in page_of(response)


@pytest.mark.parametrize(
    ("docker_host", "message"),
    [
        ("", "Enter the Docker engine&#x27;s URL"),
        ("http://10.0.0.5:2375", "The Docker URL must start with unix://, tcp:// or ssh://"),
        ("/var/run/docker.sock", "The Docker URL must start with unix://, tcp:// or ssh://"),
        ("npipe:////./pipe/docker_engine", "The Docker URL must start with unix://, tcp:// or ssh://"),
        ("unix://var/run/docker.sock", "A unix:// Docker URL names the socket&#x27;s absolute path"),
        ("tcp://", "A tcp:// Docker URL names the engine&#x27;s host"),
        ("tcp://gpu-1:99999", "has a port that is not a number from 1 to 65535"),
        ("tcp://gpu-1:http", "has a port that is not a number from 1 to 65535"),
        ("tcp://gpu-1:2375/v1.41", "A tcp:// Docker URL has a host and an optional port only"),
        ("ssh://", "A ssh:// Docker URL names the engine&#x27;s host"),
        ("tcp://gpu 1:2375", "must not contain spaces or control characters"),
        ("tcp://" + "h" * 200, "at most 200 characters (it has 206)"),
    ],
)
def test_a_bad_docker_url_is_refused_on_its_field_and_nothing_is_saved(staff_client, gpu_pool, docker_host, message):
    response = staff_client.post(
        f"/pools/{gpu_pool.id}/nodes/new/", {"name": "gpu-9", "docker_host": docker_host, "gpu_count": "0"}
    )

    assert response.status_code == 400
    page = page_of(response)
    assert '<div class="field invalid">\n      <label for="id_docker_host">Docker URL' in page
    assert message in page
    assert not Node.objects.filter(name="gpu-9").exists()


def test_an_engine_that_does_not_answer_is_refused_and_nothing_is_saved(staff_client, gpu_pool, tmp_path):
    socket = f"unix://{tmp_path}/no-engine.sock"

    response = staff_client.post(
        f"/pools/{gpu_pool.id}/nodes/new/", {"name": "gpu-9", "docker_host": socket, "gpu_count": "0"}
    )

    assert response.status_code == 400
    assert (
        f"Docker engine at {socket} does not answer. Nothing was saved: check the URL and that the engine runs, "
        "then add the node again."
    ) in page_of(response)
    assert not Node.objects.filter(name="gpu-9").exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": "gpu-1"}, "name", "A node named gpu-1 exists already (in pool gpu-pool); node names are unique."),
        ({"name": "bad name"}, "name", "may contain only letters, digits, hyphens and underscores"),
        ({"docker_host": "tcp://gpu-1:2375"}, "docker_host", "This engine is node gpu-1 of pool gpu-pool already"),
        ({"gpu_count": "-1"}, "gpu_count", "GPUs must be a whole number from 0 to 64."),
        ({"gpu_count": "65"}, "gpu_count", "GPUs must be a whole number from 0 to 64."),
        ({"gpu_count": "1.5"}, "gpu_count", "GPUs must be a whole number from 0 to 64."),
        ({"gpu_count": "²"}, "gpu_count", "GPUs must be a whole number from 0 to 64."),
        ({"gpu_count": "9" * 30}, "gpu_count", "GPUs must be a whole number from 0 to 64."),
    ],
)
def test_a_bad_node_is_refused_on_its_field_before_any_engine_is_asked(
    staff_client, gpu_pool, monkeypatch, data, field, message
):
    def no_engine(docker_host):
        raise AssertionError("the engine was asked")

    monkeypatch.setattr(runtime, "engine_info", no_engine)
    form = {"name": "gpu-9", "docker_host": "tcp://gpu-9:2375", "gpu_count": "0", **data}

    response = staff_client.post(f"/pools/{gpu_pool.id}/nodes/new/", form)

    assert response.status_code == 400
    assert message in page_of(response)
    assert f'<label for="id_{field}">' in page_of(response).split('<div class="field invalid">', 1)[1][:80]
    assert Node.objects.count() == 1


def test_an_operator_disables_a_node_and_declares_its_gpus(staff_client, gpu_pool):
    node = gpu_pool.nodes.get()

    response = staff_client.post(f"/pools/nodes/{node.id}/edit/", {"gpu_count": "4"})

    assert response.status_code == 302 and response["Location"] == f"/pools/{gpu_pool.id}/"
    node.refresh_from_db()
    assert (node.is_enabled, node.gpu_count) == (False, 4)
    staff_client.post(f"/pools/nodes/{node.id}/edit/", {"gpu_count": "4", "is_enabled": "on"})
    node.refresh_from_db()
    assert node.is_enabled


def test_a_nodes_gpus_cannot_drop_below_what_its_instances_use(staff_client, gpu_pool, owner, flavors):
    node = gpu_pool.nodes.get()
    service = make_service(owner, gpu_pool, version=make_version(owner), flavor=flavors["gpu"], name="vision")
    place_instance(service, node)

    response = staff_client.post(f"/pools/nodes/{node.id}/edit/", {"gpu_count": "0", "is_enabled": "on"})

    assert response.status_code == 400
    assert "The instances on gpu-1 use 1 GPU; declare at least that many." in page_of(response)
    node.refresh_from_db()
    assert node.gpu_count == 2


@pytest.mark.parametrize("gpu_count", ["-1", "many", "100"])
def test_a_bad_gpu_count_on_the_node_form_is_refused(staff_client, gpu_pool, gpu_count):
    node = gpu_pool.nodes.get()

    response = staff_client.post(f"/pools/nodes/{node.id}/edit/", {"gpu_count": gpu_count})

    assert response.status_code == 400
    assert "GPUs must be a whole number from 0 to 64." in page_of(response)
    node.refresh_from_db()
    assert (node.is_enabled, node.gpu_count) == (True, 2)


def test_removing_a_node_with_instances_is_refused_naming_their_services(staff_client, gpu_pool, owner, flavors):
    node = gpu_pool.nodes.get()
    service = make_service(owner, gpu_pool, version=make_version(owner), flavor=flavors["small"], name="fraud-check")
    place_instance(service, node)

    response = staff_client.post(f"/pools/nodes/{node.id}/remove/", follow=True)

    assert "Node gpu-1 still holds instances of fraud-check (owner)" in page_of(response)
    assert Node.objects.filter(id=node.id).exists()


def test_removing_a_node_without_instances_removes_it(staff_client, gpu_pool):
    node = gpu_pool.nodes.get()

    response = staff_client.post(f"/pools/nodes/{node.id}/remove/", follow=True)

    assert response.redirect_chain == [(f"/pools/{gpu_pool.id}/", 302)]
    assert "Removed node gpu-1." in page_of(response)
    assert not Node.objects.exists()


# --- The pool's page -----------------------------------------------------------------------------


def test_the_pool_page_shows_health_capacity_placed_instances_and_services(staff_client, gpu_pool, owner, flavors):
    node = gpu_pool.nodes.get()
    down = add_node(gpu_pool, "gpu-2", is_reachable=False)
    Node.objects.filter(id=down.id).update(
        last_error="Docker engine at tcp://gpu-2:2375 does not answer", checked_at=timezone.now()
    )
    version = make_version(owner)
    service = make_service(owner, gpu_pool, version=version, flavor=flavors["small"], name="fraud-check")
    place_instance(service, node)
    make_service(make_user("carol"), gpu_pool, name="idle-one", status=ServiceStatus.STOPPED)

    page = page_of(staff_client.get(f"/pools/{gpu_pool.id}/"))

    assert "Every user (public)" in page
    assert "Not answering" in page and "Docker engine at tcp://gpu-2:2375 does not answer" in page
    assert "1.05 / 8 vCPU" in page  # node gpu-1
    assert 'title="fraud-check #0 (owner): 1.05 vCPU, 544 MiB"' in page
    assert "fraud-check" in page and "idle-one" in page and "carol" in page
    assert "0.05 vCPU and 32 MiB of overhead per instance" in page


def test_a_pool_page_without_nodes_invites_to_add_one(staff_client, db):
    pool = make_pool("empty", local_node=None)

    page = page_of(staff_client.get(f"/pools/{pool.id}/"))

    assert "No nodes yet." in page and f'href="/pools/{pool.id}/nodes/new/"' in page


@pytest.mark.docker
def test_a_dedicated_pools_node_takes_its_owners_quota(staff_client, engine, owner, settings):
    expected = runtime.engine_info(engine)
    settings.QUOTA_VCPUS = expected.cpu_count - 1
    pool = make_pool("owners", owner=owner, local_node=None)

    response = staff_client.post(f"/pools/{pool.id}/nodes/new/", {"name": "theirs", "docker_host": engine})

    assert response.status_code == 400
    assert (
        f"The pool&#x27;s owner owner is short of quota. vCPU quota exceeded: this needs {expected.cpu_count} vCPUs "
        f"and {expected.cpu_count - 1} of owner&#x27;s {expected.cpu_count - 1} are left. "
        "Raise their quota first (admin, user quotas)."
    ) in page_of(response)
    assert not Node.objects.filter(pool=pool).exists()
    settings.QUOTA_VCPUS = expected.cpu_count
    assert (
        staff_client.post(f"/pools/{pool.id}/nodes/new/", {"name": "theirs", "docker_host": engine}).status_code == 302
    )
