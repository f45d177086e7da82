"""The Deploy wizard: every rule refuses a bad value with its message and
stores nothing; a good request stores one Deploying service."""

import html
import re
from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils.html import escape

from pools.models import Node, ResourcePool
from services.choices import ServiceStatus, VersionStatus
from services.models import Instance, Service, ServiceEvent, ServiceVersionConfig
from services.validation import RequestInvalid, parse_deploy_request
from tests.factories import add_node, deploy_data, make_service, make_version

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("pinned_limits")]


class _Inputs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inputs: list[dict] = []
        self.options: list[dict] = []
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input":
            self.inputs.append(attrs)
        elif tag == "select":
            self._select = attrs.get("name")
        elif tag == "option":
            self.options.append({**attrs, "select": self._select})

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def parse_inputs(response) -> _Inputs:
    parser = _Inputs()
    parser.feed(response.content.decode())
    return parser


def radios(response, name: str) -> dict[str, dict]:
    return {i["value"]: i for i in parse_inputs(response).inputs if i.get("name") == name and i.get("type") == "radio"}


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def stored() -> tuple[int, int, int, int]:
    return (
        Service.objects.count(),
        ServiceVersionConfig.objects.count(),
        Instance.objects.count(),
        ServiceEvent.objects.count(),
    )


@pytest.fixture
def form(pool, flavors, demo_version) -> dict:
    """The Deploy form as a browser posts it, filled in with good values."""
    return {
        "name": "svc-one",
        "description": "",
        "pool": str(pool.id),
        "app_version": str(demo_version.id),
        "flavor": "cpu.1u512m",
        "instance_count": "1",
        "timeout_minutes": "20",
        "env_key": [""],
        "env_value": [""],
    }


def post_deploy(client, form: dict, **changes):
    return client.post(reverse("services:deploy"), {**form, **changes})


# The input each error key belongs to; the error must sit in that input's field.
FIELD_INPUTS = {
    "name": "name",
    "description": "description",
    "app_version": "app_version",
    "flavor": "flavor",
    "instance_count": "instance_count",
    "weight": "weight",
    "envs": "env_key",
    "timeout_minutes": "timeout_minutes",
    "websocket": "websocket",
}


def field_block(response, message: str) -> str:
    """The markup of the one form field that shows `message` as its error."""
    error = f'<p class="field-error" role="alert">{escape(message)}</p>'
    blocks = [block for block in response.content.decode().split('<div class="field')[1:] if error in block]
    assert len(blocks) == 1, f"{message!r} is not shown under exactly one field"
    return blocks[0]


# Fields of a version row: their errors belong to that row.
ROW_FIELDS = {"app_version", "weight", "flavor", "instance_count", "envs"}


def first_input_name(block: str) -> str:
    """The name of the first input or select in a field's markup."""
    match = re.search(r'<(?:input|select|textarea)\b[^>]*?\bname="([^"]+)"', block)
    assert match, "the field has no input"
    return match.group(1)


def assert_refused(response, field: str, message: str, before, *, row: int = 0) -> None:
    assert response.status_code == 400
    errors = response.context["rows"][row]["errors"] if field in ROW_FIELDS else response.context["errors"]
    assert message in errors[field]
    assert message in page_text(response)
    if field == "general":
        form_errors = re.search(r'<div class="form-errors" role="alert">(.*?)</div>', response.content.decode(), re.S)
        assert form_errors and f"<p>{escape(message)}</p>" in form_errors.group(1)
    else:
        block = field_block(response, message)
        assert block.startswith(' invalid"')
        if field in FIELD_INPUTS:
            prefix = f"r{row + 1}-" if row else ""
            assert first_input_name(block) == prefix + FIELD_INPUTS[field]
    assert stored() == before


# --- The valid path ---------------------------------------------------------------


