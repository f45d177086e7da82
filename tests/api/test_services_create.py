"""POST /services: a good request stores one Deploying service; every rule of
the Deploy form refuses a bad value with the form's own message, keyed by the
API's field name, and stores nothing."""

from types import SimpleNamespace

import pytest

from pools.models import Node, ResourcePool
from services.choices import ServiceStatus, VersionStatus
from services.models import Instance, Service, ServiceEvent, ServiceVersionConfig
from services.validation import RequestInvalid, parse_deploy_request
from tests.factories import add_node, make_service, make_version

pytestmark = pytest.mark.django_db


def stored() -> tuple[int, int, int, int]:
    return (
        Service.objects.count(),
        ServiceVersionConfig.objects.count(),
        Instance.objects.count(),
        ServiceEvent.objects.count(),
    )


@pytest.fixture
def ctx(owner, other_user, pool, flavors, settings):
    return SimpleNamespace(
        owner=owner,
        pool=pool,
        flavors=flavors,
        settings=settings,
        version=make_version(owner, version="1.0.0"),
        version2=make_version(owner, version="2.0.0"),
        ws_version=make_version(owner, application_name="ws-model", is_websocket=True),
        failed=make_version(owner, version="0.0.1", status=VersionStatus.FAILED),
        checking=make_version(owner, version="0.0.2", status=VersionStatus.CHECKING),
        theirs=make_version(other_user, application_name="their-model"),
    )


def api_body(ctx, first_config: dict | None = None, **top) -> dict:
    body = {
        "service_name": "svc-one",
        "description": "",
        "pool_name": "public-cpu",
        "timeout_minutes": 20,
        "websocket": False,
        "config": [
            {"model_id": ctx.version.id, "specification": "cpu.1u512m", "instance_count": 1, "weight": 100, "envs": {}}
        ],
    }
    body["config"][0].update(first_config or {})
    body.update(top)
    return body


def form_data(ctx, first_config: dict | None = None, **top) -> dict:
    """What the Deploy form hands to parse_deploy_request for the same request."""
    data = {
        "name": "svc-one",
        "description": "",
        "pool": "public-cpu",
        "timeout_minutes": 20,
        "websocket": False,
        "configs": [
            {"app_version": ctx.version.id, "flavor": "cpu.1u512m", "instance_count": 1, "weight": 100, "envs": {}}
        ],
    }
    data["configs"][0].update(first_config or {})
    data.update(top)
    return data


# --- A good request --------------------------------------------------------------------------