def test_valid_deploy_stores_one_deploying_service_and_redirects_to_the_list(
    owner_client, form, flavors, demo_version, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_deploy(
            owner_client,
            form,
            description="first try",
            instance_count="2",
            timeout_minutes="15",
            env_key=["MODEL_DIR", "THREADS", ""],
            env_value=["/models", "4", ""],
        )

    assert response.status_code == 302
    assert response.url == reverse("services:list")
    service = Service.objects.get()
    assert (service.name, service.description, service.status) == ("svc-one", "first try", ServiceStatus.DEPLOYING)
    assert service.timeout_minutes == 15
    assert service.is_websocket is False
    config = ServiceVersionConfig.objects.get()
    assert config.service == service
    assert config.app_version == demo_version
    assert config.weight == 100
    assert config.flavor == flavors["small"]
    assert config.instance_count == 2
    assert config.envs == {"MODEL_DIR": "/models", "THREADS": "4"}
    assert [event.message for event in ServiceEvent.objects.all()] == [
        "Deployment queued: 2 instance(s) on pool public-cpu"
    ]
    # Placed on the pool's node in the same transaction; no container yet.
    assert list(Instance.objects.values_list("node__name", "state", "container_id")) == [
        ("local", "pending", ""),
        ("local", "pending", ""),
    ]
    assert len(callbacks) == 1  # the deploy task, enqueued only after commit


def test_valid_deploy_shows_a_success_message_on_the_list(owner_client, form):
    response = owner_client.post(reverse("services:deploy"), form, follow=True)

    assert response.redirect_chain == [(reverse("services:list"), 302)]
    assert "Service svc-one is deploying." in page_text(response)


def test_deploy_accepts_the_largest_instance_count(owner_client, form, settings):
    # A node large enough for 128 instances of 1 vCPU (and their overhead), and the quota for them.
    Node.objects.update(cpu_count=64, memory_mib=262_144)
    settings.QUOTA_VCPUS = 128
    response = post_deploy(owner_client, form, instance_count="128")

    assert response.status_code == 302
    assert ServiceVersionConfig.objects.get().instance_count == 128


def test_deploy_uses_the_default_timeout_when_left_empty(owner_client, form):
    response = post_deploy(owner_client, form, timeout_minutes="")

    assert response.status_code == 302
    assert Service.objects.get().timeout_minutes == 20


def test_deploy_stores_websocket_for_a_websocket_version(owner_client, form, owner):
    version = make_version(owner, version="3.0.0", is_websocket=True)

    response = post_deploy(owner_client, form, app_version=str(version.id), websocket="on")

    assert response.status_code == 302
    assert Service.objects.get().is_websocket is True


def test_deploy_allows_a_name_another_user_already_uses(owner_client, form, other_user, pool):
    make_service(other_user, pool, name="svc-one")

    response = post_deploy(owner_client, form)

    assert response.status_code == 302
    assert Service.objects.filter(name="svc-one").count() == 2


def test_deploy_to_own_dedicated_pool_is_accepted(owner_client, form, owner, flavors):
    dedicated = ResourcePool.objects.create(name="mine", is_public=False, owner=owner)
    add_node(dedicated, "mine-1", cpus=4, memory_mib=4096)

    response = post_deploy(owner_client, form, pool=str(dedicated.id))

    assert response.status_code == 302
    assert Service.objects.get().pool == dedicated


# --- Name and description ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Name is required."),
        ("a" * 65, "Name must be at most 64 characters."),
        ("1svc", "Name must start with a letter and contain only letters, digits, '-' and '_'."),
        ("svc one", "Name must start with a letter and contain only letters, digits, '-' and '_'."),
        ("svc.one", "Name must start with a letter and contain only letters, digits, '-' and '_'."),
    ],
)
def test_deploy_rejects_bad_name(owner_client, form, name, message):
    before = stored()
    assert_refused(post_deploy(owner_client, form, name=name), "name", message, before)


def test_deploy_rejects_a_name_the_user_already_uses(owner_client, form, owner, pool):
    make_service(owner, pool, name="svc-one")
    before = stored()

    response = post_deploy(owner_client, form)

    assert_refused(response, "name", "You already have a service named svc-one.", before)


def test_deploy_rejects_description_over_100_characters(owner_client, form):
    before = stored()
    response = post_deploy(owner_client, form, description="d" * 101)
    assert_refused(response, "description", "Description must be at most 100 characters.", before)


def test_refused_deploy_keeps_the_entered_values(owner_client, form):
    response = post_deploy(owner_client, form, name="1svc", description="kept text", env_key=["KEEP"], env_value=["me"])

    inputs = parse_inputs(response).inputs
    assert {"name": "name", "value": "1svc"}.items() <= next(i for i in inputs if i.get("name") == "name").items()
    assert any(i.get("name") == "env_key" and i.get("value") == "KEEP" for i in inputs)
    assert "kept text" in page_text(response)
    assert radios(response, "flavor")["cpu.1u512m"].keys() >= {"checked"}


# --- Resource pool ---------------------------------------------------------------


def test_deploy_rejects_a_missing_pool(owner_client, form):
    before = stored()
    response = post_deploy(owner_client, form, pool="")
    assert_refused(response, "pool", "Resource pool is required.", before)


def test_deploy_rejects_another_users_dedicated_pool(owner_client, form, other_user):
    theirs = ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)
    add_node(theirs, "theirs-1", cpus=4, memory_mib=4096)
    before = stored()

    response = post_deploy(owner_client, form, pool=str(theirs.id))

    assert_refused(response, "pool", f"Resource pool {theirs.id} does not exist or is not yours.", before)


def test_deploy_rejects_a_nonexistent_pool(owner_client, form):
    before = stored()
    response = post_deploy(owner_client, form, pool="999999")
    assert_refused(response, "pool", "Resource pool 999999 does not exist or is not yours.", before)


NO_POOL_MESSAGE = (
    "No public resource pool is available. Use a dedicated resource pool or ask an administrator "
    "to create a public one."
)


def test_deploy_without_any_pool_explains_public_and_dedicated_pools(owner_client, flavors, demo_version):
    before = stored()
    response = owner_client.post(
        reverse("services:deploy"),
        {"name": "svc-one", "app_version": str(demo_version.id), "flavor": "cpu.1u512m", "instance_count": "1"},
    )
    assert_refused(response, "pool", NO_POOL_MESSAGE, before)


def test_deploy_counts_only_another_users_dedicated_pool_as_no_pool(owner_client, flavors, demo_version, other_user):
    ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)
    before = stored()

    response = owner_client.post(
        reverse("services:deploy"),
        {"name": "svc-one", "app_version": str(demo_version.id), "flavor": "cpu.1u512m", "instance_count": "1"},
    )

    assert_refused(response, "pool", NO_POOL_MESSAGE, before)


# --- AI application version --------------------------------------------------------


def test_deploy_rejects_a_missing_version(owner_client, form):
    before = stored()
    response = post_deploy(owner_client, form, app_version="")
    assert_refused(response, "app_version", "AI application and version is required.", before)


def test_deploy_rejects_another_users_version(owner_client, form, other_user):
    theirs = make_version(other_user)
    before = stored()

    response = post_deploy(owner_client, form, app_version=str(theirs.id))

    assert_refused(response, "app_version", f"AI application version {theirs.id} does not exist.", before)


@pytest.mark.parametrize(("status", "label"), [(VersionStatus.CHECKING, "Checking"), (VersionStatus.FAILED, "Failed")])
def test_deploy_rejects_a_version_that_is_not_normal(owner_client, form, owner, status, label):
    version = make_version(owner, version="2.0.0", status=status)
    before = stored()

    response = post_deploy(owner_client, form, app_version=str(version.id))

    message = f"demo-model 2.0.0 is {label}; only Normal versions can be deployed."
    assert_refused(response, "app_version", message, before)


@pytest.mark.parametrize("ref", ["999999", "abc"])
def test_deploy_rejects_a_nonexistent_version(owner_client, form, ref):
    before = stored()
    response = post_deploy(owner_client, form, app_version=ref)
    assert_refused(response, "app_version", f"AI application version {ref} does not exist.", before)


# --- Specification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavor", "message"),
    [
        ("", "Specification is required."),
        ("cpu.nope", "Specification cpu.nope does not exist."),
        (
            "cpu.64u8g",
            "Specification cpu.64u8g cannot be used now: needs 64 vCPUs; the largest engine in pool public-cpu has 2.",
        ),
        ("gpu.1p", "Specification gpu.1p cannot be used now: no engine in pool public-cpu has GPUs."),
    ],
)
def test_deploy_rejects_a_missing_unknown_or_unavailable_flavor(owner_client, form, flavor, message):
    before = stored()
    response = post_deploy(owner_client, form, flavor=flavor)
    assert_refused(response, "flavor", message, before)


# --- Compute nodes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "message"),
    [
        ("0", "Compute nodes must be between 1 and 128."),
        ("129", "Compute nodes must be between 1 and 128."),
        ("abc", "Compute nodes must be a whole number."),
    ],
)
def test_deploy_rejects_bad_instance_count(owner_client, form, count, message):
    before = stored()
    response = post_deploy(owner_client, form, instance_count=count)
    assert_refused(response, "instance_count", message, before)


def test_deploy_instance_limit_follows_the_setting(owner_client, form, settings):
    settings.MAX_INSTANCES_PER_VERSION = 4
    before = stored()
    response = post_deploy(owner_client, form, instance_count="5")
    assert_refused(response, "instance_count", "Compute nodes must be between 1 and 4.", before)


# --- Environment variables ---------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "values", "message"),
    [
        (
            ["1BAD"],
            ["x"],
            "Environment variable name '1BAD' is not valid: use letters, digits and '_', "
            "not starting with a digit (at most 128 characters).",
        ),
        (
            ["A-B"],
            ["x"],
            "Environment variable name 'A-B' is not valid: use letters, digits and '_', "
            "not starting with a digit (at most 128 characters).",
        ),
        ([""], ["a value without a name"], "Environment variable names cannot be empty."),
        (["A", "A"], ["1", "2"], "Environment variable A is set twice."),
        (
            ["A"],
            ["v" * 4097],
            "The value of A must be at most 4096 printable characters (no control characters but tab).",
        ),
        (
            ["A"],
            ["bell\x07"],
            "The value of A must be at most 4096 printable characters (no control characters but tab).",
        ),
    ],
)
def test_deploy_rejects_bad_environment_variables(owner_client, form, keys, values, message):
    before = stored()
    response = post_deploy(owner_client, form, env_key=keys, env_value=values)
    assert_refused(response, "envs", message, before)