def test_create_service_stores_it_deploying_with_its_config_and_queues_the_deploy(
    api, ctx, django_capture_on_commit_callbacks
):
    body = api_body(
        ctx, first_config={"instance_count": 2, "envs": {"MODE": "fast"}}, description="first", timeout_minutes=30
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/services", body)

    assert response.status_code == 201
    service = Service.objects.get()
    assert response.json() == {"service_id": str(service.id), "service_name": "svc-one"}
    assert (service.owner, service.name, service.description, service.pool) == (ctx.owner, "svc-one", "first", ctx.pool)
    assert (service.status, service.timeout_minutes, service.is_websocket) == (ServiceStatus.DEPLOYING, 30, False)
    config = service.configs.get()
    assert (config.position, config.app_version, config.flavor) == (0, ctx.version, ctx.flavors["small"])
    assert (config.instance_count, config.weight, config.envs) == (2, 100, {"MODE": "fast"})
    assert [e.message for e in service.events.all()] == ["Deployment queued: 2 instance(s) on pool public-cpu"]
    assert len(callbacks) == 1


def test_create_service_stores_a_gray_launch_of_two_versions_in_order(api, ctx):
    body = api_body(
        ctx,
        config=[
            {"model_id": ctx.version.id, "specification": "cpu.1u512m", "weight": 70},
            {"model_id": ctx.version2.id, "specification": "cpu.1u512m", "weight": 30, "instance_count": 3},
        ],
    )

    assert api.post("/services", body).status_code == 201

    configs = list(Service.objects.get().configs.order_by("position"))
    assert [(c.app_version, c.weight, c.instance_count) for c in configs] == [
        (ctx.version, 70, 1),
        (ctx.version2, 30, 3),
    ]


def test_create_service_without_pool_name_uses_the_first_public_pool(api, ctx):
    ResourcePool.objects.create(name="zz-public", is_public=True)
    body = api_body(ctx)
    del body["pool_name"]

    assert api.post("/services", body).status_code == 201

    assert Service.objects.get().pool == ctx.pool


def test_create_service_on_the_owners_dedicated_pool_by_name(api, ctx):
    dedicated = ResourcePool.objects.create(name="mine", is_public=False, owner=ctx.owner)
    add_node(dedicated, "mine-1", cpus=4, memory_mib=4096)

    assert api.post("/services", api_body(ctx, pool_name="mine")).status_code == 201

    assert Service.objects.get().pool == dedicated


def test_create_service_reads_a_pool_name_made_of_digits_as_a_name(api, ctx):
    # Validation reads a digit string as a pool id; the API's pool_name is always a name.
    digits = ResourcePool.objects.create(name="2024", is_public=True)
    add_node(digits, "n2024", cpus=4, memory_mib=4096)
    assert not ResourcePool.objects.filter(id=2024).exists()

    assert api.post("/services", api_body(ctx, pool_name="2024")).status_code == 201

    assert Service.objects.get().pool == digits


def test_create_service_takes_envs_as_key_value_rows(api, ctx):
    body = api_body(ctx, first_config={"envs": [{"key": "A", "value": "1"}, {"key": "B", "value": ""}]})

    assert api.post("/services", body).status_code == 201

    assert ServiceVersionConfig.objects.get().envs == {"A": "1", "B": ""}


def test_create_service_with_websocket_on_a_websocket_model(api, ctx):
    body = api_body(ctx, first_config={"model_id": ctx.ws_version.id}, websocket=True)

    assert api.post("/services", body).status_code == 201

    assert Service.objects.get().is_websocket is True


# --- Every rule, with the form's message under the API's field name ----------------------------


def _too_many_services(ctx):
    ctx.settings.MAX_SERVICES_PER_USER = 1
    make_service(ctx.owner, ctx.pool, version=ctx.version, flavor=ctx.flavors["small"], name="existing")
    return api_body(ctx), form_data(ctx), "__all__", "__all__"


def _name_taken(ctx):
    make_service(ctx.owner, ctx.pool, version=ctx.version, flavor=ctx.flavors["small"], name="svc-one")
    return api_body(ctx), form_data(ctx), "service_name", "name"


def _others_dedicated_pool(ctx):
    ResourcePool.objects.create(name="theirs", is_public=False, owner=ctx.theirs.application.owner)
    return api_body(ctx, pool_name="theirs"), form_data(ctx, pool="theirs"), "pool_name", "pool"


def _no_pool_at_all(ctx):
    Node.objects.all().delete()
    ResourcePool.objects.all().delete()
    body = api_body(ctx)
    del body["pool_name"]
    return body, form_data(ctx, pool=""), "pool_name", "pool"


def _two_versions(ctx, second, first_spec="cpu.1u512m", second_spec="cpu.1u512m", weights=(50, 50)):
    """A gray launch of ctx.version and `second`, as the API and the form send it."""
    body = api_body(ctx)
    body["config"] = [
        {"model_id": ctx.version.id, "specification": first_spec, "weight": weights[0]},
        {"model_id": second.id, "specification": second_spec, "weight": weights[1]},
    ]
    data = form_data(ctx)
    data["configs"] = [
        {"app_version": ctx.version.id, "flavor": first_spec, "weight": weights[0]},
        {"app_version": second.id, "flavor": second_spec, "weight": weights[1]},
    ]
    return body, data


def _second_config_free(ctx):
    return (
        *_two_versions(ctx, ctx.version2, second_spec="cpu.1u1g.free"),
        "config[1].specification",
        "configs.1.flavor",
    )


def _second_config_repeats_the_first_version(ctx):
    return (*_two_versions(ctx, ctx.version), "config[1].model_id", "configs.1.app_version")


def _second_config_of_another_application(ctx):
    return (*_two_versions(ctx, ctx.ws_version), "config[1].model_id", "configs.1.app_version")


def _two_configs_adding_up_to_90(ctx):
    return (*_two_versions(ctx, ctx.version2, weights=(60, 30)), "config[1].weight", "configs.1.weight")


def _second_config_bad_specification(ctx):
    body = api_body(ctx, first_config={"weight": 50})
    body["config"].append({"model_id": ctx.version2.id, "specification": "nope", "weight": 50})
    data = form_data(ctx, first_config={"weight": 50})
    data["configs"].append({"app_version": ctx.version2.id, "flavor": "nope", "weight": 50})
    return body, data, "config[1].specification", "configs.1.flavor"


def _top(api_field, form_field, value, form_value=None):
    form_value = value if form_value is None else form_value
    return lambda ctx: (
        api_body(ctx, **{api_field: value}),
        form_data(ctx, **{form_field: form_value}),
        api_field,
        form_field,
    )


def _config(api_field, form_field, value):
    def case(ctx):
        value_now = value(ctx) if callable(value) else value
        return (
            api_body(ctx, first_config={api_field: value_now}),
            form_data(ctx, first_config={form_field: value_now}),
            f"config[0].{api_field}",
            f"configs.0.{form_field}",
        )

    return case


CASES = {
    "name missing": _top("service_name", "name", ""),
    "name too long": _top("service_name", "name", "s" * 65),
    "name starting with a digit": _top("service_name", "name", "1svc"),
    "name with a space": _top("service_name", "name", "my svc"),
    "name taken": _name_taken,
    "description too long": _top("description", "description", "d" * 101),
    "too many services": _too_many_services,
    "pool unknown": _top("pool_name", "pool", "nowhere"),
    "pool of another user": _others_dedicated_pool,
    "no pool at all": _no_pool_at_all,
    "timeout not a number": _top("timeout_minutes", "timeout_minutes", "soon"),
    "timeout too short": _top("timeout_minutes", "timeout_minutes", 2),
    "timeout too long": _top("timeout_minutes", "timeout_minutes", 121),
    "timeout a boolean": _top("timeout_minutes", "timeout_minutes", True),
    "config empty": _top("config", "configs", []),
    "config not a list": _top("config", "configs", "cpu"),
    "config item not an object": lambda ctx: (
        api_body(ctx, config=[7]),
        form_data(ctx, configs=[7]),
        "config[0].model_id",
        "configs.0.app_version",
    ),
    "model_id missing": _config("model_id", "app_version", None),
    "model_id not a number": _config("model_id", "app_version", "abc"),
    "model_id unknown": _config("model_id", "app_version", 999999),
    "model_id of another user": _config("model_id", "app_version", lambda ctx: ctx.theirs.id),
    "model_id failed": _config("model_id", "app_version", lambda ctx: ctx.failed.id),
    "model_id checking": _config("model_id", "app_version", lambda ctx: ctx.checking.id),
    "specification missing": _config("specification", "flavor", ""),
    "specification unknown": _config("specification", "flavor", "cpu.huge"),
    "specification too big for the pool": _config("specification", "flavor", "cpu.64u8g"),
    "specification needing a GPU": _config("specification", "flavor", "gpu.1p"),
    "instance_count zero": _config("instance_count", "instance_count", 0),
    "instance_count too many": _config("instance_count", "instance_count", 129),
    "instance_count not a number": _config("instance_count", "instance_count", "two"),
    "instance_count fractional": _config("instance_count", "instance_count", 1.5),
    "weight above 100": _config("weight", "weight", 101),
    "weight negative": _config("weight", "weight", -1),
    "weight not a whole number": _config("weight", "weight", 99.5),
    "weight not adding up to 100": _config("weight", "weight", 60),
    "weights of two configs not adding up to 100": _two_configs_adding_up_to_90,
    "free specification in a gray launch": _second_config_free,
    "version chosen twice": _second_config_repeats_the_first_version,
    "versions of two applications": _second_config_of_another_application,
    "second config's specification": _second_config_bad_specification,
    "env name invalid": _config("envs", "envs", {"1BAD": "x"}),
    "env name empty": _config("envs", "envs", [{"key": " ", "value": "x"}]),
    "env set twice": _config("envs", "envs", [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]),
    "env value too long": _config("envs", "envs", {"A": "x" * 4097}),
    "envs not pairs": _config("envs", "envs", "A=1"),
    "env row not an object": _config("envs", "envs", ["A=1"]),
    "websocket on a plain model": _top("websocket", "websocket", True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_create_service_rejects_what_the_deploy_form_rejects_naming_the_api_field(api, ctx, case):
    body, data, api_key, form_key = case(ctx)
    with pytest.raises(RequestInvalid) as form_error:
        parse_deploy_request(owner=ctx.owner, data=data)
    # Each case breaks exactly one rule, so the comparison below is about that rule.
    assert list(form_error.value.errors) == [form_key]
    before = stored()

    response = api.post("/services", body)

    assert response.status_code == 400
    payload = response.json()
    assert payload["error_code"] == "RTS.4000"
    assert payload["errors"] == {api_key: form_error.value.errors[form_key]}
    assert payload["error_msg"] == f"The request is invalid. {api_key}: {' '.join(payload['errors'][api_key])}"
    assert stored() == before


def test_create_service_reports_every_bad_field_at_once(api, ctx):
    body = {"service_name": "", "timeout_minutes": 0, "config": [{"weight": 200}, {"model_id": "x"}]}

    response = api.post("/services", body)

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {
        "service_name",
        "timeout_minutes",
        "config[0].model_id",
        "config[0].specification",
        "config[0].weight",
        "config[1].model_id",
        "config[1].specification",
    }
    assert stored() == (0, 0, 0, 0)


@pytest.mark.parametrize("raw", ["{", "[]", "42", ""])
def test_create_service_with_a_body_that_is_not_a_json_object_is_400(api, ctx, raw):
    response = api.post("/services", raw)

    assert response.status_code == 400
    assert response.json()["error_code"] == "RTS.4001"
    assert stored() == (0, 0, 0, 0)


def test_create_service_with_a_body_over_the_upload_limit_is_413(api, ctx, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = api.post("/services", api_body(ctx, description="d" * 2048))

    assert response.status_code == 413
    assert response.json()["error_code"] == "RTS.4130"
    assert stored() == (0, 0, 0, 0)