# --- Timeout -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("2", "Timeout (minutes) must be between 3 and 120."),
        ("121", "Timeout (minutes) must be between 3 and 120."),
        ("x", "Timeout (minutes) must be a whole number."),
    ],
)
def test_deploy_rejects_bad_timeout(owner_client, form, timeout, message):
    before = stored()
    response = post_deploy(owner_client, form, timeout_minutes=timeout)
    assert_refused(response, "timeout_minutes", message, before)


# --- WebSocket ---------------------------------------------------------------------


def test_deploy_rejects_websocket_for_a_version_that_is_not_websocket(owner_client, form):
    before = stored()
    response = post_deploy(owner_client, form, websocket="on")
    message = "WebSocket needs a WebSocket-compliant container-image application; demo-model 1.0.0 is not."
    assert_refused(response, "websocket", message, before)


# --- Quota -------------------------------------------------------------------------


def test_deploy_refuses_a_service_beyond_the_per_user_quota(owner_client, form, owner, pool, settings):
    settings.MAX_SERVICES_PER_USER = 2
    make_service(owner, pool, name="existing")
    make_service(owner, pool, name="broken", status=ServiceStatus.FAILED)
    before = stored()

    response = post_deploy(owner_client, form)

    message = (
        "You already have 2 services, the most you may have in any status. Delete one to deploy another. "
        "Your Failed or Abnormal services are the first to go: broken."
    )
    assert_refused(response, "general", message, before)


def test_deploy_quota_counts_only_the_users_own_services(owner_client, form, other_user, pool, settings):
    settings.MAX_SERVICES_PER_USER = 1
    make_service(other_user, pool, name="theirs")

    response = post_deploy(owner_client, form)

    assert response.status_code == 302
    assert Service.objects.filter(name="svc-one").exists()


# --- The GET page and the flavors fragment ------------------------------------------


def test_deploy_page_lists_every_flavor_and_disables_unavailable_ones_with_their_reason(owner_client, pool, flavors):
    response = owner_client.get(reverse("services:deploy"))

    assert response.status_code == 200
    text = page_text(response)
    for flavor in flavors.values():
        assert flavor.display_name in text
    options = radios(response, "flavor")
    assert set(options) == {"cpu.1u1g.free", "cpu.1u512m", "cpu.64u8g", "gpu.1p"}
    assert "disabled" in options["cpu.64u8g"]
    assert "disabled" in options["gpu.1p"]
    assert "disabled" not in options["cpu.1u512m"]
    assert "disabled" not in options["cpu.1u1g.free"]
    assert "checked" in options["cpu.1u1g.free"]  # the first available flavor is preselected
    assert "Unavailable: needs 64 vCPUs; the largest engine in pool public-cpu has 2" in text
    assert "Unavailable: no engine in pool public-cpu has GPUs" in text


def test_deploy_page_warns_against_sensitive_data_and_offers_websocket(owner_client, pool, flavors):
    response = owner_client.get(reverse("services:deploy"))

    text = page_text(response)
    assert "do not put sensitive information (passwords, keys, tokens) in environment variables" in text
    websocket = [i for i in parse_inputs(response).inputs if i.get("name") == "websocket"]
    assert len(websocket) == 1 and websocket[0]["type"] == "checkbox"


def test_deploy_page_preselects_the_first_pool_and_shows_the_users_pools_only(
    owner_client, owner, other_user, pool, flavors
):
    ResourcePool.objects.create(name="mine", is_public=False, owner=owner)
    ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)

    response = owner_client.get(reverse("services:deploy"))

    pools = radios(response, "pool")
    assert set(pools) == {str(pool.id), str(ResourcePool.objects.get(name="mine").id)}
    assert "checked" in pools[str(pool.id)]


def test_deploy_page_without_pools_shows_the_no_public_pool_notice(owner_client, flavors):
    response = owner_client.get(reverse("services:deploy"))

    assert response.status_code == 200
    assert "No public resource pool is available in this environment" in page_text(response)
    assert radios(response, "pool") == {}


def test_flavors_fragment_marks_flavors_for_the_chosen_pool(owner_client, pool, flavors):
    response = owner_client.get(reverse("services:deploy_flavors"), {"pool": pool.id, "flavor": "cpu.1u512m"})

    assert response.status_code == 200
    content = response.content.decode()
    assert 'id="flavor-options"' in content
    assert "<html" not in content and "deploy-form" not in content
    options = radios(response, "flavor")
    assert set(options) == {"cpu.1u1g.free", "cpu.1u512m", "cpu.64u8g", "gpu.1p"}
    assert "disabled" in options["cpu.64u8g"]
    assert "checked" in options["cpu.1u512m"]
    assert "needs 64 vCPUs; the largest engine in pool public-cpu has 2" in page_text(response)


def test_flavors_fragment_follows_the_pool_capacity(owner_client, owner, pool, flavors):
    big = ResourcePool.objects.create(name="big-one", is_public=False, owner=owner)
    # 64 vCPUs for the largest flavor and a little for the system overhead.
    add_node(big, "big-1", cpus=65, memory_mib=65536)

    response = owner_client.get(reverse("services:deploy_flavors"), {"pool": big.id})

    options = radios(response, "flavor")
    assert "disabled" not in options["cpu.64u8g"]
    assert "disabled" in options["gpu.1p"]


def test_flavors_fragment_for_another_users_pool_offers_nothing(owner_client, other_user, flavors):
    theirs = ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)
    add_node(theirs, "theirs-1", cpus=64, memory_mib=65536)

    response = owner_client.get(reverse("services:deploy_flavors"), {"pool": theirs.id})

    options = radios(response, "flavor")
    assert len(options) == 4
    assert all("disabled" in option for option in options.values())
    assert "theirs" not in page_text(response)
    assert "no resource pool is selected" in page_text(response)


# --- parse_deploy_request: several version configurations --------------------------


@pytest.fixture
def two_versions(owner, demo_version):
    return demo_version, make_version(owner, version="2.0.0")


def two_config_data(versions, weights, flavor="cpu.1u512m") -> dict:
    first, second = versions
    data = deploy_data(first, flavor=flavor)
    data["configs"] = [
        {"app_version": version.id, "flavor": flavor, "instance_count": 1, "weight": weight, "envs": {}}
        for version, weight in zip((first, second), weights, strict=True)
    ]
    return data


def test_deploy_rejects_ratios_not_summing_to_100(owner, pool, flavors, two_versions):
    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=two_config_data(two_versions, (50, 40)))

    # Named on the last row's ratio: the one a user sets last.
    assert refused.value.errors == {"configs.1.weight": ["Traffic ratios must add up to 100%; they add up to 90%."]}


def test_deploy_rejects_a_single_version_below_100_percent(owner, pool, flavors, demo_version):
    data = deploy_data(demo_version)
    data["configs"][0]["weight"] = 60

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert refused.value.errors == {"configs.0.weight": ["Traffic ratios must add up to 100%; they add up to 60%."]}


def test_deploy_accepts_two_versions_splitting_traffic(owner, pool, flavors, two_versions):
    request = parse_deploy_request(owner=owner, data=two_config_data(two_versions, (70, 30)))

    assert [(c.app_version, c.weight) for c in request.configs] == [(two_versions[0], 70), (two_versions[1], 30)]


def test_deploy_refuses_a_free_flavor_with_several_versions_on_each_free_row(owner, pool, flavors, two_versions):
    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=two_config_data(two_versions, (50, 50), flavor="cpu.1u1g.free"))

    message = "Free specifications do not support a gray launch of several versions."
    assert refused.value.errors == {"configs.0.flavor": [message], "configs.1.flavor": [message]}


def test_deploy_names_the_one_free_row_of_a_gray_launch(owner, pool, flavors, two_versions):
    data = two_config_data(two_versions, (50, 50))
    data["configs"][1]["flavor"] = "cpu.1u1g.free"

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert refused.value.errors == {
        "configs.1.flavor": ["Free specifications do not support a gray launch of several versions."]
    }


def test_deploy_rejects_a_version_chosen_twice_on_the_later_row(owner, pool, flavors, demo_version):
    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=two_config_data((demo_version, demo_version), (50, 50)))

    assert refused.value.errors == {
        "configs.1.app_version": ["demo-model 1.0.0 is chosen twice; choose each version once."]
    }


def test_deploy_rejects_versions_of_two_applications_on_the_row_of_the_other_one(owner, pool, flavors, demo_version):
    other = make_version(owner, application_name="other-model", version="1.0.0")

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=two_config_data((demo_version, other), (50, 50)))

    assert refused.value.errors == {
        "configs.1.app_version": [
            "All versions of a service must be of one AI application (demo-model); other-model 1.0.0 is not."
        ]
    }


def test_deploy_names_a_repeated_version_even_when_another_field_of_its_row_is_bad(owner, pool, flavors, demo_version):
    data = two_config_data((demo_version, demo_version), (50, 50))
    data["configs"][1]["instance_count"] = 0

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert refused.value.errors == {
        "configs.1.app_version": ["demo-model 1.0.0 is chosen twice; choose each version once."],
        "configs.1.instance_count": ["Compute nodes must be between 1 and 128."],
    }


def test_deploy_accepts_a_version_with_no_traffic(owner, pool, flavors, two_versions):
    request = parse_deploy_request(owner=owner, data=two_config_data(two_versions, (100, 0)))

    assert [c.weight for c in request.configs] == [100, 0]


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ("70.5", "Traffic ratio (%) must be a whole number."),
        (70.5, "Traffic ratio (%) must be a whole number."),
        (101, "Traffic ratio (%) must be between 0 and 100."),
        (-1, "Traffic ratio (%) must be between 0 and 100."),
    ],
)
def test_deploy_rejects_a_ratio_that_is_not_a_whole_number_from_0_to_100(
    owner, pool, flavors, two_versions, weight, message
):
    data = two_config_data(two_versions, (30, 70))
    data["configs"][0]["weight"] = weight

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert refused.value.errors == {"configs.0.weight": [message]}


def test_deploy_accepts_a_free_flavor_with_one_version(owner, pool, flavors, demo_version):
    request = parse_deploy_request(owner=owner, data=deploy_data(demo_version, flavor="cpu.1u1g.free"))

    assert request.configs[0].flavor == flavors["free"]


def test_deploy_keys_errors_of_a_later_configuration_by_its_position(owner, pool, flavors, two_versions):
    data = two_config_data(two_versions, (50, 50))
    data["configs"][1]["flavor"] = "cpu.64u8g"

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert list(refused.value.errors) == ["configs.1.flavor"]


def test_deploy_rejects_a_request_without_configurations(owner, pool, flavors, demo_version):
    data = deploy_data(demo_version)
    data["configs"] = []

    with pytest.raises(RequestInvalid) as refused:
        parse_deploy_request(owner=owner, data=data)

    assert refused.value.errors == {"configs": ["Choose at least one AI application version."]}


# --- Several version rows in the wizard ----------------------------------------------


@pytest.fixture
def second_version(owner, demo_version):
    return make_version(owner, version="2.0.0")


def with_rows(form: dict, *rows: dict) -> dict:
    """The form with its first row as `form` has it plus `rows`, as the page
    posts them once rows were added: the first row's fields keep their bare
    names, the n-th row's are prefixed `r<n>-`, and `rows` lists the prefixes."""
    posted = {**form, "rows": [""] + [f"r{n}-" for n in range(2, len(rows) + 2)]}
    for n, row in enumerate(rows, start=2):
        posted.update({f"r{n}-{field}": value for field, value in row.items()})
    return posted


def second_row(version, **fields) -> dict:
    return {
        "app_version": str(version.id),
        "weight": "30",
        "flavor": "cpu.1u512m",
        "instance_count": "1",
        "env_key": [""],
        "env_value": [""],
        **fields,
    }


def test_two_rows_at_70_30_store_a_service_with_two_configurations_in_order(
    owner_client, form, demo_version, second_version, flavors
):
    posted = with_rows(
        {**form, "weight": "70", "env_key": ["MODE", ""], "env_value": ["old", ""]},
        second_row(second_version, instance_count="2", env_key=["MODE", "EXTRA"], env_value=["new", "1"]),
    )

    response = owner_client.post(reverse("services:deploy"), posted)

    assert response.status_code == 302
    assert response.url == reverse("services:list")
    service = Service.objects.get()
    assert service.status == ServiceStatus.DEPLOYING
    configs = list(service.configs.order_by("position"))
    assert [(c.position, c.app_version, c.weight, c.flavor, c.instance_count, c.envs) for c in configs] == [
        (0, demo_version, 70, flavors["small"], 1, {"MODE": "old"}),
        (1, second_version, 30, flavors["small"], 2, {"MODE": "new", "EXTRA": "1"}),
    ]


def test_rows_are_stored_in_page_order_whatever_their_prefixes(owner_client, form, demo_version, second_version):
    # The first row was removed and two were added: the page posts r3- before r2-.
    posted = {
        "name": "svc-one",
        "pool": form["pool"],
        "timeout_minutes": "20",
        "rows": ["r3-", "r2-"],
        "r3-app_version": str(second_version.id),
        "r3-weight": "90",
        "r3-flavor": "cpu.1u512m",
        "r3-instance_count": "1",
        "r2-app_version": str(demo_version.id),
        "r2-weight": "10",
        "r2-flavor": "cpu.1u512m",
        "r2-instance_count": "1",
    }

    assert owner_client.post(reverse("services:deploy"), posted).status_code == 302

    configs = Service.objects.get().configs.order_by("position")
    assert [(c.app_version, c.weight) for c in configs] == [(second_version, 90), (demo_version, 10)]


ROW_RULES = {
    "ratios not adding up to 100": (
        lambda form, demo, second: with_rows({**form, "weight": "60"}, second_row(second)),
        "weight",
        "Traffic ratio",
        "Traffic ratios must add up to 100%; they add up to 90%.",
    ),
    "a version chosen twice": (
        lambda form, demo, second: with_rows({**form, "weight": "70"}, second_row(demo)),
        "app_version",
        "AI application and version",
        "demo-model 1.0.0 is chosen twice; choose each version once.",
    ),
    "versions of two AI applications": (
        lambda form, demo, second: with_rows(
            {**form, "weight": "70"},
            second_row(make_version(demo.application.owner, application_name="other-model", version="9.0.0")),
        ),
        "app_version",
        "AI application and version",
        "All versions of a service must be of one AI application (demo-model); other-model 9.0.0 is not.",
    ),
    "a free specification with two rows": (
        lambda form, demo, second: with_rows({**form, "weight": "70"}, second_row(second, flavor="cpu.1u1g.free")),
        "flavor",
        "Specification",
        "Free specifications do not support a gray launch of several versions.",
    ),
    "a ratio that is not a whole number": (
        lambda form, demo, second: with_rows({**form, "weight": "70"}, second_row(second, weight="30.5")),
        "weight",
        "Traffic ratio",
        "Traffic ratio (%) must be a whole number.",
    ),
    "a bad environment variable in the second row": (
        lambda form, demo, second: with_rows(
            {**form, "weight": "70"}, second_row(second, env_key=["1BAD"], env_value=["x"])
        ),
        "envs",
        "Environment variables",
        "Environment variable name '1BAD' is not valid: use letters, digits and '_', "
        "not starting with a digit (at most 128 characters).",
    ),
}


@pytest.mark.parametrize("rule", ROW_RULES.values(), ids=ROW_RULES.keys())
def test_a_rule_broken_by_the_second_row_is_shown_on_that_row_and_field(
    owner_client, form, demo_version, second_version, rule
):
    make_posted, field, label, message = rule
    posted = make_posted(form, demo_version, second_version)
    before = stored()

    response = owner_client.post(reverse("services:deploy"), posted)

    assert_refused(response, field, message, before, row=1)
    assert response.context["rows"][0]["errors"] == {}
    # Atop the form too, naming the row and field, with a link to that field.
    summary = re.search(r'<div class="form-errors" role="alert">(.*?)</div>', response.content.decode(), re.S)
    assert summary
    assert (
        f'<p class="row-error"><a href="#r2-{field}-field">Row 2 · {label}</a>: {escape(message)}</p>'
        in summary.group(1)
    )


def test_errors_of_two_rows_are_each_shown_on_their_own_row(owner_client, form, second_version):
    posted = with_rows({**form, "weight": "70", "instance_count": "0"}, second_row(second_version, flavor="cpu.64u8g"))

    response = owner_client.post(reverse("services:deploy"), posted)

    rows = response.context["rows"]
    assert rows[0]["errors"] == {"instance_count": ["Compute nodes must be between 1 and 128."]}
    assert list(rows[1]["errors"]) == ["flavor"]
    assert first_input_name(field_block(response, "Compute nodes must be between 1 and 128.")) == "instance_count"
    assert first_input_name(field_block(response, rows[1]["errors"]["flavor"][0])) == "r2-flavor"
    assert stored() == (0, 0, 0, 0)


def test_a_refused_form_keeps_every_row_as_typed(owner_client, form, demo_version, second_version):
    third = make_version(demo_version.application.owner, version="3.0.0")
    posted = with_rows(
        {**form, "name": "1bad", "weight": "50", "instance_count": "3", "env_key": ["A"], "env_value": ["1"]},
        second_row(second_version, weight="30", instance_count="2", env_key=["B", "C"], env_value=["2", "3"]),
        second_row(third, weight="20", env_key=[""], env_value=[""]),
    )

    response = owner_client.post(reverse("services:deploy"), posted)

    assert response.status_code == 400
    inputs = parse_inputs(response)
    values = {i["name"]: i.get("value") for i in inputs.inputs if i.get("name") and i.get("type") != "radio"}
    assert [i["value"] for i in inputs.inputs if i.get("name") == "rows"] == ["", "r2-", "r3-"]
    assert (values["weight"], values["r2-weight"], values["r3-weight"]) == ("50", "30", "20")
    assert (values["instance_count"], values["r2-instance_count"]) == ("3", "2")
    assert [i["value"] for i in inputs.inputs if i.get("name") == "r2-env_key"] == ["B", "C"]
    assert [i["value"] for i in inputs.inputs if i.get("name") == "r2-env_value"] == ["2", "3"]
    selected = {o["select"]: o["value"] for o in inputs.options if "selected" in o}
    assert selected == {
        "app_version": str(demo_version.id),
        "r2-app_version": str(second_version.id),
        "r3-app_version": str(third.id),
    }
    assert "checked" in radios(response, "r2-flavor")["cpu.1u512m"]
    # Several rows: each shows its heading, its ratio and its Remove button.
    assert response.context["is_several"] is True
    assert "data-several-only hidden" not in response.content.decode()


def test_a_fresh_form_has_one_row_with_all_the_traffic_and_no_version(owner_client, pool, flavors, demo_version):
    response = owner_client.get(reverse("services:deploy"))

    inputs = parse_inputs(response)
    assert [i["value"] for i in inputs.inputs if i.get("name") == "rows"] == [""]
    weight = next(i for i in inputs.inputs if i.get("name") == "weight")
    assert weight["value"] == "100"
    # One row takes all the traffic: its ratio, heading and Remove stay hidden.
    content = response.content.decode()
    assert re.search(r'id="weight-field" data-several-only\s+hidden', content)
    assert re.search(r'class="version-row-head" data-several-only\s+hidden', content)
    assert not [o for o in inputs.options if o["select"] == "app_version" and "selected" in o]
    assert "Add AI application version and configuration" in page_text(response)


def test_the_deploy_link_of_a_version_fills_the_first_row(owner_client, pool, flavors, demo_version, second_version):
    response = owner_client.get(reverse("services:deploy"), {"version": second_version.id})

    selected = [o["value"] for o in parse_inputs(response).options if "selected" in o]
    assert selected == [str(second_version.id)]


def test_the_deploy_link_of_another_users_version_fills_nothing(owner_client, pool, flavors, other_user):
    theirs = make_version(other_user)

    response = owner_client.get(reverse("services:deploy"), {"version": theirs.id})

    assert [o for o in parse_inputs(response).options if "selected" in o] == []


def add_row(client, **params):
    return client.get(reverse("services:deploy"), {"add_row": "1", **params}, HTTP_HX_REQUEST="true")


def test_adding_a_row_returns_one_empty_row_under_a_new_prefix(owner_client, pool, flavors, demo_version):
    response = add_row(owner_client, pool=pool.id, rows=["", "r2-", "r5-"])

    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content and "deploy-form" not in content
    assert content.count('class="version-row"') == 1
    inputs = parse_inputs(response)
    assert [i["value"] for i in inputs.inputs if i.get("name") == "rows"] == ["r6-"]
    assert next(i for i in inputs.inputs if i.get("name") == "r6-weight")["value"] == "0"
    assert not [o for o in inputs.options if "selected" in o]  # no version is chosen for the user
    options = radios(response, "r6-flavor")
    # A second row makes a gray launch, which a free specification cannot serve.
    assert "checked" in options["cpu.1u512m"] and "checked" not in options["cpu.1u1g.free"]
    assert "disabled" in options["cpu.64u8g"]
    assert response.context["row"]["number"] == 4


def test_adding_a_row_offers_the_specifications_of_the_chosen_pool(owner_client, owner, pool, flavors):
    big = ResourcePool.objects.create(name="big-one", is_public=False, owner=owner)
    # 64 vCPUs for the largest flavor and a little for the system overhead.
    add_node(big, "big-1", cpus=65, memory_mib=65536)

    response = add_row(owner_client, pool=big.id, rows=[""])

    assert "disabled" not in radios(response, "r2-flavor")["cpu.64u8g"]


def test_adding_a_row_on_another_users_pool_offers_no_specification(owner_client, other_user, flavors):
    theirs = ResourcePool.objects.create(name="theirs", is_public=False, owner=other_user)
    add_node(theirs, "theirs-1", cpus=64, memory_mib=65536)

    response = add_row(owner_client, pool=theirs.id, rows=[""])

    assert all("disabled" in option for option in radios(response, "r2-flavor").values())


def test_adding_a_row_ignores_malformed_prefixes(owner_client, pool, flavors):
    response = add_row(owner_client, pool=pool.id, rows=['"><script>', "r2-"])

    assert [i["value"] for i in parse_inputs(response).inputs if i.get("name") == "rows"] == ["r3-"]
    assert "<script>" not in response.content.decode()


def test_the_add_row_request_without_htmx_is_the_whole_page(owner_client, pool, flavors):
    response = owner_client.get(reverse("services:deploy"), {"add_row": "1"})

    assert response.status_code == 200
    assert 'id="deploy-form"' in response.content.decode()


def test_a_pool_change_refreshes_every_rows_specifications_keeping_their_choice(owner_client, owner, pool, flavors):
    big = ResourcePool.objects.create(name="big-one", is_public=False, owner=owner)
    # 64 vCPUs for the largest flavor and a little for the system overhead.
    add_node(big, "big-1", cpus=65, memory_mib=65536)

    response = owner_client.get(
        reverse("services:deploy_flavors"),
        {"pool": big.id, "rows": ["", "r3-"], "flavor": "cpu.1u512m", "r3-flavor": "cpu.64u8g"},
    )

    content = response.content.decode()
    assert '<div id="flavor-options" class="flavors" hx-swap-oob="true">' in content
    assert '<div id="r3-flavor-options" class="flavors" hx-swap-oob="true">' in content
    assert "checked" in radios(response, "flavor")["cpu.1u512m"]
    assert "checked" in radios(response, "r3-flavor")["cpu.64u8g"]
    assert "disabled" not in radios(response, "r3-flavor")["cpu.64u8g"]


def test_too_many_rows_are_refused_atop_the_form(owner_client, form, settings, second_version):
    settings.MAX_CONFIGS_PER_SERVICE = 1
    before = stored()

    response = owner_client.post(
        reverse("services:deploy"), with_rows({**form, "weight": "70"}, second_row(second_version))
    )

    message = "At most 1 AI application versions per service; the request has 2."
    assert response.status_code == 400
    assert response.context["errors"]["configs"] == [message]
    assert stored() == before
